"""Keyset (cursor) paging: offsets crawl at a million keys, a cursor on the id does not."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from certvault.errors import InvalidInput

T = TypeVar("T")
MAX_LIMIT = 500
MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL; a larger one must not reach SQL


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The id after which the next page starts; 0 for the first page."""
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, value = raw.split(":", 1)
        last_id = int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("The cursor is not valid.") from None
    if version != "v1" or not 0 <= last_id <= MAX_ID:
        raise InvalidInput("The cursor is not valid.")
    return last_id


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}.")
    return limit


def page_of(rows: list[T], limit: int) -> Page[T]:
    """``rows`` were fetched with ``limit + 1``: the extra row only tells that more follow."""
    more = len(rows) > limit
    items = rows[:limit]
    cursor = encode_cursor(items[-1].id) if more and items else None  # type: ignore[attr-defined]
    return Page(items, cursor)


# --- sorted lists with Previous and Next (the console) ----------------------------------------


@dataclass(frozen=True)
class Ordering:
    """A sort a list offers: one column, a direction, and the id to break ties.

    ``name`` goes into the cursor, so a cursor made for one sort is refused by another.
    """

    name: str
    column: Any  # a mapped attribute of the listed model
    id_column: Any
    kind: type  # of the column's values: int, str or datetime (aware)
    descending: bool = False

    def value_of(self, row: Any) -> Any:
        return getattr(row, self.column.key)


@dataclass(frozen=True)
class SortedPage(Generic[T]):
    items: list[T]
    next_cursor: str | None
    previous_cursor: str | None


_MAX_CURSOR = 600  # characters; a cursor holds one sort value and an id


def ordering_named(sorts: dict[str, Ordering], name: str) -> Ordering:
    """The sort a list offers under ``name``; any other name is refused, never echoed."""
    ordering = sorts.get(name)
    if ordering is None:
        raise InvalidInput("Sort by one of: " + ", ".join(sorts) + ".")
    return ordering


def count_rows(session: Session, query: Select[Any]) -> int:
    """How many rows ``query`` selects (its columns do not matter)."""
    inner = query.subquery()
    return int(session.scalar(select(func.count()).select_from(inner)) or 0)


def _encode_value(value: Any) -> str:
    if isinstance(value, datetime):
        return "t" + value.isoformat()
    if isinstance(value, int):
        return "i" + str(value)
    return "s" + str(value)


def _decode_value(text: str, ordering: Ordering) -> Any:
    kind, body = text[:1], text[1:]
    if kind == "t" and ordering.kind is datetime:
        moment = datetime.fromisoformat(body)
        if moment.tzinfo is None:
            raise ValueError("naive time")
        return moment
    if kind == "i" and ordering.kind is int:
        number = int(body)
        if not 0 <= number <= MAX_ID:  # a larger one must not reach SQL
            raise ValueError("out of range")
        return number
    if kind == "s" and ordering.kind is str:
        return body
    raise ValueError(kind)


def _sorted_cursor(ordering: Ordering, before: bool, row: Any) -> str:
    raw = ":".join(
        (
            "v2",
            ordering.name,
            "b" if before else "a",
            str(getattr(row, ordering.id_column.key)),
            _encode_value(ordering.value_of(row)),
        )
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_sorted(cursor: str, ordering: Ordering) -> tuple[bool, int, Any]:
    """(before, last id, last value) of a cursor made for ``ordering``."""
    try:
        if len(cursor) > _MAX_CURSOR:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, name, side, last_id, value = raw.split(":", 4)
        if version != "v2" or name != ordering.name or side not in ("a", "b"):
            raise ValueError("another sort")
        row_id = int(last_id)
        if not 0 <= row_id <= MAX_ID:
            raise ValueError("id")
        return side == "b", row_id, _decode_value(value, ordering)
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise InvalidInput("The cursor is not valid.") from None


def sorted_page(
    session: Session, query: Select[Any], ordering: Ordering, cursor: str | None, limit: int
) -> SortedPage[Any]:
    """One page of ``query`` in ``ordering``, after (Next) or before (Previous) ``cursor``."""
    limit = check_limit(limit)
    column, id_column = ordering.column, ordering.id_column
    before, forward = False, not ordering.descending
    if cursor:
        before, last_id, value = _decode_sorted(cursor, ordering)
        # Going back walks the list the other way round from the cursor, then turns the page.
        later = forward != before
        if later:
            query = query.where(or_(column > value, and_(column == value, id_column > last_id)))
        else:
            query = query.where(or_(column < value, and_(column == value, id_column < last_id)))
    walk_forward = forward != before
    if walk_forward:
        query = query.order_by(column.asc(), id_column.asc())
    else:
        query = query.order_by(column.desc(), id_column.desc())
    rows = list(session.scalars(query.limit(limit + 1)))
    more = len(rows) > limit
    items = rows[:limit]
    if before:
        items.reverse()
    if not items:
        return SortedPage(items, None, None)
    # Beyond the end the walk went, there is more when the extra row came; behind the cursor
    # there is always the page the cursor was made from.
    has_next = more if not before else True
    has_previous = (cursor is not None) if not before else more
    return SortedPage(
        items,
        _sorted_cursor(ordering, False, items[-1]) if has_next else None,
        _sorted_cursor(ordering, True, items[0]) if has_previous else None,
    )
