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
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, event, insert, select, update
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import set_committed_value

from certvault.db.batch import insert_rows, is_postgresql
from certvault.db.models import Account, AuditEvent, AuditHead, ServiceKey
from certvault.errors import (
    CertvaultError,
    ConfigurationError,
)
from certvault.services.kernel import keyring, seals
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.witness import ChainHead

INSTALLATION_CHAIN = "installation"
RESTORE_ACKNOWLEDGED = "audit.restore_acknowledged"
GENESIS = "0" * 64
AUDIT_KEY_PURPOSE = "audit-mac"
_PENDING = "certvault_audit_heads"
LOCKED = "certvault_locked_heads"
_HOOKED = "certvault_audit_hooked"
ROW_REFUSED = "integrity.row_refused"
_SYSTEM = Actor(name="certvault", kind="system")
_recording_row_refusals: ContextVar[bool] = ContextVar("certvault_row_refusals", default=False)
log = logging.getLogger("certvault.audit")


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
    keyring.ensure_service_secret(session, ports, AUDIT_KEY_PURPOSE)


def audit_key(session: Session, ports: Ports) -> bytes:
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


def event_mac(key: bytes, e: AuditEvent) -> str:
    return hmac.new(key, _event_bytes(e), hashlib.sha256).hexdigest()


def chain_of(account: Account | None) -> str:
    return account.uuid if account is not None else INSTALLATION_CHAIN


def ensure_chain(session: Session, chain: str) -> None:
    if session.get(AuditHead, chain) is None:
        session.add(AuditHead(chain=chain, seq=0, mac=GENESIS))
        session.flush()


# Built once: they run for every event a transaction appends first. The head, locked, with the
# events from a given seq on, in one statement; and those events alone.
_HEAD_AND_SINCE = (
    select(AuditHead, AuditEvent)
    .outerjoin(
        AuditEvent,
        (AuditEvent.chain == AuditHead.chain) & (AuditEvent.seq >= bindparam("since")),
    )
    .where(AuditHead.chain == bindparam("chain"))
    .order_by(AuditEvent.seq)
    .with_for_update(of=AuditHead)
    .execution_options(populate_existing=True)  # the head as the lock returns it
)
_SINCE = (
    select(AuditEvent)
    .where(AuditEvent.chain == bindparam("chain"), AuditEvent.seq >= bindparam("since"))
    .order_by(AuditEvent.seq)
)


def _locked_head(session: Session, ports: Ports, key: bytes, chain: str) -> AuditHead:
    """The chain's head row, locked for the rest of the transaction and set to the verified tip.

    The row lock serializes writers of one chain (on SQLite the transaction's write lock does).
    It is taken once per transaction: a bulk import appends many events under the same lock. The
    row's own seq and MAC are not believed: the tip comes from the witness and the events after it.
    """
    locked: dict[str, AuditHead] = session.info.setdefault(LOCKED, {})
    head = locked.get(chain)
    if head is None:
        witness = ports.audit_heads.read(chain) or ChainHead(chain, 0, GENESIS)
        # The witnessed event and those after it, read with the lock.
        params = {"chain": chain, "since": witness.seq if witness.seq > 0 else 1}
        rows = session.execute(_HEAD_AND_SINCE, params).all()
        if not rows:
            ensure_chain(session, chain)
            rows = session.execute(_HEAD_AND_SINCE, params).all()
        head = rows[0][0]
        events = [ev for _, ev in rows if ev is not None]
        # PostgreSQL (READ COMMITTED) returns the head as the writer we waited for left it, but
        # the events joined to it as they were when the statement began. Every writer moves the
        # head with its events, so events that stop short of the head are older than the lock:
        # read them again, under it. (A head moved by anything else costs only this read.)
        if (events[-1].seq if events else 0) != head.seq:
            events = list(session.scalars(_SINCE, params))
        tip = _verified_tip(ports, key, witness, events)
        if (head.seq, head.mac) != (tip.seq, tip.mac):
            head.seq, head.mac = tip.seq, tip.mac
        locked[chain] = head
    return head


def acknowledged_gap(ev: AuditEvent) -> tuple[int, int] | None:
    """For an operator's restore acknowledgement: (last seq kept, witness seq it replaced)."""
    if ev.action != RESTORE_ACKNOWLEDGED:
        return None
    try:
        details = json.loads(ev.details)
        return int(details["after_seq"]), int(details["witness_seq"])
    except (ValueError, KeyError, TypeError):
        return None


def continues(key: bytes, tip: ChainHead, ev: AuditEvent) -> bool:
    """Whether ``ev`` is the next link after ``tip``: the next seq (or, for a MAC-proven restore
    acknowledgement that names ``tip``, a seq past the events the restore lost), the previous
    MAC, and its own MAC."""
    if not (
        hmac.compare_digest(ev.prev_mac, tip.mac)
        and hmac.compare_digest(ev.mac, event_mac(key, ev))
    ):
        return False
    if ev.seq == tip.seq + 1:
        return True
    gap = acknowledged_gap(ev)
    return gap is not None and gap[0] == tip.seq and ev.seq == max(gap) + 1


def _verified_tip(
    ports: Ports, key: bytes, witness: ChainHead, read: Sequence[AuditEvent]
) -> ChainHead:
    """The newest event of the chain, proven to contain the witness (called under the lock, with
    the events from the witnessed one on).

    Events after the witness must extend it link by link with valid MACs: they are the trace of
    a crash between a commit and its witness write, so the witness is moved up to them (recovery,
    not tampering). A missing or different witnessed event, or a bad link after it, refuses.
    """
    chain = witness.chain
    events = iter(read)
    if witness.seq > 0:
        at = next(events, None)
        if at is None or at.seq != witness.seq:
            raise AuditChainBroken(
                f"The audit log of chain {chain} cannot be written: the database is behind the "
                f"audit witness (event {witness.seq} is missing). Run `certvault audit verify`."
            )
        if not (
            hmac.compare_digest(at.mac, witness.mac)
            and hmac.compare_digest(at.mac, event_mac(key, at))
        ):
            raise AuditChainBroken(
                f"The audit log of chain {chain} cannot be written: event {witness.seq} in the "
                "database differs from the audit witness. Run `certvault audit verify`."
            )
    tip = witness
    for ev in events:
        if not continues(key, tip, ev):
            raise AuditChainBroken(
                f"The audit log of chain {chain} cannot be written: event {ev.seq} does not "
                f"continue the audited chain. Run `certvault audit verify`."
            )
        tip = ChainHead(chain, ev.seq, ev.mac)
    if tip.seq > witness.seq:
        ports.audit_heads.advance([tip])  # those events are committed: their writer was cut off
    return tip


def lock_chain(session: Session, ports: Ports, account: Account | None) -> None:
    """Lock the account's chain for the rest of the transaction and set its head to the
    verified tip now (say, before a savepoint that may roll back)."""
    _locked_head(session, ports, audit_key(session, ports), chain_of(account))


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
    The event is written by one Core INSERT (as :func:`record_many` writes its events) and
    comes back as written, not attached to the session.
    """
    planned = Planned(action, outcome, target_type, target_id, details)
    [ev] = _append(session, ports, account, actor, [planned])
    return ev


def append_event(
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
    planned = Planned(action, outcome, target_type, target_id, details)
    ev = _linked_event(ports, key, chain, seq, account, actor, planned, head.mac or GENESIS)
    head.seq, head.mac = ev.seq, ev.mac
    session.add(ev)
    session.flush()
    _remember_head(session, ports, ChainHead(chain, ev.seq, ev.mac))
    return ev


@dataclass(frozen=True)
class Planned:
    """An event for :func:`record_many`, in the terms of :func:`record`."""

    action: str
    outcome: str = "success"
    target_type: str = ""
    target_id: str | int = ""
    details: Mapping[str, Any] | None = None


def record_many(
    session: Session,
    ports: Ports,
    *,
    account: Account | None,
    actor: Actor,
    planned: Sequence[Planned],
) -> None:
    """Append ``planned`` to the account's chain in their order with one set-based INSERT, each
    event linked to the one before exactly as :func:`record` links them. The head moves only
    once the events are written."""
    if planned:
        _append(session, ports, account, actor, planned)


def _append(
    session: Session,
    ports: Ports,
    account: Account | None,
    actor: Actor,
    planned: Sequence[Planned],
) -> list[AuditEvent]:
    key = audit_key(session, ports)
    chain = chain_of(account)
    head = _locked_head(session, ports, key, chain)
    seq, prev = head.seq, head.mac or GENESIS
    events: list[AuditEvent] = []
    for p in planned:
        seq += 1
        ev = _linked_event(ports, key, chain, seq, account, actor, p, prev)
        prev = ev.mac
        events.append(ev)
    rows = [{c.key: getattr(ev, c.key) for c in _EVENT_COLUMNS} for ev in events]
    connection = session.connection()
    if (
        len(rows) == 1
        and is_postgresql(connection.dialect)
        and not session.in_nested_transaction()  # a savepoint's rollback restores ORM state only
    ):
        # One round trip for the event and the head it becomes; the event comes back with its id.
        params = {f"e_{name}": value for name, value in rows[0].items()}
        params |= {"h_chain": chain, "h_seq": seq, "h_mac": prev}
        events[0].id = connection.execute(_APPEND_ONE, params).scalar_one()
        set_committed_value(head, "seq", seq)
        set_committed_value(head, "mac", prev)
    else:
        if len(rows) == 1:  # one event comes back with its id
            events[0].id = connection.execute(
                insert(AuditEvent).returning(AuditEvent.id), rows[0]
            ).scalar_one()
        else:
            insert_rows(connection, AuditEvent, rows)
        head.seq, head.mac = seq, prev
    _remember_head(session, ports, ChainHead(chain, seq, prev))
    return events


_EVENT_COLUMNS = [c for c in AuditEvent.__table__.c if not c.primary_key]
# PostgreSQL: an event and the chain's head moved to it, in one statement.
_APPENDED = (
    insert(AuditEvent)
    .values({c.key: bindparam(f"e_{c.key}") for c in _EVENT_COLUMNS})
    .returning(AuditEvent.id)
    .cte("appended")
)
_APPEND_ONE = (
    update(AuditHead)
    .where(AuditHead.chain == bindparam("h_chain"))
    .values(seq=bindparam("h_seq"), mac=bindparam("h_mac"))
    .add_cte(_APPENDED)
    .returning(select(_APPENDED.c.id).scalar_subquery())
)


def _linked_event(
    ports: Ports,
    key: bytes,
    chain: str,
    seq: int,
    account: Account | None,
    actor: Actor,
    p: Planned,
    prev_mac: str,
) -> AuditEvent:
    """The next event of ``chain`` after the one whose MAC is ``prev_mac``, its own MAC set."""
    ev = AuditEvent(
        chain=chain,
        seq=seq,
        account_id=account.id if account else None,
        occurred_at=canonical_time(ports),
        actor=actor.name[:320],
        action=p.action,
        outcome=p.outcome,
        target_type=p.target_type,
        target_id=str(p.target_id),
        ip=actor.ip[:64],
        details=canonical_json(dict(p.details or {})),
        prev_mac=prev_mac,
        mac="",
    )
    ev.mac = event_mac(key, ev)
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
                    s.info.pop(LOCKED, None)

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


def after_transaction(session: Session, then: Callable[[], None]) -> None:
    """Run ``then`` once ``session``'s outermost transaction is over: for a refusal made inside
    a request's one transaction, audited (record_refusal) once that transaction has rolled
    back, since while the refused work still holds its locks the audit could wait on them."""
    done = False

    def _after_end(_s: Session, transaction: SessionTransaction) -> None:
        nonlocal done
        if done or transaction.parent is not None:
            return
        done = True
        then()

    event.listen(session, "after_transaction_end", _after_end)


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
