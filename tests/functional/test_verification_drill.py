"""The verification drill as a schedule runs it: samples that walk every key, one run at a time,
its record in the audit chain and its gauges on /metrics (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update

from certvault.crypto import keys as keylib
from certvault.db.models import AccountKey, AuditEvent, Certificate, DutyLock, EscrowedKey
from certvault.errors import InvalidInput
from certvault.services.audit import log as audit
from certvault.services.audit.log import INSTALLATION_CHAIN, AuditChainBroken
from certvault.services.directory import accounts
from certvault.services.kernel import keyring
from certvault.services.kernel.duties import DutyLost, DutyRunning, duty
from certvault.services.kernel.ports import open_ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault import drill_record, verification
from certvault.services.vault.archive import EscrowRequest, archive_entry
from certvault.services.vault.verification import verify_escrow
from certvault.web.app import create_app
from certvault.web.metrics import drill_text
from tests.conftest import TEST_OPERATOR
from tests.factories import make_cert, new_key
from tests.functional import cli_env


def _escrow(ports, operator, count, slug="acme"):  # type: ignore[no-untyped-def]
    """Escrow ``count`` EC keys with a certificate each, in one transaction; the uuids of every
    escrowed key, sorted (the order the cursor walks)."""
    with ports.db.transaction() as s:
        account = get_account(s, slug)
        for n in range(count):
            key = new_key("ec256")
            cert = make_cert(key, f"user{n}@{slug}.example.org")
            archive_entry(s, ports, account, operator, EscrowRequest(key, cert))
    with ports.db.read() as s:
        return sorted(s.scalars(select(EscrowedKey.uuid)))


def _corrupt(ports, key_uuid):  # type: ignore[no-untyped-def]
    with ports.db.transaction() as s:
        row = s.scalars(select(EscrowedKey).where(EscrowedKey.uuid == key_uuid)).one()
        original = row.ciphertext
        row.ciphertext = bytes([original[0] ^ 1]) + original[1:]
    return original


def _records(ports):  # type: ignore[no-untyped-def]
    """The drill's events of the installation chain, oldest first, with their details."""
    with ports.db.read() as s:
        rows = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.chain == INSTALLATION_CHAIN, AuditEvent.action == "vault.verify")
            .order_by(AuditEvent.seq)
        ).all()
        return [(e.outcome, json.loads(e.details)) for e in rows]


def _gauges(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("certvault_") and ("verify" in line):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


@pytest.fixture
def scrape(ports):  # type: ignore[no-untyped-def]
    """Read the drill's gauges from /metrics as a scraper on loopback does."""
    with TestClient(create_app(ports), client=("127.0.0.1", 40000)) as client:

        def read() -> dict[str, float]:
            answer = client.get("/metrics")
            assert answer.status_code == 200
            return _gauges(answer.text)

        yield read


def test_the_cursor_walks_every_key_and_records_a_full_pass(ports, operator, account):
    keys = _escrow(ports, operator, 12)
    runs = [verify_escrow(ports, operator, sample=5) for _ in range(3)]
    # No random share below 10 keys a run: the cursor alone, in uuid order, wrapping once.
    assert [r.sampled for r in runs[:2]] == [keys[0:5], keys[5:10]]
    assert runs[2].sampled == keys[10:12] + keys[0:3]
    assert [r.full_pass for r in runs] == [False, False, True]
    assert all(r.ok and r.keys == 5 and r.certificates == 5 for r in runs)
    assert set().union(*(r.sampled for r in runs)) == set(keys)

    records = _records(ports)
    assert [d["cursor"] for _, d in records] == [keys[4], keys[9], keys[2]]
    assert [d["mode"] for _, d in records] == ["sample"] * 3
    assert [d["last_full_pass_at"] is None for _, d in records] == [True, True, False]
    first, last = records[0][1], records[2][1]
    # The pass that completed began when the first run did; a new pass began with the third.
    assert last["last_full_pass_started_at"] == first["pass_started_at"]
    assert last["pass_started_at"] == last["started_at"]
    assert last["last_full_pass_at"] == last["finished_at"]

    # The next run goes on from the record: keys 3..7 of the new pass.
    assert verify_escrow(ports, operator, sample=5).sampled == keys[3:8]


def test_a_sample_draws_a_share_at_random(ports, operator, account):
    keys = _escrow(ports, operator, 25)
    report = verify_escrow(ports, operator, sample=20)
    # 18 in cursor order, 2 at random among the 7 the cursor did not reach.
    assert report.sampled[:18] == keys[:18]
    assert len(report.sampled) == len(set(report.sampled)) == 20
    assert set(report.sampled[18:]) <= set(keys[18:])
    assert _records(ports)[-1][1]["cursor"] == keys[17]


def test_sample_sizes(ports, operator, account):
    keys = _escrow(ports, operator, 4)
    for size in (0, -1, -(10**30)):  # refused before anything is checked or recorded
        with pytest.raises(InvalidInput):
            verify_escrow(ports, operator, sample=size)
    assert _records(ports) == []
    for size in (13, 10**30):  # larger than the vault: every key once, a full pass
        report = verify_escrow(ports, operator, sample=size)
        assert report.ok and report.keys == len(keys) and report.full_pass
        outcome, details = _records(ports)[-1]
        assert outcome == "success" and details["keys"] == 4 and details["cursor"] == ""
        assert details["sample"] == min(size, 2**53) and details["full_pass"] is True


def test_a_broken_key_is_found_by_the_sample_that_reaches_it(scrape, ports, operator, account):
    keys = _escrow(ports, operator, 10)
    broken = keys[5]
    original = _corrupt(ports, broken)

    first = verify_escrow(ports, operator, sample=4)  # keys 0..3
    assert first.ok and scrape()["certvault_last_verify_ok"] == 1

    second = verify_escrow(ports, operator, sample=4)  # keys 4..7
    assert not second.ok
    [failure] = second.failures
    assert (failure.account, failure.escrowed_key_uuid, failure.reason) == (
        "acme",
        broken,
        "cannot_open",
    )
    outcome, details = _records(ports)[-1]
    assert outcome == "failure" and details["failures"] == 1
    assert details["reasons"] == {"cannot_open": 1}
    assert details["failing"] == [{"key": broken, "account": "acme", "reason": "cannot_open"}]
    with ports.db.read() as s:
        [account_event] = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.chain != INSTALLATION_CHAIN, AuditEvent.action == "vault.verify")
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        ).all()
    assert account_event.outcome == "failure"
    assert json.loads(account_event.details)["failed"] == [{"key": broken, "reason": "cannot_open"}]
    gauges = scrape()
    assert gauges["certvault_last_verify_ok"] == 0
    assert gauges['certvault_verify_failures{reason="cannot_open"}'] == 1
    assert gauges['certvault_verify_failures{reason="invalid_key"}'] == 0
    assert gauges["certvault_verify_keys_checked"] == 4

    # The next sample is elsewhere, but checks the broken key again: the failure stays visible.
    third = verify_escrow(ports, operator, sample=4)
    assert broken not in third.sampled[:4] and third.rechecked == 1
    assert [f.escrowed_key_uuid for f in third.failures] == [broken]
    assert scrape()["certvault_last_verify_ok"] == 0

    with ports.db.transaction() as s:  # repaired (say, from a backup): the next run is clean
        s.execute(update(EscrowedKey).where(EscrowedKey.uuid == broken).values(ciphertext=original))
    assert verify_escrow(ports, operator, sample=4).ok
    assert scrape()["certvault_last_verify_ok"] == 1


def test_a_broken_key_is_not_forgotten_by_another_scope_nor_by_removing_it(
    scrape, ports, operator, account
):
    keys = _escrow(ports, operator, 2)
    accounts.create_account(ports, operator, "Beta", "beta", key_vault_enabled=True)
    _escrow(ports, operator, 1, slug="beta")
    _corrupt(ports, keys[0])
    assert not verify_escrow(ports, operator, "acme").ok
    # A full pass of another account checks acme's broken key again.
    beta = verify_escrow(ports, operator, "beta")
    assert [(f.account, f.escrowed_key_uuid, f.reason) for f in beta.failures] == [
        ("acme", keys[0], "cannot_open")
    ]
    # Removing the broken key's row does not hide it: it is missing.
    with ports.db.transaction() as s:
        row = s.scalars(select(EscrowedKey).where(EscrowedKey.uuid == keys[0])).one()
        for cert in s.scalars(select(Certificate).where(Certificate.escrowed_key_id == row.id)):
            s.delete(cert)
        s.flush()
        s.delete(row)
    for _ in range(2):
        report = verify_escrow(ports, operator, sample=1)
        assert [(f.escrowed_key_uuid, f.reason) for f in report.failures] == [(keys[0], "missing")]
    assert scrape()['certvault_verify_failures{reason="missing"}'] == 1


def test_each_way_a_key_can_fail_has_its_reason(ports, operator, account):
    keys = _escrow(ports, operator, 5)
    with ports.db.transaction() as s:
        acme = get_account(s, "acme")
        rows = {r.uuid: r for r in s.scalars(select(EscrowedKey))}
        # Sealed again by certvault: it opens, but to something that is not a key.
        garbage = keyring.seal_private_key(
            s, ports, acme, keys[0], rows[keys[0]].spki_sha256, b"\x30\x03\x02\x01\x00"
        )
        other = keyring.seal_private_key(
            s,
            ports,
            acme,
            keys[1],
            rows[keys[1]].spki_sha256,
            keylib.to_pkcs8_der(new_key("ec256")),
        )
        for uuid, sealed in ((keys[0], garbage), (keys[1], other)):
            r = rows[uuid]
            r.nonce, r.ciphertext = sealed.nonce, sealed.ciphertext
            r.data_key_nonce, r.wrapped_data_key = sealed.data_key_nonce, sealed.wrapped_data_key
        cert_of = {
            c.escrowed_key_id: c for c in s.scalars(select(Certificate)) if c.escrowed_key_id
        }
        cert_of[rows[keys[2]].id].escrowed_key_id = None  # the key has no certificate left
        cert_of[rows[keys[4]].id].escrowed_key_id = rows[keys[3]].id  # a stranger's certificate
    report = verify_escrow(ports, operator)
    assert {f.escrowed_key_uuid: f.reason for f in report.failures} == {
        keys[0]: "invalid_key",
        keys[1]: "public_key_mismatch",
        keys[2]: "no_certificate",
        keys[3]: "certificate_mismatch",
        keys[4]: "no_certificate",
    }
    outcome, details = _records(ports)[-1]
    assert details["reasons"] == {
        "invalid_key": 1,
        "public_key_mismatch": 1,
        "no_certificate": 2,
        "certificate_mismatch": 1,
    }
    text = drill_text(drill_record.latest(ports)).decode()
    assert 'certvault_verify_failures{reason="no_certificate"} 2.0' in text


def test_destroyed_keys_are_counted_as_destroyed_not_as_failures(scrape, ports, operator, account):
    accounts.create_account(ports, operator, "Beta", "beta", key_vault_enabled=True)
    acme_keys = _escrow(ports, operator, 3)
    all_keys = _escrow(ports, operator, 2, slug="beta")
    with ports.db.transaction() as s:
        s.execute(
            update(EscrowedKey)
            .where(EscrowedKey.uuid == acme_keys[0])
            .values(destroyed_at=datetime.now(UTC))
        )
        beta = get_account(s, "beta")
        s.execute(
            update(AccountKey)
            .where(AccountKey.account_id == beta.id)
            .values(destroyed_at=datetime.now(UTC))
        )
    report = verify_escrow(ports, operator)
    assert report.ok and report.destroyed == 3 and report.keys == 2
    sampled = verify_escrow(ports, operator, sample=2)
    assert sampled.ok and sampled.keys + sampled.destroyed == 2
    gauges = scrape()
    assert gauges["certvault_last_verify_ok"] == 1
    assert gauges["certvault_verify_keys_destroyed"] == sampled.destroyed
    assert len(all_keys) == 5


def test_an_account_sample_walks_that_account_with_a_cursor_of_its_own(ports, operator, account):
    acme_keys = _escrow(ports, operator, 3)
    accounts.create_account(ports, operator, "Beta", "beta", key_vault_enabled=True)
    beta_keys = sorted(set(_escrow(ports, operator, 3, slug="beta")) - set(acme_keys))
    first = verify_escrow(ports, operator, "beta", sample=2)
    assert first.sampled == beta_keys[:2] and not first.full_pass
    _, details = _records(ports)[-1]
    with ports.db.read() as s:
        beta_uuid = get_account(s, "beta").uuid
    assert details["account_cursors"] == {beta_uuid: beta_keys[1]}
    assert details["cursor"] == "" and details["scope"] == "beta"
    assert (
        verify_escrow(ports, operator, "beta", sample=2).sampled == [beta_keys[2]] + beta_keys[:1]
    )
    # The installation's own walk has not moved: it begins at the first key of all.
    every = sorted(acme_keys + beta_keys)
    assert verify_escrow(ports, operator, sample=2).sampled == every[:2]


def test_only_one_drill_runs_at_a_time(ports, operator, account):
    _escrow(ports, operator, 2)
    with duty(ports, "verify"):
        with pytest.raises(DutyRunning) as refused:
            verify_escrow(ports, operator, sample=1)
    assert refused.value.code == "duty_running"
    assert _records(ports) == []  # nothing was checked, nothing recorded
    assert verify_escrow(ports, operator, sample=1).ok  # free again


def test_a_drill_whose_lock_is_taken_over_stops_and_records_nothing(
    ports, operator, account, monkeypatch
):
    _escrow(ports, operator, 3)
    checked = []
    real_check = verification._check

    def check_then_lose_the_lock(session, ports_, row):  # type: ignore[no-untyped-def]
        checked.append(row.uuid)
        if len(checked) == 1:  # its lease ran out while it worked: another node took over
            with ports.db.transaction() as s:
                s.execute(update(DutyLock).values(holder="othernode:1:x"))
        return real_check(session, ports_, row)

    monkeypatch.setattr(verification, "_check", check_then_lose_the_lock)
    monkeypatch.setattr(verification, "RENEW_SECONDS", -1.0)  # renew after every key
    with pytest.raises(DutyLost):
        verify_escrow(ports, operator, sample=3)
    assert len(checked) == 1 and _records(ports) == []


def test_metrics_before_any_drill_say_not_ok(scrape, ports, operator, account):
    gauges = scrape()
    assert gauges["certvault_last_verify_ok"] == 0
    assert gauges["certvault_verify_record_intact"] == 1
    assert gauges["certvault_last_verify_timestamp_seconds"] == 0


def test_metrics_come_from_the_record_every_node_reads(scrape, ports, operator, account, settings):
    _escrow(ports, operator, 3)
    other_node = open_ports(settings)  # its own engine, caches and process state
    try:
        verify_escrow(other_node, operator)
    finally:
        other_node.close()
    gauges = scrape()
    _, details = _records(ports)[-1]
    finished = datetime.fromisoformat(details["finished_at"]).timestamp()
    assert gauges["certvault_last_verify_ok"] == 1
    assert gauges["certvault_verify_record_intact"] == 1
    assert gauges["certvault_last_verify_timestamp_seconds"] == finished
    assert gauges["certvault_last_full_verify_timestamp_seconds"] == finished
    assert gauges["certvault_verify_keys_checked"] == 3
    assert abs(finished - datetime.now(UTC).timestamp()) < 120


def test_an_edited_record_is_not_believed(scrape, ports, operator, account):
    keys = _escrow(ports, operator, 3)
    _corrupt(ports, keys[0])
    assert not verify_escrow(ports, operator).ok
    with ports.db.transaction() as s:  # the installation's log goes on past the drill
        audit.record(s, ports, account=None, actor=operator, action="installation.note")
    # Someone with the database's password makes the failed drill look clean...
    with ports.db.transaction() as s:
        ev = s.scalars(
            select(AuditEvent).where(
                AuditEvent.chain == INSTALLATION_CHAIN, AuditEvent.action == "vault.verify"
            )
        ).one()
        forged = {
            **json.loads(ev.details),
            "failures": 0,
            "reasons": {},
            "failing": [],
            "cursor": keys[1],
        }
        ev.details, ev.outcome = json.dumps(forged), "success"
    assert drill_record.latest(ports).status == "broken"
    gauges = scrape()
    assert gauges["certvault_verify_record_intact"] == 0
    assert gauges["certvault_last_verify_ok"] == 0
    assert gauges["certvault_last_verify_timestamp_seconds"] == 0
    # ...the next drill says so, and starts a new pass instead of following the forged cursor.
    report = verify_escrow(ports, operator, sample=1)
    assert report.previous.status == "broken" and not report.ok
    assert report.sampled == [keys[0]]
    outcome, details = _records(ports)[-1]
    assert outcome == "failure" and details["previous_record"] == "broken"
    assert details["cursor"] == keys[0]
    assert scrape()["certvault_last_verify_ok"] == 0


def test_a_removed_record_is_not_believed(scrape, ports, operator, account):
    keys = _escrow(ports, operator, 2)
    verify_escrow(ports, operator)
    _corrupt(ports, keys[1])
    assert not verify_escrow(ports, operator).ok
    # Deleting the failed drill's event would bring back the clean one before it.
    with ports.db.transaction() as s:
        newest = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.chain == INSTALLATION_CHAIN)
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        ).one()
        assert newest.action == "vault.verify"
        s.execute(delete(AuditEvent).where(AuditEvent.id == newest.id))
    record = drill_record.latest(ports)
    assert record.status == "broken" and "cut off" in record.problem
    gauges = scrape()
    assert gauges["certvault_verify_record_intact"] == 0
    assert gauges["certvault_last_verify_ok"] == 0
    with pytest.raises(AuditChainBroken):  # nor does a drill go on from the older record
        verify_escrow(ports, operator, sample=1)


# --- the command, as a timer runs it ----------------------------------------------------------


@pytest.fixture
def cli(backend, tmp_path):  # type: ignore[no-untyped-def]
    yield from cli_env.cli_for(backend, tmp_path)


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL: the in-process tests
def test_the_command_samples_locks_and_writes_metrics(cli, tmp_path):
    cli.bootstrap()
    ports = cli.ports()
    try:
        keys = _escrow(ports, TEST_OPERATOR, 3)
    finally:
        ports.close()

    def drills() -> int:
        [(n,)] = cli.sql("SELECT count(*) FROM audit_events WHERE action = ?", ["vault.verify"])
        return int(n)

    refused = cli.run("verify", "--sample", "0")
    assert refused.returncode == 2, refused.stderr
    assert "Invalid value for '--sample'" in cli_env.text(refused)
    nowhere = cli.run("verify", "--metrics-file", tmp_path / "missing" / "drill.prom")
    assert nowhere.returncode == 2
    assert "does not exist" in cli_env.text(nowhere)
    assert drills() == 0  # nothing was checked or recorded

    prom = tmp_path / "textfile" / "certvault.prom"
    prom.parent.mkdir()
    ran = cli.run("verify", "--sample", "2", "--metrics-file", prom)
    assert ran.returncode == 0, ran.stderr
    assert "sample: 2 keys" in ran.stdout
    assert "keys checked: 2, certificates: 2, failures: 0, destroyed: 0" in ran.stdout
    gauges = _gauges(prom.read_text())
    assert gauges["certvault_last_verify_ok"] == 1 and gauges["certvault_verify_keys_checked"] == 2
    assert [p.name for p in prom.parent.iterdir()] == ["certvault.prom"]  # no temporary left

    recorded = drills()
    ports = cli.ports()
    try:
        with duty(ports, "verify"):  # another node is running the drill
            busy = cli.run("verify", "--sample", "1", "--metrics-file", prom)
    finally:
        ports.close()
    assert busy.returncode == 75
    said = cli_env.text(busy)
    assert "[duty_running]" in said and "already running" in said and "FAILED" not in said
    assert drills() == recorded

    broken = keys[1]
    cli.sql("UPDATE escrowed_keys SET nonce = ? WHERE uuid = ?", [b"\x00" * 12, broken])
    failed = cli.run("verify", "--metrics-file", prom)
    assert failed.returncode == 1
    assert f"FAILED acme key {broken}: cannot_open" in cli_env.text(failed)
    assert "failures: 1" in failed.stdout
    gauges = _gauges(prom.read_text())
    assert gauges["certvault_last_verify_ok"] == 0
    assert gauges['certvault_verify_failures{reason="cannot_open"}'] == 1
