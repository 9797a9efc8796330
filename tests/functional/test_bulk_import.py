"""Bulk import writes set-based (services/vault/bulk.py): the same per-entry answers as archiving
entry by entry, every row sealed as a flush seals it, the audit chain intact, and a number of
INSERT statements per batch that does not grow with its entries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select, text

from certvault.crypto.pkcs12.portable import ReaderFailed, ReaderPool
from certvault.db.models import Certificate, MailMessage, Person
from certvault.services.audit import checks as audit_checks
from certvault.services.directory import accounts
from certvault.services.kernel import seals
from certvault.services.vault import imports
from certvault.services.vault.archive import ALREADY_EXISTS, IMPORTED
from certvault.services.vault.imports import FileResult, ImportItem, import_files
from certvault.services.vault.verification import verify_escrow
from tests.factories import make_ca, make_cert, make_p12, new_key
from tests.functional.helpers import counts, events

P = "bulk-pass-1234"


def _item(name: str, data: bytes, password: str = P, **kw: Any) -> ImportItem:
    return ImportItem(name=name, load=lambda: data, password=password, **kw)


def _fresh(email: str, ca: Any, *, name: bytes | None = b"alias") -> bytes:
    key = new_key("ec256")
    return make_p12(key, make_cert(key, email, issuer=ca), P, name=name)


def _mixed_items(ca: Any) -> tuple[list[ImportItem], list[ImportItem]]:
    """Files stored before the batch, and a batch that meets every rule of archive_entry."""
    stored_key = new_key("ec256")
    stored_cert = make_cert(stored_key, "stored@example.org", issuer=ca)
    stored = make_p12(stored_key, stored_cert, P, name=b"stored")
    renewed_stored = make_p12(
        stored_key, make_cert(stored_key, "stored@example.org", issuer=ca), P, name=b"renewed"
    )
    key = new_key("ec256")
    first = make_cert(key, "twice@example.org", issuer=ca, serial=424242)
    twice = make_p12(key, first, P, name=b"twice")
    renewal = make_p12(key, make_cert(key, "twice@example.org", issuer=ca), P, name=b"renewal")
    other = new_key("ec256")  # another certificate with the issuer and serial of ``first``
    clash = make_p12(other, make_cert(other, "clash@example.org", issuer=ca, serial=424242), P)
    before = [_item("stored.p12", stored)]
    batch = [
        _item("good-1.p12", _fresh("good1@example.org", ca)),
        _item("unreadable.p12", b"not a PKCS#12 file"),
        _item("wrong-password.p12", _fresh("good1@example.org", ca), password="nope-nope"),
        _item("twice-1.p12", twice),
        _item("twice-2.p12", twice),  # the same key and certificate again: already there
        _item("renewal.p12", renewal),  # a new certificate of a key escrowed in this batch
        _item("clash.p12", clash),
        _item("stored-again.p12", stored),
        _item("renewed-stored.p12", renewed_stored),
        _item("same-owner.p12", _fresh("good1@example.org", ca)),  # the owner made above
        _item("manifest.p12", _fresh("x@example.org", ca), person_email="Named@Example.org"),
        _item("bad-org.p12", _fresh("y@example.org", ca), organization="No Such Org"),
        _item("bad-manifest.p12", _fresh("z@example.org", ca), person_email="not an address"),
        _item("good-2.p12", _fresh("good2@example.org", ca, name=None)),
    ]
    return before, batch


def _shape(results: list[FileResult]) -> list[tuple[Any, ...]]:
    """The per-entry answers, with certificate ids replaced by their order of appearance."""
    order: dict[int, int] = {}
    shape: list[tuple[Any, ...]] = []
    for r in results:
        shape.append((r.name, r.error_code))
        for e in r.entries:
            ref = (
                None if e.client_cert_id is None else order.setdefault(e.client_cert_id, len(order))
            )
            shape.append((e.alias, e.md5, e.sha1, e.message, e.code, e.status, ref))
    return shape


def _archive_events(ports: Any, account_id: int) -> list[tuple[str, str, str]]:
    found = []
    for e in events(ports, "key.archive"):
        if e.account_id == account_id:
            details = json.loads(e.details)
            found.append((e.outcome, details.get("reason", ""), str(details.get("new_key", ""))))
    return found


def _account_id(ports: Any, slug: str) -> int:
    with ports.db.read() as s:
        return int(
            s.execute(text("SELECT id FROM accounts WHERE slug = :s"), {"s": slug}).scalar_one()
        )


def test_a_mixed_batch_answers_as_entry_by_entry_and_every_row_verifies(
    ports, operator, account, monkeypatch
):
    accounts.create_account(ports, operator, "Beta Corp", "beta", key_vault_enabled=True)
    ca = make_ca("Bulk CA")
    before, batch = _mixed_items(ca)
    with monkeypatch.context() as m:  # the reference: today's savepoint per entry
        m.setattr(imports, "_archive_set_based", imports._archive_one_by_one)
        import_files(ports, operator, "beta", before)
        one_by_one = import_files(ports, operator, "beta", batch)
    import_files(ports, operator, "acme", before)
    set_based = import_files(ports, operator, "acme", batch)

    assert _shape(set_based) == _shape(one_by_one)
    messages = [e.message for r in set_based for e in r.entries if e.ok]
    assert messages.count(ALREADY_EXISTS) == 2 and messages.count(IMPORTED) == 7
    codes = [e.code for r in set_based for e in r.entries if not e.ok]
    assert sorted(codes) == ["certificate_conflict", "invalid_input", "not_found"]
    assert _archive_events(ports, _account_id(ports, "acme")) == _archive_events(
        ports, _account_id(ports, "beta")
    )
    with ports.db.read() as s:
        for slug in ("acme", "beta"):  # the same rows on both sides
            account_id = _account_id(ports, slug)
            owners = sorted(s.scalars(select(Person.email).where(Person.account_id == account_id)))
            assert "named@example.org" in owners and "z@example.org" not in owners
            mail = s.scalars(
                select(MailMessage.to_addr).where(MailMessage.account_id == account_id)
            )
            assert sorted(mail) == sorted(
                ["stored@example.org"] * 2
                + ["good1@example.org"] * 2
                + ["twice@example.org"] * 2
                + ["good2@example.org", "x@example.org"]
            )
    assert counts(ports)["certs"] == 2 * 8
    report = seals.check_rows(ports)
    assert report.ok and report.rows > 0, report.problems
    assert audit_checks.verify_chains(ports).ok


@pytest.fixture
def refuse_poison(ports):  # type: ignore[no-untyped-def]
    """A real refusal by the database: a trigger refuses the certificate named 'poison'."""
    if ports.db.is_sqlite:
        statements = [
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON certificates "
            "WHEN NEW.friendly_name = 'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ]
    else:
        statements = [
            "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
            "IF NEW.friendly_name = 'poison' THEN "
            "RAISE EXCEPTION 'refused' USING ERRCODE = 'invalid_parameter_value'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON certificates "
            "FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        ]
    with ports.db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def test_a_row_the_database_refuses_leaves_the_others_stored(
    ports, operator, account, refuse_poison
):
    ca = make_ca("Bulk CA")
    items = [
        _item("good-1.p12", _fresh("good1@example.org", ca)),
        _item("poison.p12", _fresh("poison@example.org", ca, name=b"poison")),
        _item("good-2.p12", _fresh("good2@example.org", ca)),
    ]
    results = import_files(ports, operator, "acme", items)
    assert [r.ok for r in results] == [True, False, True]
    assert [e.code for e in results[1].entries] == ["entry_not_stored"]
    with ports.db.read() as s:
        emails = set(s.scalars(select(Certificate.emails)))
        assert emails == {"good1@example.org", "good2@example.org"}
        assert "poison@example.org" not in set(s.scalars(select(Person.email)))
    assert counts(ports) == {"keys": 2, "certs": 2, "persons": 2, "mail": 2}
    archived = [json.loads(e.details).get("reason") for e in events(ports, "key.archive")]
    assert archived.count(None) == 2 and archived.count("entry_not_stored") == 1
    assert seals.check_rows(ports).ok
    assert audit_checks.verify_chains(ports).ok


def _statements(ports: Any, items: list[ImportItem], operator: Any) -> list[str]:
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append(" ".join(statement.split()[:3]).upper())

    event.listen(ports.db.engine, "before_cursor_execute", count)
    try:
        results = import_files(ports, operator, "acme", items)
    finally:
        event.remove(ports.db.engine, "before_cursor_execute", count)
    assert all(r.ok for r in results)
    return seen


def test_inserts_per_batch_do_not_grow_with_its_entries(ports, operator, account):
    ca = make_ca("Bulk CA")

    def batch(prefix: str, n: int) -> list[ImportItem]:
        return [_item(f"{prefix}{i}.p12", _fresh(f"{prefix}{i}@example.org", ca)) for i in range(n)]

    import_files(ports, operator, "acme", batch("warm", 2))  # the chain and caches exist
    small = _statements(ports, batch("small", 5), operator)
    large = _statements(ports, batch("large", 60), operator)
    inserts = [s for s in large if s.startswith("INSERT")]
    # One INSERT each for persons, keys, certificates, mail and audit events.
    assert len(inserts) == 5, inserts
    assert len(inserts) == len([s for s in small if s.startswith("INSERT")])
    assert len(large) == len(small), (small, large)  # every statement, not only the INSERTs
    assert counts(ports)["certs"] == 67
    assert seals.check_rows(ports).ok
    assert audit_checks.verify_chains(ports).ok


def test_a_stored_row_that_does_not_verify_refuses_only_its_entry(ports, operator, account):
    ca = make_ca("Bulk CA")
    stored = _fresh("stored@example.org", ca)
    import_files(ports, operator, "acme", [_item("stored.p12", stored)])
    with ports.db.engine.begin() as conn:  # altered behind certvault's back
        conn.execute(text("UPDATE certificates SET subject = 'CN=Mallory'"))
    items = [
        _item("good-1.p12", _fresh("good1@example.org", ca)),
        _item("stored-again.p12", stored),
        _item("good-2.p12", _fresh("good2@example.org", ca)),
    ]
    results = import_files(ports, operator, "acme", items)
    assert [r.ok for r in results] == [True, False, True]
    assert [e.code for e in results[1].entries] == ["row_tampered"]
    assert counts(ports)["certs"] == 3
    assert audit_checks.verify_chains(ports).ok


def test_results_go_only_to_on_file_when_not_kept(ports, operator, account):
    ca = make_ca("Bulk CA")
    items = [_item(f"f{i}.p12", _fresh(f"f{i}@example.org", ca)) for i in range(3)]
    items.append(_item("unreadable.p12", b"not a PKCS#12 file"))
    seen: list[FileResult] = []
    kept = import_files(ports, operator, "acme", items, on_file=seen.append, keep=False)
    assert kept == []
    assert [(r.name, r.ok) for r in seen] == [
        ("f0.p12", True),
        ("f1.p12", True),
        ("f2.p12", True),
        ("unreadable.p12", False),
    ]
    assert counts(ports)["certs"] == 3


class _CountingPool(ReaderPool):
    """The real reader processes, counting the files sent to them."""

    files = 0

    def submit(self, files: Any, limits: Any) -> Any:
        _CountingPool.files += len(files)
        return super().submit(files, limits)


def _mixed_for_workers(ca: Any, tag: str) -> list[ImportItem]:
    def gone() -> bytes:
        raise FileNotFoundError(2, "No such file or directory")

    items = [_item(f"{tag}{i}.p12", _fresh(f"{tag}{i}@example.org", ca)) for i in range(9)]
    items[2] = _item(f"{tag}-unreadable.p12", b"not a PKCS#12 file")
    items[5] = _item(f"{tag}-wrong.p12", _fresh(f"{tag}w@example.org", ca), password="nope-nope")
    items[7] = ImportItem(name=f"{tag}-gone.p12", load=gone, password=P)
    return items


def test_many_files_are_read_by_worker_processes_with_the_same_answers(
    ports, operator, account, monkeypatch
):
    monkeypatch.setattr(_CountingPool, "files", 0)
    ca = make_ca("Bulk CA")
    in_process = import_files(ports, operator, "acme", _mixed_for_workers(ca, "a"))
    assert _CountingPool.files == 0
    ports.settings.import_pool_from = 4
    monkeypatch.setattr(imports, "CHUNK", 2)
    monkeypatch.setattr(imports, "ReaderPool", _CountingPool)
    ports.settings.import_workers = 2
    ports.settings.import_batch_size = 3
    items = _mixed_for_workers(ca, "b")
    pooled = import_files(ports, operator, "acme", items)
    # The workers read every file that loaded; the answers come in the order given, each the
    # same as when the file is read in this process.
    assert _CountingPool.files == 8
    assert [r.name for r in pooled] == [i.name for i in items]

    def answers(results: list[FileResult]) -> list[tuple[Any, ...]]:
        return [
            (r.ok, r.error_code, [(e.message, e.code) for e in r.entries], r.warnings)
            for r in results
        ]

    assert answers(pooled) == answers(in_process)
    assert [r.error_code for r in pooled if not r.ok] == [
        "p12_malformed",
        "p12_wrong_password",
        "unreadable",
    ]
    assert counts(ports)["certs"] == 12
    # Every key the workers read opens, fully validated, and matches its certificate.
    drill = verify_escrow(ports, operator)
    assert drill.ok and drill.keys == 12 and drill.certificates == 12
    assert audit_checks.verify_chains(ports).ok


class _DyingPool(ReaderPool):
    """The real reader processes; the first worker is killed once the third task is sent."""

    sent = 0

    def submit(self, files: Any, limits: Any) -> Any:
        _DyingPool.sent += 1
        if _DyingPool.sent == 3:
            worker = self._workers[0].process
            worker.kill()
            worker.wait()
        return super().submit(files, limits)


def test_a_reader_process_that_dies_stops_the_import_with_what_was_stored_answered(
    ports, operator, account, monkeypatch
):
    monkeypatch.setattr(_DyingPool, "sent", 0)
    ports.settings.import_pool_from = 2
    monkeypatch.setattr(imports, "CHUNK", 2)
    monkeypatch.setattr(imports, "ReaderPool", _DyingPool)
    ports.settings.import_workers = 2
    ports.settings.import_batch_size = 2
    ca = make_ca("Bulk CA")
    items = [_item(f"d{i}.p12", _fresh(f"d{i}@example.org", ca)) for i in range(12)]
    answered: list[FileResult] = []
    with pytest.raises(ReaderFailed):
        import_files(ports, operator, "acme", items, on_file=answered.append, keep=False)
    # The files answered before the worker died were stored, and nothing else.
    assert counts(ports)["certs"] == sum(r.ok for r in answered)
    assert _DyingPool.sent >= 3


def test_a_load_that_fails_stops_the_import_and_reads_no_further(
    ports, operator, account, monkeypatch
):
    ports.settings.import_pool_from = 2
    monkeypatch.setattr(imports, "CHUNK", 1)
    ports.settings.import_workers = 2
    ports.settings.import_batch_size = 1
    ca = make_ca("Bulk CA")
    loaded: list[str] = []

    def boom() -> bytes:
        raise RuntimeError("the source went away")

    def item(i: int) -> ImportItem:
        data = _fresh(f"b{i}@example.org", ca)
        return ImportItem(name=f"b{i}.p12", load=lambda: loaded.append(f"b{i}") or data, password=P)

    def items() -> Iterator[ImportItem]:
        yield item(0)
        yield item(1)
        yield ImportItem(name="boom.p12", load=boom, password=P)
        for i in range(2, 200):
            yield item(i)

    answered: list[FileResult] = []
    with pytest.raises(RuntimeError, match="went away"):
        import_files(ports, operator, "acme", items(), on_file=answered.append, keep=False)
    # Nothing after the failing file was loaded, and what was answered is what was stored.
    assert loaded == ["b0", "b1"]
    assert counts(ports)["certs"] == sum(r.ok for r in answered)
