"""Reading an account's audit log: its own chain only, in chain order, for account
administrators and operators."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Select, select

from certvault.db.models import Account, AuditEvent
from certvault.errors import Forbidden
from certvault.services.audit.log import (
    chain_of,
)
from certvault.services.kernel.actors import Actor, Role, Scope
from certvault.services.kernel.paging import (
    Ordering,
    Page,
    SortedPage,
    check_limit,
    count_rows,
    decode_cursor,
    encode_cursor,
    ordering_named,
    sorted_page,
)
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account


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


def canonical_time(moment: datetime) -> str:
    # Naive times are taken as UTC; stored times are canonical text, which sorts like time.
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:
        return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except OverflowError:  # within hours of year 1 or 9999: before or after every event
        return "0" if moment.year == 1 else "~"  # "~" sorts after every digit


def require_log_reader(actor: Actor, account: Account) -> None:
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
        require_log_reader(actor, account)
        query = _events_query(account, f)
        if newest_first:
            query = query.where(AuditEvent.seq < after) if after else query
        else:
            query = query.where(AuditEvent.seq > after)
        order = AuditEvent.seq.desc() if newest_first else AuditEvent.seq
        rows = list(session.scalars(query.order_by(order).limit(limit + 1)))
        more = len(rows) > limit
        items = rows[:limit]
        return Page(items, encode_cursor(items[-1].seq) if more and items else None)


# The console's sorts of the log: by its place in the chain, which is the order of time.
SORTS = {
    "newest": Ordering("newest", AuditEvent.seq, AuditEvent.seq, int, descending=True),
    "oldest": Ordering("oldest", AuditEvent.seq, AuditEvent.seq, int),
}


def sorted_events(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    f: EventFilter,
    sort: str,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> SortedPage[AuditEvent]:
    """A page of the account's events in one of SORTS, with Previous and Next (the console)."""
    actor.require_scope(Scope.READ)
    ordering = ordering_named(SORTS, sort)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        require_log_reader(actor, account)
        return sorted_page(session, _events_query(account, f), ordering, cursor, limit)


def count_events(ports: Ports, actor: Actor, account_slug: str, f: EventFilter) -> int:
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        require_log_reader(actor, account)
        return count_rows(session, _events_query(account, f).with_only_columns(AuditEvent.id))


def _events_query(account: Account, f: EventFilter) -> Select[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.chain == chain_of(account))
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
        query = query.where(AuditEvent.occurred_at >= canonical_time(f.since))
    if f.until is not None:
        query = query.where(AuditEvent.occurred_at < canonical_time(f.until))
    return query


def known_actions(ports: Ports, actor: Actor, account_slug: str) -> list[str]:
    """The actions the account's log holds, for a filter's choices."""
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        require_log_reader(actor, account)
        query = select(AuditEvent.action).where(AuditEvent.chain == chain_of(account)).distinct()
        return sorted(session.scalars(query))
