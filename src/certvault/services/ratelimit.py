"""Rate limits behind one small interface, holding across every worker and node.

Redis (the `limits` library's moving window) when CERTVAULT_REDIS_URL is set; otherwise fixed
windows counted in the database, which every worker shares.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from certvault.config import Settings
from certvault.db.engine import Database
from certvault.db.models import RateLimitCounter
from certvault.errors import CertvaultError


class RateLimited(CertvaultError):
    """Too many requests; try again later."""

    code = "rate_limited"
    status = 429

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = max(int(retry_after), 1)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int  # seconds until the window admits again (0 when allowed)


class RateLimiter(Protocol):
    def hit(self, key: str, limit: int, window_seconds: int) -> Decision:
        """Count one event for ``key``; say whether it stays within ``limit`` per window."""
        ...


class DatabaseRateLimiter:
    def __init__(self, db: Database, clock: object = time.time) -> None:
        self._db = db
        self._clock = clock

    def hit(self, key: str, limit: int, window_seconds: int) -> Decision:
        now = int(self._clock())  # type: ignore[operator]
        window = now - now % window_seconds
        key = key[:200]

        def work(session: Session) -> int:
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(RateLimitCounter).values(key=key, window_start=window, count=1)
            stmt = stmt.on_conflict_do_update(
                index_elements=["key", "window_start"],
                set_={"count": RateLimitCounter.count + 1},
            ).returning(RateLimitCounter.count)
            count = int(session.execute(stmt).scalar_one())
            session.execute(
                delete(RateLimitCounter).where(
                    RateLimitCounter.key == key, RateLimitCounter.window_start < window
                )
            )
            return count

        count = self._db.run(work)
        if count > limit:
            return Decision(False, window + window_seconds - now)
        return Decision(True, 0)


class RedisRateLimiter:
    def __init__(self, url: str) -> None:
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self._storage = storage_from_string(url)
        self._limiter = MovingWindowRateLimiter(self._storage)

    def hit(self, key: str, limit: int, window_seconds: int) -> Decision:
        from limits import RateLimitItemPerSecond

        item = RateLimitItemPerSecond(limit, window_seconds)
        if self._limiter.hit(item, "certvault", key):
            return Decision(True, 0)
        stats = self._limiter.get_window_stats(item, "certvault", key)
        return Decision(False, max(int(stats.reset_time - time.time()), 1))


def rate_limiter(settings: Settings, db: Database) -> RateLimiter:
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url)
    return DatabaseRateLimiter(db)


def enforce(limiter: RateLimiter, key: str, limit: int, window_seconds: int) -> None:
    decision = limiter.hit(key, limit, window_seconds)
    if not decision.allowed:
        raise RateLimited(decision.retry_after)
