"""Rate limits behind one small interface, holding across every worker and node.

Redis (the `limits` library's moving window) when CERTVAULT_REDIS_URL is set; otherwise fixed
windows counted in the database, which every worker shares.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import (
    Integer,
    String,
    and_,
    bindparam,
    delete,
    literal,
    or_,
    select,
    true,
    union_all,
)
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
    def hit(self, *limits: Limit, session: Session | None = None) -> Decision:
        """Count one event against every limit; allowed only if it stays within all of them.

        A database limiter counts in ``session`` when given (so that the count commits or rolls
        back with the work it admits), otherwise in a transaction of its own."""
        ...

    def check(self, *limits: Limit, session: Session | None = None) -> Decision:
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

    def hit(self, *limits: Limit, session: Session | None = None) -> Decision:
        now = int(self._clock())  # type: ignore[operator]
        self._hits += 1
        sweep = self._hits % self.SWEEP_EVERY == 0

        # One statement counts every limit (one round trip), rows in one order for every
        # caller, so that concurrent counts lock them the same way round.
        windows = sorted({(lim.key[:200], now - now % lim.window_seconds) for lim in limits})

        def work(session: Session) -> list[Decision]:
            if not windows:
                return []
            stmt = _hit_statement(session.get_bind().dialect.name, len(windows))
            params = _window_params(windows)
            # On the connection: the ORM would take a parameter dict for a bulk insert's rows.
            rows = session.connection().execute(stmt, params)
            counts = {(key, window): count for key, window, count in rows}
            decisions = []
            for lim in limits:
                window = now - now % lim.window_seconds
                if counts[(lim.key[:200], window)] > lim.limit:
                    decisions.append(Decision(False, window + lim.window_seconds - now))
                else:
                    decisions.append(Decision(True, 0))
            if sweep:
                oldest = now - max(lim.window_seconds for lim in limits)
                session.execute(
                    delete(RateLimitCounter).where(RateLimitCounter.window_start < oldest - 1)
                )
            return decisions

        return _worst(work(session) if session is not None else self._db.run(work))

    def check(self, *limits: Limit, session: Session | None = None) -> Decision:
        now = int(self._clock())  # type: ignore[operator]
        windows = {(lim.key[:200], now - now % lim.window_seconds): lim for lim in limits}
        if not windows:
            return Decision(True, 0)
        # Every limit in one round trip.
        query = _check_statement(len(windows))
        params = _window_params(list(windows))
        # On the connection: a plain read of counters needs nothing of the ORM.
        if session is not None:
            rows = session.connection().execute(query, params).all()
        else:
            with self._db.read() as reading:
                rows = reading.connection().execute(query, params).all()
        counts = {(key, window): count for key, window, count in rows}
        decisions = []
        for (key, window), lim in windows.items():
            allowed = counts.get((key, window), 0) < lim.limit
            decisions.append(Decision(allowed, 0 if allowed else window + lim.window_seconds - now))
        return _worst(decisions)


# The counting and checking statements, built once per dialect and number of limits (a request
# counts against one to three): built per call, their construction cost more than the round trip.
_HIT: dict[tuple[str, int], Any] = {}
_CHECK: dict[int, Any] = {}


def _window_params(windows: list[tuple[str, int]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, (key, window) in enumerate(windows):
        params[f"key_{i}"], params[f"window_{i}"] = key, window
    return params


def _hit_statement(dialect_name: str, rows: int) -> Any:
    """Count one event in each of ``rows`` windows, creating their counters, in one statement
    that returns every count.

    The rows come from a SELECT, not a multi-row VALUES: SQLAlchemy compiles a multi-row VALUES
    again on every execution, which cost more than the statement's round trip. (SQLite needs the
    WHERE to read the ON CONFLICT that follows as the upsert's.)"""
    found = _HIT.get((dialect_name, rows))
    if found is None:
        dialect = postgresql if dialect_name == "postgresql" else sqlite
        windows = union_all(
            *(
                select(
                    bindparam(f"key_{i}", type_=String).label("key"),
                    bindparam(f"window_{i}", type_=Integer).label("window_start"),
                    literal(1, Integer).label("count"),
                )
                for i in range(rows)
            )
        ).subquery()
        stmt = dialect.insert(RateLimitCounter).from_select(
            ["key", "window_start", "count"], select(*windows.c).where(true())
        )
        found = _HIT[dialect_name, rows] = stmt.on_conflict_do_update(
            index_elements=["key", "window_start"],
            set_={"count": RateLimitCounter.count + 1},
        ).returning(RateLimitCounter.key, RateLimitCounter.window_start, RateLimitCounter.count)
    return found


def _check_statement(rows: int) -> Any:
    found = _CHECK.get(rows)
    if found is None:
        found = _CHECK[rows] = select(
            RateLimitCounter.key, RateLimitCounter.window_start, RateLimitCounter.count
        ).where(
            or_(
                *(
                    and_(
                        RateLimitCounter.key == bindparam(f"key_{i}"),
                        RateLimitCounter.window_start == bindparam(f"window_{i}"),
                    )
                    for i in range(rows)
                )
            )
        )
    return found


class RedisRateLimiter:
    def __init__(self, url: str) -> None:
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self._storage = storage_from_string(url)
        self._limiter = MovingWindowRateLimiter(self._storage)

    def hit(self, *limits: Limit, session: Session | None = None) -> Decision:
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

    def check(self, *limits: Limit, session: Session | None = None) -> Decision:
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


@dataclass(frozen=True)
class Quota:
    """The limits one costly action counts against, checked before its costly part and counted
    in the transaction that completes it.

    Checking first (without counting, without a lock) refuses a caller over a limit before any
    costly work; counting at the end, in the work's own transaction, holds no counter row lock
    across that work and counts an attempt only when it commits. Concurrent attempts at the
    edge of a limit may each pass the check: the count then refuses all but those that fit.
    """

    limiter: RateLimiter
    limits: tuple[Limit, ...]

    def check(self, session: Session | None = None) -> None:
        decision = self.limiter.check(*self.limits, session=session)
        if not decision.allowed:
            raise RateLimited(decision.retry_after)

    def count(self, session: Session | None = None) -> None:
        decision = self.limiter.hit(*self.limits, session=session)
        if not decision.allowed:
            raise RateLimited(decision.retry_after)
