"""The audit log: one MAC chain per account and one for the installation (DESIGN.md §5.3).

Each event's MAC is keyed by the audit service key, which only the master-key provider can open,
so whoever can write the table cannot forge or recompute events. The newest head of each chain is
also written outside the database after commit, so cutting off the newest events shows too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from certvault.db.models import Account, AuditEvent, AuditHead, ServiceKey
from certvault.errors import CertvaultError, ConfigurationError, Forbidden
from certvault.services.kernel import keyring, seals
from certvault.services.kernel.actors import Actor, Role, Scope
from certvault.services.kernel.paging import Page, check_limit, decode_cursor, page_of
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.kernel.witness import ChainHead

INSTALLATION_CHAIN = "installation"
GENESIS = "0" * 64
AUDIT_KEY_PURPOSE = "audit-mac"
_PENDING = "certvault_audit_heads"
_LOCKED = "certvault_locked_heads"
_HOOKED = "certvault_audit_hooked"
ROW_REFUSED = "integrity.row_refused"
_SYSTEM = Actor(name="certvault", kind="system")
_recording_row_refusals: ContextVar[bool] = ContextVar("certvault_row_refusals", default=False)
log = logging.getLogger("certvault.audit")


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
    keyring.ensure_service_secret(session, ports, AUDIT_KEY_PURPOSE)


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


def _locked_head(session: Session, chain: str) -> AuditHead:
    """The chain's head row, locked for the rest of the transaction.

    The row lock serializes writers of one chain (on SQLite the transaction's write lock does).
    It is taken once per transaction: a bulk import appends many events under the same lock.
    """
    locked: dict[str, AuditHead] = session.info.setdefault(_LOCKED, {})
    head = locked.get(chain)
    if head is None:
        query = select(AuditHead).where(AuditHead.chain == chain).with_for_update()
        head = session.scalars(query).first()
        if head is None:
            ensure_chain(session, chain)
            head = session.scalars(query).one()
        locked[chain] = head
    return head


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
    head = _locked_head(session, chain)
    ev = AuditEvent(
        chain=chain,
        seq=head.seq + 1,
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


@event.listens_for(Session, "after_transaction_end")
def _record_refused_rows(session: Session, transaction: SessionTransaction) -> None:
    """Audit the sealed rows a unit of work refused (seals.TamperedRow) once it is over, each in
    a transaction of its own: on its account's chain, or on the installation's when the account's
    own row is the one that does not verify. Never the row's contents: its table and uuid."""
    if transaction.parent is not None:
        return
    refused = seals.refused_rows(session)
    if not refused or _recording_row_refusals.get():
        return
    ports = seals.ports_of(session)
    recording = _recording_row_refusals.set(True)
    try:
        for row in refused:
            details: dict[str, Any] = {"table": row.table, "uuid": row.uuid, "problem": row.reason}
            try:
                _record_refused_row(ports, row.account_id, row, details)
            except seals.TamperedRow:
                _record_refused_row(ports, None, row, {**details, "account_id": row.account_id})
    except Exception as exc:  # noqa: BLE001 - the refusal itself stands; the caller gets it
        log.error("could not audit a refused row: %s", type(exc).__name__)
    finally:
        _recording_row_refusals.reset(recording)


def _record_refused_row(
    ports: Ports, account_id: int | None, row: seals.RefusedRow, details: dict[str, Any]
) -> None:
    record_refusal(
        ports,
        account_id=account_id,
        actor=_SYSTEM,
        action=ROW_REFUSED,
        reason_code=seals.TamperedRow.code,
        target_type=row.table,
        target_id=row.uuid,
        details=details,
    )


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

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chains(ports: Ports) -> AuditReport:
    """Check every chain; report the first broken event of each."""
    report = AuditReport()
    with ports.db.read() as session:
        key = _audit_key(session, ports)
        chains = set(session.scalars(select(AuditEvent.chain).distinct()))
        heads = {h.chain: h for h in ports.audit_heads.all()}
        for chain in sorted(chains | set(heads)):
            report.chains += 1
            problem, count = _verify_chain(session, key, chain, heads.get(chain))
            report.events += count
            if problem:
                report.problems.append(problem)
    return report


def _verify_chain(
    session: Session, key: bytes, chain: str, head: ChainHead | None
) -> tuple[AuditProblem | None, int]:
    expected_seq, prev_mac, count = 1, GENESIS, 0
    rows = session.execute(
        select(AuditEvent)
        .where(AuditEvent.chain == chain)
        .order_by(AuditEvent.seq, AuditEvent.id)
        .execution_options(yield_per=1000)
    ).scalars()
    last: AuditEvent | None = None
    for ev in rows:
        count += 1
        if ev.seq > expected_seq:
            return AuditProblem(chain, ev.seq, ev.id, f"event {expected_seq} is missing"), count
        if ev.seq < expected_seq:
            return AuditProblem(chain, ev.seq, ev.id, "event appears twice or out of order"), count
        if not hmac.compare_digest(ev.mac, _mac(key, ev)):
            return AuditProblem(
                chain, ev.seq, ev.id, "MAC does not match: the event was altered"
            ), count
        if not hmac.compare_digest(ev.prev_mac, prev_mac):
            return AuditProblem(
                chain, ev.seq, ev.id, "chain broken: previous MAC does not match"
            ), count
        expected_seq, prev_mac, last = ev.seq + 1, ev.mac, ev
    if head is None:
        if last is not None:
            return AuditProblem(
                chain,
                last.seq,
                last.id,
                "no chain head is kept outside the database for this chain",
            ), count
    else:
        last_seq = last.seq if last else 0
        if head.seq > last_seq:
            return AuditProblem(
                chain,
                last_seq + 1,
                None,
                f"events {last_seq + 1}..{head.seq} are missing (cut off)",
            ), count
        at_head = session.scalars(
            select(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.seq == head.seq)
        ).first()
        if at_head is None or not hmac.compare_digest(at_head.mac, head.mac):
            return AuditProblem(
                chain,
                head.seq,
                at_head.id if at_head else None,
                "event differs from the head kept outside the database",
            ), count
    return None, count


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
    (and operators) read the log: it names every organization's persons and certificates."""
    actor.require_scope(Scope.READ)
    limit = check_limit(limit)
    after = decode_cursor(cursor)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        _require_log_reader(actor, account)
        query = select(AuditEvent).where(AuditEvent.account_id == account.id)
        if newest_first:
            query = query.where(AuditEvent.id < after) if after else query
        else:
            query = query.where(AuditEvent.id > after)
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
        order = AuditEvent.id.desc() if newest_first else AuditEvent.id
        rows = list(session.scalars(query.order_by(order).limit(limit + 1)))
        return page_of(rows, limit)


def known_actions(ports: Ports, actor: Actor, account_slug: str) -> list[str]:
    """The actions the account's log holds, for a filter's choices."""
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        _require_log_reader(actor, account)
        query = select(AuditEvent.action).where(AuditEvent.account_id == account.id).distinct()
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
        problem, count = _verify_chain(session, _audit_key(session, ports), chain, head)
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

    ports.db.run(work)
    return ChainCheck(count, problem)
