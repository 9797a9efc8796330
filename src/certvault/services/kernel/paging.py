"""Keyset (cursor) paging: offsets crawl at a million keys, a cursor on the id does not."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Generic, TypeVar

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
