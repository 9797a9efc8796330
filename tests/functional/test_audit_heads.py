"""The head outside the database moves only when the outermost transaction commits."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, text

from certvault.db.models import AuditEvent
from certvault.services.audit import checks as audit_checks
from certvault.services.audit import log as audit
from certvault.services.kernel.tenancy import get_account


def _head(ports, slug="acme"):  # type: ignore[no-untyped-def]
    with ports.db.read() as s:
        return ports.audit_heads.read(get_account(s, slug).uuid)


def test_released_savepoints_do_not_move_the_head_before_commit(ports, operator, account):
    before = _head(ports)
    with pytest.raises(RuntimeError), ports.db.transaction() as s:
        acct = get_account(s, "acme")
        for _ in range(3):
            with s.begin_nested():
                audit.record(s, ports, account=acct, actor=operator, action="test.event")
        assert _head(ports) == before  # savepoints released, nothing committed yet
        raise RuntimeError("the outer transaction fails")
    assert _head(ports) == before
    assert audit_checks.verify_chains(ports).ok


def test_commit_moves_the_head_once_to_the_newest_event(ports, operator, account):
    before = _head(ports)
    with ports.db.transaction() as s:
        acct = get_account(s, "acme")
        for _ in range(3):
            with s.begin_nested():
                ev = audit.record(s, ports, account=acct, actor=operator, action="test.event")
    after = _head(ports)
    assert after.seq == before.seq + 3 and after.mac == ev.mac
    assert audit_checks.verify_chains(ports).ok


def _waiting_for_a_lock(ports) -> bool:  # type: ignore[no-untyped-def]
    with ports.db.engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar())


def test_a_writer_that_waited_for_the_chain_appends_after_the_events_it_waited_for(
    ports, operator, account
):
    """Two transactions append to one chain at once. The second asks for the chain while the
    first holds it; on PostgreSQL what it read with the lock it waited for is older than the
    first's commit, and is read again: both events land, one after the other, and the chain
    verifies."""
    failures: list[BaseException] = []

    def second() -> None:
        try:
            with ports.db.transaction() as s:
                acct = get_account(s, "acme")
                audit.record(s, ports, account=acct, actor=operator, action="test.second")
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    with ports.db.transaction() as s:
        acct = get_account(s, "acme")
        first = audit.record(s, ports, account=acct, actor=operator, action="test.first")
        writer = threading.Thread(target=second)
        writer.start()
        if ports.db.is_sqlite:
            time.sleep(0.3)  # it waits for the write lock at BEGIN
        else:
            deadline = time.monotonic() + 30
            while not _waiting_for_a_lock(ports):
                assert time.monotonic() < deadline, "the second writer never waited for the chain"
                time.sleep(0.01)
    writer.join(30)
    assert not failures, failures
    with ports.db.read() as s:
        events = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.chain == first.chain, AuditEvent.seq >= first.seq)
            .order_by(AuditEvent.seq)
        ).all()
    assert [(e.seq, e.action) for e in events] == [
        (first.seq, "test.first"),
        (first.seq + 1, "test.second"),
    ]
    assert _head(ports).seq == first.seq + 1
    assert audit_checks.verify_chains(ports).ok
