"""The audit log: one MAC chain per account and one for the installation (DESIGN.md §5.3).

Each event's MAC is keyed by the audit service key, which only the master-key provider can open,
so whoever can write the table cannot forge or recompute events. The newest head of each chain is
also written outside the database after commit (the witness, kernel/witness.py), and a new event
continues from the witness, never from a database row alone (DESIGN.md §5.10): before a writer
appends, it checks that the database chain still holds the witnessed event and that every event
after it extends it. A database that is behind the witness or diverges from it stops the log
(:class:`AuditChainBroken`) until an operator acknowledges a deliberate restore.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from certvault.db.models import Account, AuditEvent, AuditHead, ServiceKey
from certvault.errors import (
    CertvaultError,
    ConfigurationError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
)
from certvault.services.kernel import keyring
from certvault.services.kernel.actors import Actor, Role, Scope
from certvault.services.kernel.paging import Page, check_limit, decode_cursor, encode_cursor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.kernel.witness import ChainHead

INSTALLATION_CHAIN = "installation"
RESTORE_ACKNOWLEDGED = "audit.restore_acknowledged"
GENESIS = "0" * 64
AUDIT_KEY_PURPOSE = "audit-mac"
_PENDING = "certvault_audit_heads"
_LOCKED = "certvault_locked_heads"
_HOOKED = "certvault_audit_hooked"


class AuditChainBroken(CertvaultError):
    """The audit log cannot be written: the database no longer holds what the audit witness
    outside it has seen (an older or altered database). Nothing is done until an operator runs
    `certvault audit verify` and, after a deliberate restore, `certvault audit
    acknowledge-restore`."""

    code = "audit_unavailable"
    status = 503


def canonical_time(ports: Ports) -> str:
    return ports.clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _event_bytes(e: AuditEvent) -> bytes:
    # Every stored field except the row id (ids change on restore; chain and seq do not).
    return canonical_json(
        {
            "v": 1,
            "chain": e.chain,
            "seq": e.seq,
            "at": e.occurred_at,
            "actor": e.actor,
            "action": e.action,
            "outcome": e.outcome,
            "target_type": e.target_type,
            "target_id": e.target_id,
            "ip": e.ip,
            "details": e.details,
            "prev": e.prev_mac,
        }
    ).encode()


def create_audit_key(session: Session, ports: Ports) -> None:
    if session.scalar(select(ServiceKey.id).where(ServiceKey.purpose == AUDIT_KEY_PURPOSE)) is None:
        keyring.create_service_key(
            session, ports, purpose=AUDIT_KEY_PURPOSE, material=os.urandom(32)
        )


def _audit_key(session: Session, ports: Ports) -> bytes:
    key = ports.cache.get(AUDIT_KEY_PURPOSE)
    if key is None:
        row = session.scalars(
            select(ServiceKey).where(ServiceKey.purpose == AUDIT_KEY_PURPOSE)
        ).first()
        if row is None:
            raise ConfigurationError("The audit key is missing; run `certvault init`.")
        key = keyring.open_service_key(ports, row)
        ports.cache[AUDIT_KEY_PURPOSE] = key
    return key


def _mac(key: bytes, e: AuditEvent) -> str:
    return hmac.new(key, _event_bytes(e), hashlib.sha256).hexdigest()


def chain_of(account: Account | None) -> str:
    return account.uuid if account is not None else INSTALLATION_CHAIN


def ensure_chain(session: Session, chain: str) -> None:
    if session.get(AuditHead, chain) is None:
        session.add(AuditHead(chain=chain, seq=0, mac=GENESIS))
        session.flush()


def _locked_head(session: Session, ports: Ports, key: bytes, chain: str) -> AuditHead:
    """The chain's head row, locked for the rest of the transaction and set to the verified tip.

    The row lock serializes writers of one chain (on SQLite the transaction's write lock does).
    It is taken once per transaction: a bulk import appends many events under the same lock. The
    row's own seq and MAC are not believed: the tip comes from the witness and the events after it.
    """
    locked: dict[str, AuditHead] = session.info.setdefault(_LOCKED, {})
    head = locked.get(chain)
    if head is None:
        query = select(AuditHead).where(AuditHead.chain == chain).with_for_update()
        head = session.scalars(query).first()
        if head is None:
            ensure_chain(session, chain)
            head = session.scalars(query).one()
        tip = _verified_tip(session, ports, key, chain)
        if (head.seq, head.mac) != (tip.seq, tip.mac):
            head.seq, head.mac = tip.seq, tip.mac
        locked[chain] = head
    return head


def _acknowledged_gap(ev: AuditEvent) -> tuple[int, int] | None:
    """For an operator's restore acknowledgement: (last seq kept, witness seq it replaced)."""
    if ev.action != RESTORE_ACKNOWLEDGED:
        return None
    try:
        details = json.loads(ev.details)
        return int(details["after_seq"]), int(details["witness_seq"])
    except (ValueError, KeyError, TypeError):
        return None


def _continues(key: bytes, tip: ChainHead, ev: AuditEvent) -> bool:
    """Whether ``ev`` is the next link after ``tip``: the next seq (or, for a MAC-proven restore
    acknowledgement that names ``tip``, a seq past the events the restore lost), the previous
    MAC, and its own MAC."""
    if not (
        hmac.compare_digest(ev.prev_mac, tip.mac) and hmac.compare_digest(ev.mac, _mac(key, ev))
    ):
        return False
    if ev.seq == tip.seq + 1:
        return True
    gap = _acknowledged_gap(ev)
    return gap is not None and gap[0] == tip.seq and ev.seq == max(gap) + 1


def _verified_tip(session: Session, ports: Ports, key: bytes, chain: str) -> ChainHead:
    """The newest event of the chain, proven to contain the witness (called under the lock).

    Events after the witness must extend it link by link with valid MACs: they are the trace of
    a crash between a commit and its witness write, so the witness is moved up to them (recovery,
    not tampering). A missing or different witnessed event, or a bad link after it, refuses.
    """
    witness = ports.audit_heads.read(chain) or ChainHead(chain, 0, GENESIS)
    if witness.seq > 0:
        at = session.scalars(
            select(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.seq == witness.seq)
        ).first()
        if at is None:
            raise AuditChainBroken(
                f"The audit log of chain {chain} cannot be written: the database is behind the "
                f"audit witness (event {witness.seq} is missing). Run `certvault audit verify`."
            )
        if not (
            hmac.compare_digest(at.mac, witness.mac) and hmac.compare_digest(at.mac, _mac(key, at))
        ):
            raise AuditChainBroken(
                f"The audit log of chain {chain} cannot be written: event {witness.seq} in the "
                "database differs from the audit witness. Run `certvault audit verify`."
            )
    tip = witness
    after = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.chain == chain, AuditEvent.seq > witness.seq)
        .order_by(AuditEvent.seq)
    )
    for ev in after:
        if not _continues(key, tip, ev):
            raise AuditChainBroken(
                f"The audit log of chain {chain} cannot be written: event {ev.seq} does not "
                f"continue the audited chain. Run `certvault audit verify`."
            )
        tip = ChainHead(chain, ev.seq, ev.mac)
    if tip.seq > witness.seq:
        ports.audit_heads.advance([tip])  # those events are committed: their writer was cut off
    return tip


def record(
    session: Session,
    ports: Ports,
    *,
    account: Account | None,
    actor: Actor,
    action: str,
    outcome: str = "success",
    target_type: str = "",
    target_id: str | int = "",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append an event to the account's chain, inside the caller's transaction.

    ``details`` must never hold secrets: callers pass ids, fingerprints, reasons and counts.
    """
    key = _audit_key(session, ports)
    chain = chain_of(account)
    head = _locked_head(session, ports, key, chain)
    return _append(
        session,
        ports,
        key,
        head,
        seq=head.seq + 1,
        account=account,
        actor=actor,
        action=action,
        outcome=outcome,
        target_type=target_type,
        target_id=target_id,
        details=details,
    )


def _append(
    session: Session,
    ports: Ports,
    key: bytes,
    head: AuditHead,
    *,
    seq: int,
    account: Account | None,
    actor: Actor,
    action: str,
    outcome: str,
    target_type: str,
    target_id: str | int,
    details: Mapping[str, Any] | None,
) -> AuditEvent:
    chain = head.chain
    ev = AuditEvent(
        chain=chain,
        seq=seq,
        account_id=account.id if account else None,
        occurred_at=canonical_time(ports),
        actor=actor.name[:320],
        action=action,
        outcome=outcome,
        target_type=target_type,
        target_id=str(target_id),
        ip=actor.ip[:64],
        details=canonical_json(dict(details or {})),
        prev_mac=head.mac or GENESIS,
        mac="",
    )
    ev.mac = _mac(key, ev)
    head.seq, head.mac = ev.seq, ev.mac
    session.add(ev)
    session.flush()
    _remember_head(session, ports, ChainHead(chain, ev.seq, ev.mac))
    return ev


def _remember_head(session: Session, ports: Ports, head: ChainHead) -> None:
    """Write the head outside the database once the outermost transaction has committed."""
    pending: list[ChainHead] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        if not session.info.get(_HOOKED):
            session.info[_HOOKED] = True

            def _after_commit(s: Session) -> None:
                if s.in_nested_transaction():  # a savepoint was released; the transaction goes on
                    return
                ports.audit_heads.advance(s.info.pop(_PENDING, []))

            def _after_end(s: Session, transaction: SessionTransaction) -> None:
                if transaction.parent is None:  # not a savepoint: forget this transaction's state
                    s.info.pop(_PENDING, None)
                    s.info.pop(_LOCKED, None)

            event.listen(session, "after_commit", _after_commit)
            event.listen(session, "after_transaction_end", _after_end)
    pending.append(head)


def record_refusal(
    ports: Ports,
    *,
    account_id: int | None,
    actor: Actor,
    action: str,
    reason_code: str,
    target_type: str = "",
    target_id: str | int = "",
    details: Mapping[str, Any] | None = None,
) -> None:
    """Audit a refused attempt in its own transaction, after the refused work was rolled back."""

    def work(session: Session) -> None:
        account = session.get(Account, account_id) if account_id is not None else None
        record(
            session,
            ports,
            account=account,
            actor=actor,
            action=action,
            outcome="refused",
            target_type=target_type,
            target_id=target_id,
            details={**(details or {}), "reason": reason_code},
        )

    ports.db.run(work)


@contextmanager
def refusals_audited(
    ports: Ports,
    *,
    account_id: int | None,
    actor: Actor,
    action: str,
    target_type: str = "",
    target_id: str | int = "",
    details: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """Audit any certvault error raised in the block as a refusal, then re-raise it."""
    try:
        yield
    except CertvaultError as exc:
        record_refusal(
            ports,
            account_id=account_id,
            actor=actor,
            action=action,
            reason_code=exc.code,
            target_type=target_type,
            target_id=target_id,
            details=details,
        )
        raise


# --- verification -------------------------------------------------------------------------------


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
        key = _audit_key(session, ports)
        owners = _account_ids(session)
        chains = set(session.scalars(select(AuditEvent.chain).distinct()))
        heads = {h.chain: h for h in ports.audit_heads.all()}
        for chain in sorted(chains | set(heads)):
            report.chains += 1
            check = _verify_chain(session, key, chain, heads.get(chain), owners)
            report.events += check.events
            report.acknowledged.extend(check.acknowledged)
            if check.problem:
                report.problems.append(check.problem)
    return report


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
        if not hmac.compare_digest(ev.mac, _mac(key, ev)):
            return broken(ev, "MAC does not match: the event was altered")
        if not _continues(key, tip, ev):
            if ev.seq > tip.seq + 1:
                return broken(ev, f"event {tip.seq + 1} is missing")
            return broken(ev, "chain broken: previous MAC does not match")
        gap = _acknowledged_gap(ev) if ev.seq > tip.seq + 1 else None
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


def acknowledge_restore(ports: Ports, actor: Actor, chain: str, reason: str) -> AuditEvent:
    """After a deliberate restore of an older database: continue the chain past the events the
    witness saw and the database lost, with an event saying so (the operator's, MAC-bound).

    Refused when the database chain is itself broken (a restore does not excuse altered events)
    or when it still holds the witness (nothing was lost).
    """
    if not actor.is_operator:
        raise Forbidden("Only the operator acknowledges a database restore.")
    reason = reason.strip()
    if not reason:
        raise InvalidInput("Say why the database was restored (--reason).")

    def work(session: Session) -> AuditEvent:
        key = _audit_key(session, ports)
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
        session.info.setdefault(_LOCKED, {})[chain] = head
        return _append(
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


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    outcome: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    action_prefix: str | None = None  # "key." finds key.release, key.archive...
    actor_prefix: str | None = None  # "admin:boss" finds "admin:boss (token 3)" too


def _canonical(moment: datetime) -> str:
    # Naive times are taken as UTC; stored times are canonical text, which sorts like time.
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:
        return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except OverflowError:  # within hours of year 1 or 9999: before or after every event
        return "0" if moment.year == 1 else "~"  # "~" sorts after every digit


def _require_log_reader(actor: Actor, account: Account) -> None:
    actor.require_visible(account.id, None, "Account")
    if not actor.is_operator and actor.role != Role.ACCOUNT:
        raise Forbidden("Only account administrators may read the audit log.")


def list_events(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    f: EventFilter,
    *,
    limit: int = 50,
    cursor: str | None = None,
    newest_first: bool = False,
) -> Page[AuditEvent]:
    """The account's own events, oldest first (or newest first). Only account administrators
    (and operators) read the log: it names every organization's persons and certificates.

    Events are found by their chain and ordered by their place in it, both inside the MAC: an
    edited account id or row id can neither hide an event nor show it to another account."""
    actor.require_scope(Scope.READ)
    limit = check_limit(limit)
    after = decode_cursor(cursor)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        _require_log_reader(actor, account)
        query = select(AuditEvent).where(AuditEvent.chain == chain_of(account))
        if newest_first:
            query = query.where(AuditEvent.seq < after) if after else query
        else:
            query = query.where(AuditEvent.seq > after)
        for column, value in (
            (AuditEvent.action, f.action),
            (AuditEvent.target_type, f.target_type),
            (AuditEvent.target_id, f.target_id),
            (AuditEvent.outcome, f.outcome),
        ):
            if value is not None:
                query = query.where(column == value)
        for column, prefix in (
            (AuditEvent.action, f.action_prefix),
            (AuditEvent.actor, f.actor_prefix),
        ):
            if prefix:
                query = query.where(column.startswith(prefix, autoescape=True))
        if f.since is not None:
            query = query.where(AuditEvent.occurred_at >= _canonical(f.since))
        if f.until is not None:
            query = query.where(AuditEvent.occurred_at < _canonical(f.until))
        order = AuditEvent.seq.desc() if newest_first else AuditEvent.seq
        rows = list(session.scalars(query.order_by(order).limit(limit + 1)))
        more = len(rows) > limit
        items = rows[:limit]
        return Page(items, encode_cursor(items[-1].seq) if more and items else None)


def known_actions(ports: Ports, actor: Actor, account_slug: str) -> list[str]:
    """The actions the account's log holds, for a filter's choices."""
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        _require_log_reader(actor, account)
        query = select(AuditEvent.action).where(AuditEvent.chain == chain_of(account)).distinct()
        return sorted(session.scalars(query))


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
        _require_log_reader(actor, account)
        account_id, chain = account.id, chain_of(account)
    # The head outside is read before the rows: it is written after its commit, so the rows
    # read next hold it at least (writers are not held up while a long chain is read).
    head = ports.audit_heads.read(chain)
    with ports.db.read() as session:
        walk = _verify_chain(session, _audit_key(session, ports), chain, head, {chain: account_id})
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
