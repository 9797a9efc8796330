"""Hostile and broken PKCS#12 uploads through the service layer: a clear error, nothing changed,
and the refusal in the audit log; in a batch, one bad file or entry never stops the others."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from certvault.crypto.pkcs12 import pfx
from certvault.db.models import Certificate, Person
from certvault.errors import CertvaultError
from certvault.services.audit import checks as audit_checks
from certvault.services.directory import certificates
from certvault.services.vault.archive import IMPORTED
from certvault.services.vault.imports import ImportItem, import_files, import_p12, import_p12_file
from tests.factories import make_cert, make_p12, new_key
from tests.functional.helpers import counts, events
from tests.unit.crypto.pkcs12.assembly import nested, pfx_from_sections, plain_bags, with_attribute

VECTORS = Path(__file__).parents[1] / "vectors" / "p12"
P = "vector-pass-1234"


def _data(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def _deeply_nested() -> bytes:
    # asn1crypto recursed through this until RecursionError: a server error, not a refusal.
    contents = with_attribute(plain_bags(_data("p256-nomac.p12")), nested(3000))
    return pfx_from_sections([{"content_type": "data", "content": contents}])


BAD = [
    ("wrong password", _data("p256.p12"), "not-the-password", "p12_wrong_password"),
    ("truncated", _data("p256.p12")[:700], P, "p12_malformed"),
    ("random bytes", os.urandom(3000), P, "p12_malformed"),
    ("empty", b"", P, "p12_malformed"),
    ("only certificates", _data("certs-only.p12"), P, "p12_no_key"),
    ("only a key", _data("key-only.p12"), P, "p12_no_certificate"),
    ("key not matching its certificate", _data("mismatch.p12"), P, "p12_no_certificate"),
    ("100 million MAC iterations", _data("iter-mac-100m.p12"), P, "p12_kdf_too_expensive"),
    ("100 million key-bag iterations", _data("iter-key-100m.p12"), P, "p12_kdf_too_expensive"),
    ("nested 100 million iterations", _data("iter-nested-100m.p12"), P, "p12_kdf_too_expensive"),
    ("wrong MAC", _data("p256-bad-mac.p12"), P, "p12_wrong_password"),
    (
        "two keys, a certificate of neither",
        _data("two-keys-foreign-cert.p12"),
        P,
        "p12_no_certificate",
    ),
    ("PBMAC1 key length of a million", _data("pbmac1-keylen-huge.p12"), P, "p12_malformed"),
    ("RSA key with a bad CRT value", _data("rsa2048-bad-crt.p12"), P, "p12_key_inconsistent"),
    ("over the size limit", b"\x30\x84" + os.urandom(1024 * 1024 + 10), P, "p12_too_large"),
    ("3,000 nested SEQUENCEs in a bag attribute", _deeply_nested(), P, "p12_malformed"),
]


@pytest.mark.parametrize(("label", "data", "password", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_p12_is_refused_and_changes_nothing(
    ports, operator, account, label, data, password, code
):
    before = counts(ports)
    with pytest.raises(CertvaultError) as exc:
        import_p12(ports, operator, "acme", data, password)
    assert exc.value.code == code, label
    assert counts(ports) == before
    refused = [e for e in events(ports, "key.archive") if e.outcome == "refused"]
    assert [json.loads(e.details)["reason"] for e in refused] == [code]


@pytest.mark.parametrize(
    ("name", "password", "warnings", "chain"),
    [
        ("p256-70ca.p12", P, [], 70),
        ("certtool-p256-9certs.p12", P, ["chain_certificates_skipped"], 7),
        ("p256-openssl10-nonascii.p12", "pässwörd-Ω-12345", ["legacy_password_encoding"], 0),
    ],
)
def test_files_read_with_warnings_import(ports, operator, account, name, password, warnings, chain):
    result = import_p12_file(ports, operator, "acme", _data(name), password)
    [entry] = result.entries
    assert entry.message == IMPORTED
    assert result.warnings == warnings
    assert [code for code, _ in result.warning_messages] == warnings
    with ports.db.read() as s:
        row = s.get_one(Certificate, entry.client_cert_id)
        assert row.chain_pem.count("BEGIN CERTIFICATE") == chain
    [archived] = [e for e in events(ports, "key.archive") if e.outcome == "success"]
    details = json.loads(archived.details)
    if "legacy_password_encoding" in warnings:
        assert details["password_encoding"] == "openssl-1.0"
    else:
        assert "password_encoding" not in details


def test_two_key_pairs_give_two_entries(ports, operator, account):
    entries = import_p12(ports, operator, "acme", _data("two-pairs.p12"), P)
    assert [e.message for e in entries] == [IMPORTED, IMPORTED]
    assert {e.alias for e in entries} == {"alice rsa2048", "alice p384"}
    assert counts(ports)["keys"] == 2


@pytest.mark.parametrize(
    "name", ["p256-legacy.p12", "rsa2048-legacy.p12", "p384.p12", "ed25519.p12", "p521.p12"]
)
def test_openssl_made_files_import(ports, operator, account, name):
    [entry] = import_p12(ports, operator, "acme", _data(name), P)
    assert entry.message == IMPORTED and len(entry.sha1) == 40 and len(entry.md5) == 32


def test_non_ascii_password(ports, operator, account):
    [entry] = import_p12(ports, operator, "acme", _data("p256-nonascii.p12"), "pässwörd-Ω-12345")
    assert entry.message == IMPORTED


def test_chain_is_kept_for_release(ports, operator, account):
    from certvault.crypto.pkcs12.reader import read_pkcs12
    from certvault.services.vault.release import release_key

    [entry] = import_p12(ports, operator, "acme", _data("rsa2048-chain.p12"), P)
    batch = release_key(
        ports, operator, "acme", entry.client_cert_id, passphrase=None, reason="chain check"
    )
    back = read_pkcs12(batch.releases[0].data, batch.generated_passphrase)
    ca = (VECTORS / "ca.cert.pem").read_bytes()
    from cryptography import x509

    assert back.extra_certificates == [x509.load_pem_x509_certificate(ca)]


# --- text from the file, and one entry's database error, never sink the others ------------------


def _item(name: str, data: bytes, password: str = P) -> ImportItem:
    return ImportItem(name=name, load=lambda: data, password=password)


def _p12(email: str, *, name: bytes | None = b"alias", cn: str | None = None) -> bytes:
    key = new_key("ec256")
    return make_p12(key, make_cert(key, email, cn=cn), P, name=name)


def _between_good_files(bad: ImportItem) -> list[ImportItem]:
    return [
        _item("good-1.p12", _p12("good1@example.org")),
        bad,
        _item("good-2.p12", _p12("good2@example.org")),
    ]


def _refusal_reasons(ports) -> list[str]:
    archived = events(ports, "key.archive")
    return [json.loads(e.details)["reason"] for e in archived if e.outcome == "refused"]


def _rows(ports) -> dict[str, Certificate]:
    with ports.db.read() as s:
        return {c.emails: c for c in s.scalars(select(Certificate))}


def test_control_characters_in_names_are_stored_cleaned_in_a_batch(ports, operator, account):
    """pyca's no-password.p12 names its key '6BC162DA\\x00'; on PostgreSQL one such name used to
    fail the whole batch, the good files with it."""
    items = [
        _item("good-1.p12", _p12("good1@example.org")),
        _item("nul.p12", _p12("nul@example.org", name=b"6BC162DA\x00", cn="Nul\x00Name\x01")),
        _item("inner.p12", _p12("inner@example.org", name=b"ad\x00min\x1b[2J")),
        _item("good-2.p12", _p12("good2@example.org")),
    ]
    results = import_files(ports, operator, "acme", items)
    assert [r.ok for r in results] == [True] * 4
    assert [e.message for r in results for e in r.entries] == [IMPORTED] * 4
    # The reader keeps a name whose only flaw is a C string's trailing NUL, and drops one with
    # other control characters (the alias is then the certificate's address).
    assert [e.alias for e in results[1].entries + results[2].entries] == [
        "6BC162DA",
        "inner@example.org",
    ]
    rows = _rows(ports)
    assert set(rows) == {f"{n}@example.org" for n in ("good1", "nul", "inner", "good2")}
    assert rows["nul@example.org"].friendly_name == "6BC162DA"
    assert rows["inner@example.org"].friendly_name is None
    assert rows["nul@example.org"].subject == "CN=Nul\\00Name\ufffd"
    for row in rows.values():
        for value in (row.subject, row.issuer, row.friendly_name or ""):
            assert value.isprintable(), value
    assert counts(ports)["keys"] == 4
    assert audit_checks.verify_chains(ports).ok


def test_an_address_that_is_not_text_refuses_only_its_entry(ports, operator, account):
    items = [
        _item("good-1.p12", _p12("good1@example.org")),
        _item("nul-address.p12", _p12("mallory\x00@example.org")),
        _item("spaced-address.p12", _p12("alice bob@example.org")),
        _item("good-2.p12", _p12("good2@example.org")),
    ]
    results = import_files(ports, operator, "acme", items)
    assert [r.ok for r in results] == [True, False, False, True]
    for result in results[1:3]:
        [entry] = result.entries
        assert entry.code == "certificate_email_invalid" and entry.client_cert_id is None
    assert set(_rows(ports)) == {"good1@example.org", "good2@example.org"}
    with ports.db.read() as s:
        assert not any("\x00" in e or " " in e for e in s.scalars(select(Person.email)))
    assert _refusal_reasons(ports) == ["certificate_email_invalid"] * 2
    assert audit_checks.verify_chains(ports).ok


def _poison_entries(ports, error: type[DBAPIError]) -> list[int]:
    """Make the database refuse every certificate row whose friendly name is 'poison', as
    PostgreSQL refuses a value it cannot store, whether the rows are written set-based or one
    by one; the list counts the refusals."""
    refusals: list[int] = []

    def refuse(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO CERTIFICATES") and (
            "'poison'" in repr(parameters)
        ):
            refusals.append(1)
            raise error(statement, {}, Exception("refused"))

    event.listen(ports.db.engine, "before_cursor_execute", refuse)
    return refusals


def test_a_database_error_in_one_entry_leaves_the_others_stored(ports, operator, account):
    refusals = _poison_entries(ports, DataError)
    items = _between_good_files(_item("poison.p12", _p12("poison@example.org", name=b"poison")))
    results = import_files(ports, operator, "acme", items)
    assert [r.ok for r in results] == [True, False, True]
    [entry] = results[1].entries
    assert (entry.code, entry.alias, entry.client_cert_id) == ("entry_not_stored", "poison", None)
    # Refused in the set-based write, then in its own savepoint; the batch did not run again.
    assert len(refusals) == 2
    assert set(_rows(ports)) == {"good1@example.org", "good2@example.org"}
    with ports.db.read() as s:  # nothing of the refused entry: not even its owner
        assert "poison@example.org" not in set(s.scalars(select(Person.email)))
    assert _refusal_reasons(ports) == ["entry_not_stored"]
    assert audit_checks.verify_chains(ports).ok


def test_a_batch_that_keeps_failing_is_stored_file_by_file(ports, operator, account):
    """A 'retryable' error that every retry meets again: the batch falls back to a transaction
    per file, and only the file that fails is lost."""
    refusals = _poison_entries(ports, IntegrityError)
    items = _between_good_files(_item("poison.p12", _p12("poison@example.org", name=b"poison")))
    results = import_files(ports, operator, "acme", items)
    assert [r.ok for r in results] == [True, False, True]
    assert [e.code for e in results[1].entries] == ["entry_not_stored"]
    assert len(refusals) > 1  # the batch was retried before it was split
    assert set(_rows(ports)) == {"good1@example.org", "good2@example.org"}
    archived = [e for e in events(ports, "key.archive")]
    assert [e.outcome for e in archived].count("success") == 2
    assert [json.loads(e.details)["reason"] for e in archived if e.outcome == "refused"] == [
        "entry_not_stored"
    ]
    assert audit_checks.verify_chains(ports).ok


def test_a_nul_the_cleaning_missed_fails_its_entry_alone(ports, operator, account, monkeypatch):
    """Were a column ever filled without the reader's and the column's cleaning, PostgreSQL's real
    refusal of a NUL stays inside its entry (SQLite stores it)."""
    monkeypatch.setattr(pfx, "safe_text", lambda value: value)
    monkeypatch.setattr(certificates, "column_text", lambda value, limit=None: value[:limit])
    items = _between_good_files(_item("nul.p12", _p12("nul@example.org", name=b"6BC162DA\x00")))
    results = import_files(ports, operator, "acme", items)
    stored = set(_rows(ports))
    assert {"good1@example.org", "good2@example.org"} <= stored
    if ports.db.is_sqlite:
        assert [r.ok for r in results] == [True, True, True] and "nul@example.org" in stored
    else:
        assert [r.ok for r in results] == [True, False, True]
        assert [e.code for e in results[1].entries] == ["entry_not_stored"]
        assert "nul@example.org" not in stored
    assert audit_checks.verify_chains(ports).ok
