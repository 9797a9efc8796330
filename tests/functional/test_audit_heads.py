"""The head outside the database moves only when the outermost transaction commits."""

from __future__ import annotations

import pytest

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
