"""The audit witness (DESIGN.md §5.10): a new event continues from the head kept outside the
database, so someone who can write the database cannot cut an event out and let the log go on;
a crash between a commit and its witness write never locks an account. SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest
from sqlalchemy import delete, func, select, text, update

from certvault.db.models import Account, AuditEvent, AuditHead, MailMessage
from certvault.errors import CertvaultError
from certvault.services.access import tokens
from certvault.services.audit import checks as audit_checks
from certvault.services.audit import log as audit
from certvault.services.audit import reading as audit_reading
from certvault.services.directory import accounts
from certvault.services.kernel import tenancy
from certvault.services.kernel.witness import ChainHead
from certvault.services.vault.imports import import_p12
from tests.conftest import TEST_OPERATOR
from tests.functional import cli_env
from tests.functional.compat_fixtures import P12_PASSWORD, ScmWorld, scm_world  # noqa: F401

ATTACKER = "198.51.100.66"


def _chain(ports, slug: str = "acme") -> str:  # type: ignore[no-untyped-def]
    with ports.db.read() as s:
        return audit.chain_of(tenancy.get_account(s, slug))


def _events(ports, chain: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with ports.db.read() as s:
        query = select(AuditEvent).where(AuditEvent.chain == chain).order_by(AuditEvent.seq)
        return list(s.scalars(query))


def _escrow(scm: ScmWorld, email: str) -> int:
    _, _, p12 = scm.p12_for(email)
    [entry] = import_p12(scm.ports, TEST_OPERATOR, "acme", p12, P12_PASSWORD)
    assert entry.ok and entry.client_cert_id is not None
    return entry.client_cert_id


def _record(ports, slug: str = "acme", action: str = "test.event") -> AuditEvent:  # type: ignore[no-untyped-def]
    def work(s):  # type: ignore[no-untyped-def]
        return audit.record(
            s, ports, account=tenancy.get_account(s, slug), actor=TEST_OPERATOR, action=action
        )

    return ports.db.run(work)


def _cut_newest(ports, chain: str) -> AuditEvent:  # type: ignore[no-untyped-def]
    """What a database writer does to hide the newest event: delete it and set the head row back
    to the event before it, so the database alone looks consistent."""
    events = _events(ports, chain)
    cut, before = events[-1], events[-2]
    with ports.db.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id == cut.id))
        s.execute(
            update(AuditHead).where(AuditHead.chain == chain).values(seq=before.seq, mac=before.mac)
        )
    return cut


def test_cut_release_then_new_events_is_refused_and_reported(scm: ScmWorld) -> None:
    """The attack as reproduced: a key is downloaded with a token, the release event, the head row
    and the owner's mail are rolled back, then failed logins are to paper over the gap."""
    ports, chain = scm.ports, _chain(scm.ports)
    cert_id = _escrow(scm, "victim@acme.example")
    # Step 1 as reproduced: a token row inserted with the SHA-256 of a token the attacker chose.
    chosen = tokens.PREFIX + "chosen-by-the-attacker-0123456789abcdefghij"
    with ports.db.transaction() as s:
        real = dict(
            s.execute(text("SELECT * FROM api_tokens WHERE id = :id"), {"id": scm.token_id})
            .mappings()
            .one()
        )
        forged = {k: v for k, v in real.items() if k != "id"}
        forged.update(
            uuid=str(uuid.uuid4()),
            token_sha256=hashlib.sha256(chosen.encode()).hexdigest(),
            prefix=chosen[:12],
        )
        columns = ", ".join(forged)
        s.execute(
            text(f"INSERT INTO api_tokens ({columns}) VALUES (:{', :'.join(forged)})"), forged
        )
    refused = scm.client.post(
        f"/api/smime/v2/keystore/{cert_id}",
        json={"passphrase": "Attacker-chosen-pass-1"},
        headers={"Authorization": f"Bearer {chosen}"},
    )
    assert refused.status_code == 503 and "PKCS" not in refused.headers.get("content-type", "")
    # The rest as if the attacker held a real token: the cut must still show.
    got = scm.client.post(
        f"/api/smime/v2/keystore/{cert_id}",
        json={"passphrase": "Attacker-chosen-pass-1"},
        headers=scm.auth("bearer"),
    )
    assert got.status_code == 200, got.text
    release = _events(ports, chain)[-1]
    assert release.action == "key.release"
    witnessed = ports.audit_heads.read(chain)
    assert witnessed == ChainHead(chain, release.seq, release.mac)

    _cut_newest(ports, chain)
    with ports.db.engine.begin() as conn:  # SQL, as the attacker writes it
        conn.execute(delete(MailMessage).where(MailMessage.to_addr == "victim@acme.example"))
    kept = len(_events(ports, chain))

    attacker = scm.client_from(ATTACKER)
    for _ in range(2):
        failed = attacker.get(
            "/api/smime/v2", headers=scm.header_auth("robot", "wrong-password-000")
        )
        # The log cannot be written, so nothing is done: not even the refusal of a login.
        assert failed.status_code == 503, failed.text
        assert failed.json()["code"] == -503
    assert len(_events(ports, chain)) == kept  # nothing chained onto the rolled-back head
    assert ports.audit_heads.read(chain) == witnessed  # and the witness did not move

    report = audit_checks.verify_chains(ports)
    [problem] = [p for p in report.problems if p.chain == chain]
    assert problem.seq == release.seq and "missing" in problem.reason


def test_a_writer_refuses_an_altered_witnessed_event(ports, account) -> None:  # type: ignore[no-untyped-def]
    chain = _chain(ports)
    last = _record(ports)
    with ports.db.transaction() as s:
        s.execute(
            update(AuditEvent)
            .where(AuditEvent.id == last.id)
            .values(details='{"reason":"nothing to see"}')
        )
    with pytest.raises(audit.AuditChainBroken, match="differs from the audit witness"):
        _record(ports)
    assert len(_events(ports, chain)) == last.seq


def test_a_writer_refuses_a_forged_event_after_the_witness(ports, account) -> None:  # type: ignore[no-untyped-def]
    chain = _chain(ports)
    last = _record(ports)
    with ports.db.transaction() as s:
        acct = tenancy.get_account(s, "acme")
        s.add(
            AuditEvent(
                chain=chain,
                seq=last.seq + 1,
                account_id=acct.id,
                occurred_at=last.occurred_at,
                actor="operator:root@host",
                action="test.forged",
                outcome="success",
                target_type="",
                target_id="",
                ip="",
                details="{}",
                prev_mac=last.mac,
                mac="ab" * 32,
            )
        )
    with pytest.raises(audit.AuditChainBroken, match="does not continue"):
        _record(ports)


def test_a_head_row_moved_forward_is_not_believed(ports, account) -> None:  # type: ignore[no-untyped-def]
    """The head row only serializes writers: its seq and MAC never decide where the chain goes."""
    chain = _chain(ports)
    _record(ports)
    with ports.db.transaction() as s:
        s.execute(update(AuditHead).where(AuditHead.chain == chain).values(seq=999, mac="cd" * 32))
    ev = _record(ports)
    assert ev.seq == len(_events(ports, chain))
    assert audit_checks.verify_chains(ports).ok


def test_crash_between_commit_and_witness_write_recovers(ports, account, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    chain = _chain(ports)
    before = ports.audit_heads.read(chain)
    store = type(ports.audit_heads)
    real_advance = store.advance
    monkeypatch.setattr(store, "advance", lambda self, heads: None)  # the process died here
    lost = _record(ports)
    assert ports.audit_heads.read(chain) == before  # the witness is behind the database now
    monkeypatch.setattr(store, "advance", real_advance)
    after = _record(ports)
    assert after.seq == lost.seq + 1 and after.prev_mac == lost.mac
    assert ports.audit_heads.read(chain) == ChainHead(chain, after.seq, after.mac)
    assert audit_checks.verify_chains(ports).ok


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from certvault.config import Settings
    from certvault.services.audit import log as audit
    from certvault.services.kernel import tenancy
    from certvault.services.kernel.actors import Actor
    from certvault.services.kernel.ports import open_ports
    from certvault.services.kernel.witness import AuditHeadStore

    def die(self, heads):
        os.kill(os.getpid(), signal.SIGKILL)  # after the commit, before the witness moves

    AuditHeadStore.advance = die
    ports = open_ports(Settings(home=sys.argv[1], database_url=sys.argv[2] or None,
                                argon2_time_cost=1, argon2_memory_kib=8))
    actor = Actor.operator("operator:test@host")

    def work(s):
        audit.record(s, ports, account=tenancy.get_account(s, "acme"), actor=actor,
                     action="test.killed")

    ports.db.run(work)
    """
)


def test_kill_9_between_commit_and_witness_write_never_locks(ports, account, settings) -> None:  # type: ignore[no-untyped-def]
    chain = _chain(ports)
    witnessed = ports.audit_heads.read(chain)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_WRITER,
            str(settings.home),
            settings.database_url or "",
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("CERTVAULT_")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = _events(ports, chain)[-1]
    assert killed.action == "test.killed"  # committed...
    assert ports.audit_heads.read(chain) == witnessed  # ...and never witnessed
    ev = _record(ports)  # the next writer recovers
    assert ev.prev_mac == killed.mac
    assert ports.audit_heads.read(chain) == ChainHead(chain, ev.seq, ev.mac)
    assert audit_checks.verify_chains(ports).ok


@pytest.mark.parametrize("moved_to", ["null", "other"])
def test_an_event_moved_to_another_account_stays_in_its_own_log(ports, account, moved_to) -> None:  # type: ignore[no-untyped-def]
    accounts.create_account(ports, TEST_OPERATOR, "Beta Ltd", "beta", key_vault_enabled=True)
    chain = _chain(ports)
    secret = _record(ports, action="key.release")
    with ports.db.transaction() as s:
        beta_id = s.scalars(select(Account.id).where(Account.slug == "beta")).one()
        s.execute(
            update(AuditEvent)
            .where(AuditEvent.id == secret.id)
            .values(account_id=None if moved_to == "null" else beta_id)
        )
    operator = TEST_OPERATOR
    everything = audit_reading.EventFilter()
    acme = audit_reading.list_events(ports, operator, "acme", everything, limit=500).items
    beta = audit_reading.list_events(ports, operator, "beta", everything, limit=500).items
    assert secret.id in [e.id for e in acme]  # not hidden from its account
    assert secret.id not in [e.id for e in beta]  # not shown to another
    assert "key.release" in audit_reading.known_actions(ports, operator, "acme")
    [problem] = audit_checks.verify_chains(ports).problems
    assert (problem.chain, problem.seq) == (chain, secret.seq)
    assert "another account" in problem.reason


def test_row_ids_do_not_order_the_log(ports, account) -> None:  # type: ignore[no-untyped-def]
    """Paging follows the place in the chain (inside the MAC), not the row id."""
    for _ in range(5):
        _record(ports)
    operator, everything = TEST_OPERATOR, audit_reading.EventFilter()
    first = audit_reading.list_events(ports, operator, "acme", everything, limit=2)
    rest = audit_reading.list_events(
        ports, operator, "acme", everything, limit=500, cursor=first.next_cursor
    )
    seqs = [e.seq for e in first.items + rest.items]
    assert seqs == sorted(seqs) == list(range(1, len(seqs) + 1))
    newest = audit_reading.list_events(
        ports, operator, "acme", everything, limit=2, newest_first=True
    )
    older = audit_reading.list_events(
        ports, operator, "acme", everything, limit=500, cursor=newest.next_cursor, newest_first=True
    )
    assert [e.seq for e in newest.items + older.items] == sorted(seqs, reverse=True)


# --- a deliberate restore, through the real command -------------------------------------------


@pytest.fixture
def cli(backend, tmp_path):  # type: ignore[no-untyped-def]
    yield from cli_env.cli_for(backend, tmp_path)


def _older_database(cli: cli_env.Cli, chain: str, keep: int) -> None:
    """What restoring a backup taken ``keep`` events ago leaves: the events after it are gone
    and the head row is as it was then."""
    last = cli.sql("SELECT seq, mac FROM audit_events WHERE chain = ? AND seq = ?", (chain, keep))
    cli.sql("DELETE FROM audit_events WHERE chain = ? AND seq > ?", (chain, keep))
    cli.sql("UPDATE audit_heads SET seq = ?, mac = ? WHERE chain = ?", (*last[0], chain))


def test_restore_is_refused_until_acknowledged_then_named_by_verify(cli) -> None:  # type: ignore[no-untyped-def]
    cli.bootstrap()
    ports = cli.ports()
    try:
        chain = _chain(ports)
        for _ in range(4):
            _record(ports)
        witness = ports.audit_heads.read(chain)
        _older_database(cli, chain, keep=2)
        with pytest.raises(audit.AuditChainBroken, match="behind the audit witness"):
            _record(ports)

        verify = cli.run("audit", "verify")
        assert verify.returncode == 1 and "are missing (cut off)" in cli_env.text(verify)

        refused = cli.run("audit", "acknowledge-restore", "--account", "acme", "--reason", " ")
        assert refused.returncode != 0
        done = cli.run(
            "audit", "acknowledge-restore", "--account", "acme", "--reason", "restored backup 7"
        )
        assert done.returncode == 0, cli_env.text(done)
        again = cli.run(
            "audit", "acknowledge-restore", "--account", "acme", "--reason", "restored backup 7"
        )
        assert again.returncode != 0 and "nothing was lost" in cli_env.text(again)

        ack = _events(ports, chain)[-1]
        assert ack.action == audit.RESTORE_ACKNOWLEDGED
        assert ack.seq == witness.seq + 1 and json.loads(ack.details)["after_seq"] == 2
        ev = _record(ports)  # the log goes on
        assert ev.seq == ack.seq + 1

        verify = cli.run("audit", "verify")
        shown = cli_env.text(verify)
        assert verify.returncode == 0, shown
        assert f"events 3..{witness.seq} seen by the witness were acknowledged" in shown
    finally:
        ports.close()


def test_a_restore_acknowledgement_cannot_excuse_an_altered_event(cli) -> None:  # type: ignore[no-untyped-def]
    cli.bootstrap()
    ports = cli.ports()
    try:
        chain = _chain(ports)
        for _ in range(3):
            _record(ports)
        _older_database(cli, chain, keep=2)
        cli.sql(
            "UPDATE audit_events SET actor = 'someone else' WHERE chain = ? AND seq = 1", (chain,)
        )
        done = cli.run(
            "audit", "acknowledge-restore", "--account", "acme", "--reason", "restored backup"
        )
        assert done.returncode != 0 and "does not repair it" in cli_env.text(done)
        with pytest.raises(CertvaultError):
            _record(ports)
    finally:
        ports.close()


def test_a_plain_event_after_a_gap_is_not_an_acknowledgement(ports, account) -> None:  # type: ignore[no-untyped-def]
    """Only a MAC-proven restore acknowledgement may follow a gap: an event written before the
    gap was made has a good MAC of its own and is still reported."""
    chain = _chain(ports)
    for _ in range(3):
        _record(ports)
    with ports.db.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.seq == 2))
        count = s.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.chain == chain)
        )
    assert count == 3
    [problem] = audit_checks.verify_chains(ports).problems
    assert problem.seq == 3 and "event 2 is missing" in problem.reason


_RESTORED_TABLES = ("accounts", "admins", "api_tokens", "key_vault_settings")


def _snapshot(cli: cli_env.Cli) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    """The grant rows as a backup holds them: every column, MAC and generation included."""
    return {table: cli.sql(f"SELECT * FROM {table} ORDER BY uuid") for table in _RESTORED_TABLES}


def _columns(cli: cli_env.Cli, table: str) -> list[str]:
    if cli.pg_dsn is None:
        return [row[1] for row in cli.sql(f"PRAGMA table_info({table})")]
    return [
        row[0]
        for row in cli.sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position",
            (table,),
        )
    ]


def _put_back(cli: cli_env.Cli, snapshot: dict[str, list[tuple]]) -> None:  # type: ignore[type-arg]
    for table, rows in snapshot.items():
        names = _columns(cli, table)
        for row in rows:
            values = dict(zip(names, row, strict=True))
            sets = ", ".join(f"{name} = ?" for name in names if name != "uuid")
            params = [v for name, v in values.items() if name != "uuid"]
            cli.sql(f"UPDATE {table} SET {sets} WHERE uuid = ?", (*params, values["uuid"]))


def test_acknowledged_restore_takes_the_restored_grant_rows(cli) -> None:  # type: ignore[no-untyped-def]
    """A backup taken before a grant was taken away holds grant rows older than the generation
    outside: refused as replays until the operator acknowledges the restore, then usable again."""
    from certvault.services.access import admins, tokens

    cli.bootstrap()
    ports = cli.ports()
    try:
        chain = _chain(ports)
        admins.create_admin(ports, TEST_OPERATOR, "acme", "robot", password="robot-password-0123")
        kept = tokens.create_token(ports, TEST_OPERATOR, "acme", "robot")
        other = tokens.create_token(ports, TEST_OPERATOR, "acme", "robot")
        backup_seq = len(_events(ports, chain))
        backup = _snapshot(cli)

        tokens.revoke_token(ports, TEST_OPERATOR, "acme", other.token_id)  # takes a grant away
        _older_database(cli, chain, keep=backup_seq)
        _put_back(cli, backup)
        ports.close()
        ports = cli.ports()  # a fresh process: nothing of the newer rows in memory
        with pytest.raises(CertvaultError):
            tokens.authenticate(ports, kept.token)

        done = cli.run(
            "audit", "acknowledge-restore", "--account", "acme", "--reason", "restored backup 9"
        )
        assert done.returncode == 0, cli_env.text(done)
        actor, account = tokens.authenticate(ports, kept.token)
        assert account.slug == "acme" and actor.name.startswith("admin:robot")
        verify = cli.run("verify")
        assert verify.returncode == 0, cli_env.text(verify)
        assert cli.run("audit", "verify").returncode == 0
    finally:
        ports.close()
