"""A chain lost whole in a restore (an account made after the backup): the witness keeps its
head, the database has nothing of it. The operator's acknowledgement on the installation chain
lets `certvault audit verify` name it instead of failing; only a MAC-proven one does."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import update

from certvault.db.models import AuditEvent
from certvault.errors import CertvaultError
from certvault.services.audit import checks as audit_checks
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.witness import ChainHead
from tests.conftest import TEST_OPERATOR


def test_a_lost_chain_is_named_once_acknowledged_and_only_then(ports, account) -> None:  # type: ignore[no-untyped-def]
    lost = str(uuid.uuid4())
    ports.audit_heads.advance([ChainHead(lost, 3, "ab" * 32)])
    [problem] = audit_checks.verify_chains(ports).problems
    assert problem.chain == lost and "1..3 are missing" in problem.reason

    with pytest.raises(CertvaultError) as caught:  # an account's chain the database holds
        chain = audit_checks.chain_named(ports, account)
        audit_checks.acknowledge_lost_chain(ports, TEST_OPERATOR, chain, "restored")
    assert caught.value.code == "conflict"
    with pytest.raises(CertvaultError) as caught:
        audit_checks.acknowledge_lost_chain(ports, TEST_OPERATOR, lost, "   ")
    assert caught.value.code == "invalid_input"
    admin = Actor(name="admin:someone", kind="admin")
    with pytest.raises(CertvaultError) as caught:
        audit_checks.acknowledge_lost_chain(ports, admin, lost, "restored")
    assert caught.value.code == "forbidden"
    assert not audit_checks.verify_chains(ports).ok  # nothing of that was recorded

    event = audit_checks.acknowledge_lost_chain(ports, TEST_OPERATOR, lost, "restored backup 3")
    report = audit_checks.verify_chains(ports)
    assert report.ok, report.problems
    [note] = [n for n in report.acknowledged if n.chain == lost]
    assert "lost with their account in a database restore" in note.reason

    # The acknowledgement is bound by its MAC: edited to cover more, it excuses nothing.
    assert '"witness_seq":3' in event.details
    with ports.db.transaction() as session:
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.id == event.id)
            .values(details=event.details.replace('"witness_seq":3', '"witness_seq":9'))
        )
    ports.audit_heads.advance([ChainHead(lost, 9, "cd" * 32)])
    chains = {p.chain for p in audit_checks.verify_chains(ports).problems}
    assert lost in chains and "installation" in chains
