"""Background duties (rotation, retention, drills) and the database's clock.

A duty is an idempotent command any node may run from cron or a timer (DESIGN.md §8); only one
runs at a time per name. The lock is a row in ``duty_locks`` with a lease: the holder renews it
while it works, and a holder that died (kill -9, a lost node) is taken over once its lease has
run out, or at once when it ran on this host and its process is gone. Time is the database's,
never a node's: two nodes with skewed clocks agree on when a lease ends or a key is due.

The lock is not MAC-bound: a row put in by SQL can only make a duty wait (whoever writes the
database can stop the service anyway), never make one act.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from certvault.db.models import DutyLock
from certvault.errors import CertvaultError
from certvault.services.kernel.ports import Ports

DEFAULT_LEASE = timedelta(seconds=120)
# Every rotation (master key, account key, migration into a token, retirement) holds this one
# lock: two rotations never run at once, whatever their kind or account.
KEY_ROTATION = "key-rotation"


class DutyRunning(CertvaultError):
    """Another run of this duty holds its lock; nothing was done."""

    code = "duty_running"
    status = 409


class DutyLost(CertvaultError):
    """This run's lock was taken over (its lease ran out); it stopped, and a rerun goes on."""

    code = "duty_lost"
    status = 409


def database_now(session: Session) -> datetime:
    """The database server's current time, UTC (SQLite: the time of the host it runs on)."""
    value = session.scalar(select(func.current_timestamp()))
    if isinstance(value, str):  # SQLite: 'YYYY-MM-DD HH:MM:SS', in UTC
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError("the database returned no time")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _holder() -> str:
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"


def _dead_here(holder: str) -> bool:
    """Whether ``holder`` ran on this host in a process that is gone."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname()[:120] or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Duty:
    """A held duty lock; :meth:`renew` keeps it (call it between batches)."""

    def __init__(self, ports: Ports, name: str, holder: str, lease: timedelta) -> None:
        self.ports, self.name, self.holder, self.lease = ports, name, holder, lease
        self.taken_over: str | None = None  # the holder whose run this one took over, if any

    def renew(self, session: Session | None = None) -> None:
        """Extend the lease; inside ``session`` when given (a batch's own transaction: one commit
        for both, and the batch rolls back if the lock was lost), else in a transaction of its own.
        """

        def work(session: Session) -> int:
            now = database_now(session)
            result = session.execute(
                update(DutyLock)
                .where(DutyLock.name == self.name, DutyLock.holder == self.holder)
                .values(expires_at=now + self.lease, renewed_at=now)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

        renewed = work(session) if session is not None else self.ports.db.run(work)
        if renewed != 1:
            raise DutyLost(f"The lock of '{self.name}' was taken over; stopped, a rerun goes on.")


def _acquire(ports: Ports, name: str, holder: str, lease: timedelta) -> str | None:
    """Take the lock; the holder taken over (or ``""``); raises DutyRunning while it is held."""

    def work(session: Session) -> str | None:
        now = database_now(session)
        row = session.scalars(select(DutyLock).where(DutyLock.name == name)).first()
        if row is None:
            session.add(
                DutyLock(
                    name=name, holder=holder, started_at=now, renewed_at=now, expires_at=now + lease
                )
            )
            session.flush()
            return ""
        if row.expires_at > now and not _dead_here(row.holder):
            raise DutyRunning(
                f"'{name}' is already running ({row.holder.rsplit(':', 1)[0]}, since "
                f"{row.started_at:%Y-%m-%d %H:%M:%S} UTC); nothing was done."
            )
        previous = row.holder
        # Compare and set: of two nodes taking over one stale lock, one wins.
        result = session.execute(
            update(DutyLock)
            .where(DutyLock.name == name, DutyLock.holder == previous)
            .values(holder=holder, started_at=now, renewed_at=now, expires_at=now + lease)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise DutyRunning(f"'{name}' was just taken by another run; nothing was done.")
        return previous

    try:
        return ports.db.run(work)
    except IntegrityError:
        raise DutyRunning(f"'{name}' was just taken by another run; nothing was done.") from None


@contextmanager
def duty(ports: Ports, name: str, *, lease: timedelta = DEFAULT_LEASE) -> Iterator[Duty]:
    """Hold the lock of duty ``name`` for the block; :class:`DutyRunning` if another holds it."""
    holder = _holder()
    previous = _acquire(ports, name, holder, lease)
    held = Duty(ports, name, holder, lease)
    held.taken_over = previous or None
    try:
        yield held
    finally:

        def release(session: Session) -> None:
            session.execute(
                delete(DutyLock).where(DutyLock.name == name, DutyLock.holder == holder)
            )

        ports.db.run(release)
