"""Verifying the audit chains: every event link by link, the witness outside the database, the
account each event is filed under; and the operator's acknowledgement of a deliberate restore."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from certvault.db.models import Account, AuditEvent, AuditHead
from certvault.errors import Conflict, Forbidden, InvalidInput, NotFound
from certvault.services.audit.log import (
    GENESIS,
    INSTALLATION_CHAIN,
    LOCKED,
    RESTORE_ACKNOWLEDGED,
    AuditChainBroken,
    acknowledged_gap,
    append_event,
    audit_key,
    chain_of,
    continues,
    event_mac,
    record,
)
from certvault.services.audit.reading import require_log_reader
from certvault.services.kernel import seals
from certvault.services.kernel.actors import Actor, Scope
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.kernel.witness import ChainHead

CHAIN_LOST = "audit.chain_lost_acknowledged"


@dataclass(frozen=True)
class AuditProblem:
    chain: str
    seq: int
    event_id: int | None
    reason: str


@dataclass
class AuditReport:
    chains: int = 0
    events: int = 0
    problems: list[AuditProblem] = field(default_factory=list)
    # Restores an operator acknowledged: not problems, but every verification names them.
    acknowledged: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _account_ids(session: Session) -> dict[str, int]:
    return {uuid: id_ for uuid, id_ in session.execute(select(Account.uuid, Account.id))}


def verify_chains(ports: Ports) -> AuditReport:
    """Check every chain; report the first broken event of each, and acknowledged restores."""
    report = AuditReport()
    with ports.db.read() as session:
        key = audit_key(session, ports)
        owners = _account_ids(session)
        chains = set(session.scalars(select(AuditEvent.chain).distinct()))
        heads = {h.chain: h for h in ports.audit_heads.all()}
        lost = _lost_chains(session, key)
        for chain in sorted(chains | set(heads)):
            report.chains += 1
            check = _verify_chain(session, key, chain, heads.get(chain), owners)
            report.events += check.events
            report.acknowledged.extend(check.acknowledged)
            head = heads.get(chain)
            if check.problem and not check.events and chain not in owners and head:
                if lost.get(chain) == (head.seq, head.mac):
                    report.acknowledged.append(
                        AuditProblem(
                            chain,
                            head.seq,
                            None,
                            f"events 1..{head.seq} seen by the witness were acknowledged as "
                            "lost with their account in a database restore",
                        )
                    )
                    continue
            if check.problem:
                report.problems.append(check.problem)
    return report


def _lost_chains(session: Session, key: bytes) -> dict[str, tuple[int, str]]:
    """Chains the operator acknowledged as lost whole in a restore (an account made after the
    backup): chain -> the witness head it had, from MAC-proven installation events."""
    found: dict[str, tuple[int, str]] = {}
    events = session.scalars(
        select(AuditEvent).where(
            AuditEvent.chain == INSTALLATION_CHAIN, AuditEvent.action == CHAIN_LOST
        )
    )
    for ev in events:
        if not hmac.compare_digest(ev.mac, event_mac(key, ev)):
            continue  # the installation chain's own check reports it
        try:
            details = json.loads(ev.details)
            found[ev.target_id] = (int(details["witness_seq"]), str(details["witness_mac"]))
        except (ValueError, KeyError, TypeError):
            continue
    return found


@dataclass(frozen=True)
class _Walk:
    problem: AuditProblem | None
    events: int
    tip: ChainHead
    acknowledged: list[AuditProblem]
    tip_id: int | None = None  # the row of the newest event


def _walk(session: Session, key: bytes, chain: str, owner: int | None | bool) -> _Walk:
    """The chain from its first event, link by link. ``owner`` is the account id every event
    must be filed under (None for the installation chain; False when no account has this chain).
    """
    tip, count, tip_id = ChainHead(chain, 0, GENESIS), 0, None
    acknowledged: list[AuditProblem] = []
    rows = session.execute(
        select(AuditEvent)
        .where(AuditEvent.chain == chain)
        .order_by(AuditEvent.seq, AuditEvent.id)
        .execution_options(yield_per=1000)
    ).scalars()

    def broken(ev: AuditEvent, reason: str) -> _Walk:
        return _Walk(AuditProblem(chain, ev.seq, ev.id, reason), count, tip, acknowledged)

    for ev in rows:
        count += 1
        if owner is False or ev.account_id != owner:
            # Readers find an account's events by chain; the account column must agree.
            return broken(ev, "event is filed under another account than its chain's")
        if ev.seq <= tip.seq:
            return broken(ev, "event appears twice or out of order")
        if not hmac.compare_digest(ev.mac, event_mac(key, ev)):
            return broken(ev, "MAC does not match: the event was altered")
        if not continues(key, tip, ev):
            if ev.seq > tip.seq + 1:
                return broken(ev, f"event {tip.seq + 1} is missing")
            return broken(ev, "chain broken: previous MAC does not match")
        gap = acknowledged_gap(ev) if ev.seq > tip.seq + 1 else None
        if gap is not None:
            acknowledged.append(
                AuditProblem(
                    chain,
                    ev.seq,
                    ev.id,
                    f"events {gap[0] + 1}..{gap[1]} seen by the witness were acknowledged as "
                    "lost in a database restore",
                )
            )
        tip, tip_id = ChainHead(chain, ev.seq, ev.mac), ev.id
    return _Walk(None, count, tip, acknowledged, tip_id)


def _verify_chain(
    session: Session,
    key: bytes,
    chain: str,
    head: ChainHead | None,
    owners: dict[str, int],
) -> _Walk:
    owner: int | None | bool = None if chain == INSTALLATION_CHAIN else owners.get(chain, False)
    walk = _walk(session, key, chain, owner)
    if walk.problem is not None:
        return walk
    last = walk.tip
    problem: AuditProblem | None = None
    if head is None:
        if last.seq:
            problem = AuditProblem(
                chain,
                last.seq,
                walk.tip_id,
                "no chain head is kept outside the database for this chain",
            )
    elif head.seq > last.seq:
        problem = AuditProblem(
            chain, last.seq + 1, None, f"events {last.seq + 1}..{head.seq} are missing (cut off)"
        )
    else:
        at_head = session.scalars(
            select(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.seq == head.seq)
        ).first()
        if at_head is None or not hmac.compare_digest(at_head.mac, head.mac):
            problem = AuditProblem(
                chain,
                head.seq,
                at_head.id if at_head else None,
                "event differs from the head kept outside the database",
            )
    return _Walk(problem, walk.events, walk.tip, walk.acknowledged, walk.tip_id)


def database_tips(ports: Ports) -> tuple[dict[str, ChainHead], list[AuditProblem]]:
    """Each chain's newest event as the database alone proves it, link by link, and the chains
    that do not verify: what a restore compares with the witness outside."""
    tips: dict[str, ChainHead] = {}
    problems: list[AuditProblem] = []
    with ports.db.read() as session:
        key = audit_key(session, ports)
        owners = _account_ids(session)
        chains = set(session.scalars(select(AuditEvent.chain).distinct()))
        chains |= set(session.scalars(select(AuditHead.chain)))
        for chain in sorted(chains):
            owner: int | None | bool = (
                None if chain == INSTALLATION_CHAIN else owners.get(chain, False)
            )
            walk = _walk(session, key, chain, owner)
            if walk.problem is not None:
                problems.append(walk.problem)
            else:
                tips[chain] = walk.tip
    return tips, problems


def chain_named(ports: Ports, account_slug: str | None) -> str:
    """The chain of an account (or, for None, the installation's), found without reading the
    account's row: after a restore it may be older than the grant generation outside."""
    if account_slug is None:
        return INSTALLATION_CHAIN
    with ports.db.read() as session:
        chain = session.scalar(select(Account.uuid).where(Account.slug == account_slug))
    if chain is None:
        raise NotFound("Account not found.")
    return chain


def acknowledge_restore(ports: Ports, actor: Actor, chain: str, reason: str) -> AuditEvent:
    """After a deliberate restore of an older database: continue the chain past the events the
    witness saw and the database lost, with an event saying so (the operator's, MAC-bound), and
    take the account's restored grant rows (sealed by certvault, older than its grant generation)
    by sealing them again at the next generation.

    Refused when the database chain is itself broken (a restore does not excuse altered events)
    or when it still holds the witness (nothing was lost).
    """
    if not actor.is_operator:
        raise Forbidden("Only the operator acknowledges a database restore.")
    reason = reason.strip()
    if not reason:
        raise InvalidInput("Say why the database was restored (--reason).")

    def work(session: Session) -> AuditEvent:
        if chain != INSTALLATION_CHAIN:  # the chain of an account is named by its uuid
            seals.accept_restored_grants(session, ports, chain)
        key = audit_key(session, ports)
        query = select(AuditHead).where(AuditHead.chain == chain).with_for_update()
        head = session.scalars(query).first()
        witness = ports.audit_heads.read(chain)
        if head is None or witness is None:
            raise NotFound("No such audit chain.")
        owners = _account_ids(session)
        owner: int | None | bool = None if chain == INSTALLATION_CHAIN else owners.get(chain, False)
        walk = _walk(session, key, chain, owner)
        if walk.problem is not None:
            raise Conflict(
                f"The database chain is broken at event {walk.problem.seq} "
                f"({walk.problem.reason}); acknowledging a restore does not repair it."
            )
        at = session.scalars(
            select(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.seq == witness.seq)
        ).first()
        if at is not None and hmac.compare_digest(at.mac, witness.mac):
            raise Conflict("The database holds the audit witness: nothing was lost.")
        account = session.get(Account, owner) if isinstance(owner, int) and owner else None
        head.seq, head.mac = walk.tip.seq, walk.tip.mac
        session.info.setdefault(LOCKED, {})[chain] = head
        if account is not None:
            # The restored grant rows are older than the grant generation outside: take them.
            seals.bump(session, ports, account.id)
        return append_event(
            session,
            ports,
            key,
            head,
            seq=max(walk.tip.seq, witness.seq) + 1,
            account=account,
            actor=actor,
            action=RESTORE_ACKNOWLEDGED,
            outcome="success",
            target_type="audit_chain",
            target_id=chain,
            details={
                "after_seq": walk.tip.seq,
                "witness_seq": witness.seq,
                "witness_mac": witness.mac,
                "reason": reason[:500],
            },
        )

    return ports.db.run(work)


def acknowledge_lost_chain(ports: Ports, actor: Actor, chain: str, reason: str) -> AuditEvent:
    """After a restore of a backup older than an account: the witness keeps the chain of an
    account the database no longer has. The operator's event on the installation chain names
    the chain and the witness head it loses, and `certvault audit verify` names it from then on.
    """
    if not actor.is_operator:
        raise Forbidden("Only the operator acknowledges a database restore.")
    reason = reason.strip()
    if not reason:
        raise InvalidInput("Say why the database was restored (--reason).")
    witness = ports.audit_heads.read(chain) if chain != INSTALLATION_CHAIN else None
    if witness is None:
        raise NotFound("No such audit chain.")

    def work(session: Session) -> AuditEvent:
        held = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.chain == chain)
        )
        if held or session.scalar(select(Account.id).where(Account.uuid == chain)) is not None:
            raise Conflict("The database holds this chain: it was not lost whole.")
        return record(
            session,
            ports,
            account=None,
            actor=actor,
            action=CHAIN_LOST,
            target_type="audit_chain",
            target_id=chain,
            details={
                "witness_seq": witness.seq,
                "witness_mac": witness.mac,
                "reason": reason[:500],
            },
        )

    return ports.db.run(work)


@dataclass(frozen=True)
class ChainCheck:
    """One account's chain, checked: how many events, and the first broken one if any."""

    events: int
    problem: AuditProblem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_account_chain(ports: Ports, actor: Actor, account_slug: str) -> ChainCheck:
    """Check the account's own chain as `certvault audit verify` does (with the head kept outside
    the database); the check is audited as ``audit.verify`` with its result."""
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        require_log_reader(actor, account)
        account_id, chain = account.id, chain_of(account)
    # The head outside is read before the rows: it is written after its commit, so the rows
    # read next hold it at least (writers are not held up while a long chain is read).
    head = ports.audit_heads.read(chain)
    with ports.db.read() as session:
        walk = _verify_chain(session, audit_key(session, ports), chain, head, {chain: account_id})
    problem, count = walk.problem, walk.events
    details: dict[str, Any] = {"events": count, "intact": problem is None}
    if problem is not None:
        details.update(seq=problem.seq, event_id=problem.event_id, reason=problem.reason)

    def work(session: Session) -> None:
        record(
            session,
            ports,
            account=session.get(Account, account_id),
            actor=actor,
            action="audit.verify",
            target_type="audit_chain",
            target_id=chain,
            details=details,
        )

    try:
        ports.db.run(work)
    except AuditChainBroken:
        # The check found what stops the log; it is shown even though it cannot be recorded.
        if problem is None:
            raise
    return ChainCheck(count, problem)
