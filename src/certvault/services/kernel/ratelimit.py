"""Rate limits behind one small interface, holding across every worker and node.

Redis (the `limits` library's moving window) when CERTVAULT_REDIS_URL is set; otherwise fixed
windows counted in the database, which every worker shares.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, select
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


@dataclass(frozen=True)
class Limit:
    key: str
    limit: int
    window_seconds: int


class RateLimiter(Protocol):
    def hit(self, *limits: Limit) -> Decision:
        """Count one event against every limit; allowed only if it stays within all of them."""
        ...

    def check(self, *limits: Limit) -> Decision:
        """Whether one more event would stay within every limit, without counting it."""
        ...


def _worst(decisions: list[Decision]) -> Decision:
    denied = [d for d in decisions if not d.allowed]
    return max(denied, key=lambda d: d.retry_after) if denied else Decision(True, 0)


class DatabaseRateLimiter:
    # Old windows are swept on a small share of hits, not on every one: a request pays for one
    # upsert per limit, all in one transaction.
    SWEEP_EVERY = 64

    def __init__(self, db: Database, clock: object = time.time) -> None:
        self._db = db
        self._clock = clock
        self._hits = 0

    def hit(self, *limits: Limit) -> Decision:
        now = int(self._clock())  # type: ignore[operator]
        self._hits += 1
        sweep = self._hits % self.SWEEP_EVERY == 0

        def work(session: Session) -> list[Decision]:
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            decisions = []
            for lim in limits:
                window = now - now % lim.window_seconds
                key = lim.key[:200]
                stmt = dialect.insert(RateLimitCounter).values(
                    key=key, window_start=window, count=1
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=["key", "window_start"],
                    set_={"count": RateLimitCounter.count + 1},
                ).returning(RateLimitCounter.count)
                count = int(session.execute(stmt).scalar_one())
                if count > lim.limit:
                    decisions.append(Decision(False, window + lim.window_seconds - now))
                else:
                    decisions.append(Decision(True, 0))
            if sweep:
                oldest = now - max(lim.window_seconds for lim in limits)
                session.execute(
                    delete(RateLimitCounter).where(RateLimitCounter.window_start < oldest - 1)
                )
            return decisions

        return _worst(self._db.run(work))

    def check(self, *limits: Limit) -> Decision:
        now = int(self._clock())  # type: ignore[operator]
        decisions = []
        with self._db.read() as session:
            for lim in limits:
                window = now - now % lim.window_seconds
                count = session.scalar(
                    select(RateLimitCounter.count).where(
                        RateLimitCounter.key == lim.key[:200],
                        RateLimitCounter.window_start == window,
                    )
                )
                allowed = (count or 0) < lim.limit
                decisions.append(
                    Decision(allowed, 0 if allowed else window + lim.window_seconds - now)
                )
        return _worst(decisions)


class RedisRateLimiter:
    def __init__(self, url: str) -> None:
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self._storage = storage_from_string(url)
        self._limiter = MovingWindowRateLimiter(self._storage)

    def hit(self, *limits: Limit) -> Decision:
        from limits import RateLimitItemPerSecond

        decisions = []
        for lim in limits:
            item = RateLimitItemPerSecond(lim.limit, lim.window_seconds)
            if self._limiter.hit(item, "certvault", lim.key):
                decisions.append(Decision(True, 0))
                continue
            stats = self._limiter.get_window_stats(item, "certvault", lim.key)
            decisions.append(Decision(False, max(int(stats.reset_time - time.time()), 1)))
        return _worst(decisions)

    def check(self, *limits: Limit) -> Decision:
        from limits import RateLimitItemPerSecond

        decisions = []
        for lim in limits:
            item = RateLimitItemPerSecond(lim.limit, lim.window_seconds)
            if self._limiter.test(item, "certvault", lim.key):
                decisions.append(Decision(True, 0))
                continue
            stats = self._limiter.get_window_stats(item, "certvault", lim.key)
            decisions.append(Decision(False, max(int(stats.reset_time - time.time()), 1)))
        return _worst(decisions)


def rate_limiter(settings: Settings, db: Database) -> RateLimiter:
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url)
    return DatabaseRateLimiter(db)


def enforce(limiter: RateLimiter, *limits: Limit) -> None:
    decision = limiter.hit(*limits)
    if not decision.allowed:
        raise RateLimited(decision.retry_after)


def enforce_within(limiter: RateLimiter, *limits: Limit) -> None:
    """Refuse when the limits are used up already, without counting this event (failures are
    counted when they happen)."""
    decision = limiter.check(*limits)
    if not decision.allowed:
        raise RateLimited(decision.retry_after)
