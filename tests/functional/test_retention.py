"""Retention policies, legal holds, `retention run` and crypto-shredding, on SQLite and
PostgreSQL: what is due, what is held back, what a destruction leaves behind, and that nothing
destroyed opens, counts or comes back in."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest
from sqlalchemy import event, select, text

from certvault.db.models import Account, AccountKey, Certificate, EscrowedKey, KeyDestruction
from certvault.errors import CertvaultError, Forbidden
from certvault.services.directory import certificates
from certvault.services.kernel import keyring, seals
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.duties import DutyRunning, duty
from certvault.services.vault import holds, overview, retention
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import release_key
from tests.factories import make_ca, make_cert, make_p12, new_key
from tests.functional.helpers import events

PW = "import-password-1"
NOW = dt.datetime.now(dt.UTC)
CA = make_ca()


def _import(ports, operator, *, expired_days_ago=None, valid_days=None, key=None, email="a@x.org"):  # type: ignore[no-untyped-def]
    key = key or new_key()
    if expired_days_ago is not None:
        cert = make_cert(
            key,
            email,
            issuer=CA,
            not_before=NOW - dt.timedelta(days=expired_days_ago + 30),
            days=30,
        )
    else:
        cert = make_cert(key, email, issuer=CA, days=valid_days or 365)
    [entry] = import_p12(ports, operator, "acme", make_p12(key, cert, PW), PW)
    if entry.code is not None:
        raise _Refused(entry.code)
    return key, entry.client_cert_id


class _Refused(Exception):
    """An import entry refused, with its code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _set_profile(ports, certificate_id: int, profile: str) -> None:  # type: ignore[no-untyped-def]
    def work(session):  # type: ignore[no-untyped-def]
        session.get(Certificate, certificate_id).profile = profile

    ports.db.run(work)


def _key_of(ports, certificate_id: int) -> EscrowedKey:  # type: ignore[no-untyped-def]
    # Without loading the certificate: a test may have altered it.
    with ports.db.read() as session:
        return session.scalars(
            select(EscrowedKey)
            .join(Certificate, Certificate.escrowed_key_id == EscrowedKey.id)
            .where(Certificate.id == certificate_id)
        ).one()


def _checkpointed(ports) -> bytes:  # type: ignore[no-untyped-def]
    """The SQLite database's files, once the write-ahead log is written into the database."""
    conn = sqlite3.connect(ports.settings.home_dir / "db" / "certvault.sqlite3")
    try:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        conn.close()
    return b"".join(p.read_bytes() for p in ports.settings.home_dir.glob("db/*"))


def _in_vault(ports, operator, **kw) -> set[int]:  # type: ignore[no-untyped-def]
    page = certificates.list_certificates(
        ports, operator, "acme", certificates.CertificateFilter(**kw), limit=500
    )
    return {c.id for c in page.items}


# --- policies -----------------------------------------------------------------------------------


def test_policies_are_set_shown_cleared_and_hostile_values_change_nothing(ports, operator, account):
    retention.set_policy(ports, operator, "acme", days="30")
    retention.set_policy(ports, operator, "acme", days=0, profile="smime")
    retention.set_policy(ports, operator, "acme", days="off", profile="client-auth")
    retention.set_policy(ports, operator, "acme", days="45")  # changes the one account row
    shown = [(p.profile, p.days) for p in retention.list_policies(ports, operator, "acme")]
    assert shown == [(None, 45), ("client-auth", None), ("smime", 0)]
    before = len(events(ports))
    for hostile in [
        "-1",
        "abc",
        "1.5",
        "",
        " ",
        "99999999999999999999",
        "36501",
        "1e3",
        "٣",
        "0x10",
    ]:
        with pytest.raises(retention.InvalidDays) as refused:
            retention.set_policy(ports, operator, "acme", days=hostile)
        assert refused.value.code == "invalid_days"
    for hostile_int in [-1, 10**12]:
        with pytest.raises(retention.InvalidDays):
            retention.set_policy(ports, operator, "acme", days=hostile_int)
    for profile in ["nope", "", "smime\x00", "SMIME", "../smime"]:
        with pytest.raises(retention.UnknownProfile) as refused:
            retention.set_policy(ports, operator, "acme", days=1, profile=profile)
        assert refused.value.code == "unknown_profile"
    admin = Actor(name="admin:x", kind="admin", account_id=1)
    with pytest.raises(Forbidden):
        retention.set_policy(ports, admin, "acme", days=1)
    assert [(p.profile, p.days) for p in retention.list_policies(ports, operator, "acme")] == shown
    assert len(events(ports)) == before
    assert retention.clear_policy(ports, operator, "acme", profile="smime") is True
    assert retention.clear_policy(ports, operator, "acme", profile="smime") is False
    assert [p.profile for p in retention.list_policies(ports, operator, "acme")] == [
        None,
        "client-auth",
    ]
    set_events = events(ports, "retention.set")
    assert json.loads(set_events[-1].details) == {"profile": None, "days": 45, "before": 30}
    assert len(events(ports, "retention.clear")) == 1


def test_due_rules() -> None:
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def use(i: int, days_after: int, profile: str | None = None) -> retention.Use:
        return retention.Use(i, b"x", t + dt.timedelta(days=days_after), profile, None)

    # Renewals sharing a key: due when the LAST is past its retention.
    due = retention.due_at([use(1, 0), use(2, 100)], {None: 30})
    assert due is not None and due.at == t + dt.timedelta(days=130) and due.profile is None
    # A profile's policy wins over the account's, per certificate.
    due = retention.due_at([use(1, 0, "smime"), use(2, 10)], {None: 30, "smime": 90})
    assert due is not None and due.at == t + dt.timedelta(days=90) and due.profile == "smime"
    # N = 0: due at expiry.
    assert retention.due_at([use(1, 5)], {None: 0}).at == t + dt.timedelta(days=5)  # type: ignore[union-attr]
    # A certificate with no policy, or one set off, keeps the key forever.
    assert retention.due_at([use(1, 0, "smime"), use(2, 0)], {"smime": 1}) is None
    assert retention.due_at([use(1, 0, "client-auth")], {None: 1, "client-auth": None}) is None
    assert retention.due_at([], {None: 1}) is None


# --- the run ------------------------------------------------------------------------------------


def test_run_destroys_what_is_due_holds_back_what_is_held_and_leaves_records(
    ports, operator, account
):
    plain_key, due_plain = _import(ports, operator, expired_days_ago=40, email="p@x.org")
    shared_key, old = _import(ports, operator, expired_days_ago=100, email="r@x.org")
    _, renewal = _import(ports, operator, key=shared_key, valid_days=30, email="r@x.org")
    _, recent = _import(ports, operator, expired_days_ago=10, email="q@x.org")
    _, smime = _import(ports, operator, expired_days_ago=1, email="s@x.org")
    _set_profile(ports, smime, "smime")
    _, kept = _import(ports, operator, expired_days_ago=400, email="k@x.org")
    _set_profile(ports, kept, "client-auth")
    _, by_person = _import(ports, operator, expired_days_ago=40, email="held@x.org")
    _, by_cert = _import(ports, operator, expired_days_ago=40, email="c@x.org")
    retention.set_policy(ports, operator, "acme", days=30)
    retention.set_policy(ports, operator, "acme", days=0, profile="smime")
    retention.set_policy(ports, operator, "acme", days="off", profile="client-auth")
    person_hold = holds.add_hold(
        ports, operator, "acme", person_email="HELD@x.org", reason="case 12"
    )
    holds.add_hold(ports, operator, "acme", certificate_id=by_cert, reason="case 13")
    assert overview.account_overview(ports, operator, "acme").keys == 7

    secret = _key_of(ports, due_plain)
    if ports.settings.database_url is None:
        # As where SQLite is built without SQLITE_SECURE_DELETE (Debian's has it on).
        event.listen(
            ports.db.engine, "connect", lambda conn, _: conn.execute("PRAGMA secure_delete = OFF")
        )
        ports.db.engine.dispose()
        assert secret.ciphertext in _checkpointed(ports)  # in the database file itself
    dry = retention.run_retention(ports, operator, "acme", dry_run=True)
    assert (dry.due, dry.destroyed, dry.held) == (4, 0, 2)
    assert _key_of(ports, due_plain).destroyed_at is None

    report = retention.run_retention(ports, operator, "acme")
    assert (report.due, report.destroyed, report.held) == (4, 2, 2)
    for cid in (due_plain, smime):
        row = _key_of(ports, cid)
        assert row.destroyed_at is not None
        assert row.ciphertext == b"" and row.wrapped_data_key == b""
    if ports.settings.database_url is None:  # SQLite: the freed bytes are overwritten too
        stored = _checkpointed(ports)
        for wiped in (secret.ciphertext, secret.wrapped_data_key):
            assert not any(wiped[i : i + 12] in stored for i in range(len(wiped) - 12))
    for cid in (old, renewal, recent, kept, by_person, by_cert):
        row = _key_of(ports, cid)
        assert row.destroyed_at is None and row.ciphertext != b""

    with ports.db.read() as session:
        records = {r.escrowed_key_id: r for r in session.scalars(select(KeyDestruction))}
        cert = session.get(Certificate, smime)
        spki, sha = cert.spki_sha256.hex(), cert.sha256.hex()
    record = records[_key_of(ports, smime).id]
    assert record.cause == "retention" and record.policy_profile == "smime"
    assert record.policy_days == 0 and record.spki_sha256 == spki
    assert json.loads(record.certificates)[0]["sha256"] == sha
    assert json.loads(record.certificates)[0]["id"] == smime
    assert record.key_uuid == _key_of(ports, smime).uuid
    # The database's time, not the node's.
    assert abs(record.destroyed_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    plain = records[_key_of(ports, due_plain).id]
    assert plain.policy_profile is None and plain.policy_days == 30
    destroyed_events = events(ports, "key.destroy")
    assert {e.target_id for e in destroyed_events} == {r.key_uuid for r in records.values()}
    assert json.loads(events(ports, "retention.run")[-1].details) == {
        "due": 4,
        "destroyed": 2,
        "held": 2,
    }

    # Idempotent: a rerun destroys nothing twice.
    again = retention.run_retention(ports, operator, "acme")
    assert again.destroyed == 0 and again.due == 2 and again.held == 2
    assert len(events(ports, "key.destroy")) == 2

    # Released, the person's key follows the policy again.
    holds.release_hold(ports, operator, "acme", person_hold.id, reason="case closed")
    assert retention.run_retention(ports, operator, "acme").destroyed == 1
    assert _key_of(ports, by_person).destroyed_at is not None

    # Lists, filters and the dashboard no longer count destroyed keys.
    in_vault = _in_vault(ports, operator, key_vault=True)
    assert in_vault == {old, renewal, recent, kept, by_cert}
    assert {due_plain, smime, by_person} <= _in_vault(ports, operator, key_vault=False)
    assert overview.account_overview(ports, operator, "acme").keys == 4
    person_ids = []
    with ports.db.read() as session:
        person_ids = [session.get(Certificate, c).person_id for c in (due_plain, old)]
    held_by = certificates.holdings_of(ports, operator, "acme", person_ids)
    assert held_by[person_ids[0]].keys == 0 and held_by[person_ids[0]].certificates == 1
    assert held_by[person_ids[1]].keys == 1 and held_by[person_ids[1]].certificates == 2
    page = certificates.list_certificates(
        ports, operator, "acme", certificates.CertificateFilter(), limit=500
    )
    assert {c.id: c.key_in_vault for c in page.items}[due_plain] is False

    # The one function that opens keys refuses a destroyed one (what verification drills call).
    with ports.db.read() as session:
        destroyed_row = session.get(EscrowedKey, _key_of(ports, due_plain).id)
        acme = session.get(Account, destroyed_row.account_id)
        with pytest.raises(keyring.AccountKeyDestroyed):
            keyring.open_private_key(session, ports, acme, destroyed_row)

    # Released: 410 account_key_destroyed, and the refusal is audited.
    with pytest.raises(keyring.AccountKeyDestroyed) as refused:
        release_key(ports, operator, "acme", due_plain, passphrase=None, reason="test")
    assert refused.value.status == 410 and refused.value.code == "account_key_destroyed"
    refusal = events(ports, "key.release")[-1]
    assert refusal.outcome == "refused"
    assert json.loads(refusal.details)["reason"] == "account_key_destroyed"

    # The destroyed key does not come back in, under a new certificate either.
    with pytest.raises(_Refused) as refused_again:
        _import(ports, operator, key=plain_key, valid_days=10, email="p@x.org")
    assert refused_again.value.code == "escrowed_key_destroyed"
    assert _key_of(ports, due_plain).ciphertext == b""


def test_the_database_clock_decides_not_the_node(ports, operator, account):
    _, valid = _import(ports, operator, valid_days=200)
    retention.set_policy(ports, operator, "acme", days=0)
    # This node's clock runs ten years ahead: by it the certificate expired long ago.
    ports.clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
    report = retention.run_retention(ports, operator, "acme")
    assert report.destroyed == 0 and report.due == 0
    assert report.at is not None and report.at < dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert _key_of(ports, valid).destroyed_at is None


def test_one_run_at_a_time(ports, operator, account):
    retention.set_policy(ports, operator, "acme", days=0)
    with duty(ports, "retention"):
        with pytest.raises(DutyRunning):
            retention.run_retention(ports, operator, "acme")
        # A dry run changes nothing and needs no lock.
        assert retention.run_retention(ports, operator, "acme", dry_run=True).destroyed == 0


def test_holds_refuse_hostile_input_and_foreign_objects(ports, operator, account):
    from certvault.services.directory import accounts

    accounts.create_account(ports, operator, "Other", "other", key_vault_enabled=True)
    _, cid = _import(ports, operator)
    before = len(events(ports))
    bad = [
        dict(person_email="a@x.org", certificate_id=cid, reason="r"),
        dict(reason="r"),
        dict(person_email="not an address", reason="r"),
        dict(person_email="nobody@x.org", reason="r"),
        dict(certificate_id=cid, reason=""),
        dict(certificate_id=cid, reason="x" * 501),
        dict(certificate_id=cid, reason="bad\x1b[31m"),
        dict(certificate_id=999999, reason="r"),
    ]
    for kw in bad:
        with pytest.raises(CertvaultError):
            holds.add_hold(ports, operator, "acme", **kw)  # type: ignore[arg-type]
    # Another account's certificate answers like a missing one.
    with pytest.raises(CertvaultError) as refused:
        holds.add_hold(ports, operator, "other", certificate_id=cid, reason="r")
    assert refused.value.code == "not_found"
    assert holds.list_holds(ports, operator, "acme") == []
    assert len(events(ports)) == before
    hold = holds.add_hold(ports, operator, "acme", certificate_id=cid, reason="case 1")
    with pytest.raises(CertvaultError) as refused:
        holds.release_hold(ports, operator, "other", hold.id, reason="r")
    assert refused.value.code == "not_found"
    holds.release_hold(ports, operator, "acme", hold.id, reason="done")
    with pytest.raises(holds.HoldReleased):
        holds.release_hold(ports, operator, "acme", hold.id, reason="again")
    [listed] = holds.list_holds(ports, operator, "acme")
    assert listed.released_by == operator.name and listed.release_reason == "done"


# --- crypto-shredding ---------------------------------------------------------------------------


def test_destroy_keys_is_refused_under_hold_and_then_nothing_opens_or_comes_in(
    ports, operator, account
):
    key, cid = _import(ports, operator)
    hold = holds.add_hold(ports, operator, "acme", person_email="a@x.org", reason="litigation")
    with pytest.raises(holds.LegalHoldActive) as refused:
        retention.destroy_account_keys(ports, operator, "acme")
    assert refused.value.code == "legal_hold_active"
    with ports.db.read() as session:
        assert all(k.destroyed_at is None for k in session.scalars(select(AccountKey)))
    assert _key_of(ports, cid).destroyed_at is None
    refusal = events(ports, "account.destroy_keys")[-1]
    assert refusal.outcome == "refused"
    assert json.loads(refusal.details)["reason"] == "legal_hold_active"

    holds.release_hold(ports, operator, "acme", hold.id, reason="settled")
    plan = retention.shred_plan(ports, operator, "acme")
    assert (plan.account_key_versions, plan.escrowed_keys, plan.active_holds) == (1, 1, 0)
    result = retention.destroy_account_keys(ports, operator, "acme")
    assert (result.account_key_versions, result.escrowed_keys) == (1, 1)
    with ports.db.read() as session:
        [ak] = session.scalars(select(AccountKey)).all()
        assert ak.destroyed_at is not None and ak.wrapped_key == b""
        [record] = session.scalars(select(KeyDestruction)).all()
        assert record.cause == "account destroy-keys" and record.policy_days is None
    done = events(ports, "account.destroy_keys")[-1]
    assert done.outcome == "success" and done.actor == operator.name
    assert json.loads(done.details)["escrowed_keys"] == 1
    assert json.loads(done.details)["account_key_versions"] == 1

    with pytest.raises(keyring.AccountKeyDestroyed):
        release_key(ports, operator, "acme", cid, passphrase=None, reason="test")
    # The one function that opens keys refuses too, also when someone clears the key's mark by
    # SQL: its account key is gone.
    _sql(ports, "UPDATE escrowed_keys SET destroyed_at = NULL")
    with ports.db.read() as session:
        row = session.scalars(select(EscrowedKey)).one()
        account_row = session.get(Account, row.account_id)
        with pytest.raises(keyring.AccountKeyDestroyed):
            keyring.open_private_key(session, ports, account_row, row)
    _sql(ports, "UPDATE escrowed_keys SET destroyed_at = CURRENT_TIMESTAMP")
    # No fresh account key behind the operator's back: a new key is refused ...
    with pytest.raises(_Refused) as refused_new:
        _import(ports, operator, email="new@x.org")
    assert refused_new.value.code == "account_shredded"
    # ... and so is the destroyed one, under its old or a new certificate.
    with pytest.raises(_Refused) as refused_old:
        _import(ports, operator, key=key, valid_days=10)
    assert refused_old.value.code == "escrowed_key_destroyed"
    with ports.db.read() as session:
        assert len(session.scalars(select(AccountKey)).all()) == 1
    assert overview.account_overview(ports, operator, "acme").keys == 0
    # A rerun destroys nothing more.
    again = retention.destroy_account_keys(ports, operator, "acme")
    assert (again.account_key_versions, again.escrowed_keys) == (0, 0)


# --- seals --------------------------------------------------------------------------------------


def _sql(ports, statement: str) -> None:  # type: ignore[no-untyped-def]
    with ports.db.engine.begin() as conn:
        conn.execute(text(statement))


def test_tampered_policy_and_hold_rows_are_refused_and_named(ports, operator, account):
    _, cid = _import(ports, operator, expired_days_ago=40)
    retention.set_policy(ports, operator, "acme", days=3650)
    hold = holds.add_hold(ports, operator, "acme", certificate_id=cid, reason="case")
    # Someone with the database's credentials shortens the policy ...
    _sql(ports, "UPDATE retention_policies SET days = 0")
    with pytest.raises(seals.TamperedRow) as refused:
        retention.run_retention(ports, operator, "acme")
    assert refused.value.code == "row_tampered"
    assert _key_of(ports, cid).destroyed_at is None
    report = seals.check_rows(ports)
    assert [p.table for p in report.problems] == ["retention_policies"]
    # ... or releases the hold behind the operator's back.
    _sql(ports, "UPDATE retention_policies SET days = 3650")
    _sql(ports, "UPDATE legal_holds SET released_at = created_at")
    assert [p.table for p in seals.check_rows(ports).problems] == ["legal_holds"]
    with pytest.raises(seals.TamperedRow):
        retention.destroy_account_keys(ports, operator, "acme")
    with pytest.raises(seals.TamperedRow):
        holds.release_hold(ports, operator, "acme", hold.id, reason="r")
    assert _key_of(ports, cid).destroyed_at is None
    assert events(ports, "integrity.row_refused")


def test_a_tampered_certificate_or_destruction_record_is_refused_and_named(
    ports, operator, account
):
    _, tampered = _import(ports, operator, expired_days_ago=40, email="t@x.org")
    _, honest = _import(ports, operator, expired_days_ago=40, email="h@x.org")
    retention.set_policy(ports, operator, "acme", days=30)
    # Someone moves a certificate's expiry by SQL: its key is left alone, the refusal audited.
    _sql(ports, f"UPDATE certificates SET serial = 'ff' WHERE id = {tampered}")
    report = retention.run_retention(ports, operator, "acme")
    assert (report.destroyed, report.refused) == (1, 1)
    assert _key_of(ports, tampered).destroyed_at is None
    assert _key_of(ports, honest).destroyed_at is not None
    refusals = events(ports, "integrity.row_refused")
    assert [e.target_type for e in refusals] == ["certificates"]
    # A destruction record altered by SQL is named by `certvault verify`'s check.
    _sql(ports, "UPDATE key_destructions SET policy_days = 9999")
    tables = {p.table for p in seals.check_rows(ports).problems}
    assert tables == {"certificates", "key_destructions"}
    with pytest.raises(seals.TamperedRow):
        retention.list_destructions(ports, operator, "acme")
