"""Engine and session setup for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from psycopg.types.array import ListBinaryDumper
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from certvault.errors import DatabaseUnavailable, StorageFull

T = TypeVar("T")

_RETRYABLE_PG = {"40001", "40P01"}  # serialization failure, deadlock detected
_REQUEST = "certvault_request_transaction"
# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_FULL = 13
# busy and locked (once busy_timeout is spent), I/O error, cannot open, lock protocol
_SQLITE_UNAVAILABLE = {5, 6, 10, 14, 15}
_PG_DISK_FULL = "53100"
# connection exception, operator intervention (admin shutdown, cannot connect now), resources
_PG_UNAVAILABLE = ("08", "57P", "53")


def is_retryable(exc: DBAPIError) -> bool:
    """Whether running the whole unit of work again may succeed (a race, a lost connection)."""
    # A unique-key race (two writers creating the same person or key) is settled by running the
    # whole unit of work again: the second run finds the row the first one committed.
    if isinstance(exc, IntegrityError):
        return True
    code = getattr(exc.orig, "sqlstate", None)
    if code in _RETRYABLE_PG or exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


def failure_of(exc: DBAPIError) -> DatabaseUnavailable | StorageFull | None:
    """What a database error means to a client when the fault is the database's, not the work's:
    no room left (:class:`StorageFull`) or no database to talk to (:class:`DatabaseUnavailable`).
    None for anything else (a constraint, a bug), which stays an internal error."""
    orig = exc.orig
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        primary = sqlite_code & 0xFF
        if primary == _SQLITE_FULL:
            return StorageFull()
        return DatabaseUnavailable() if primary in _SQLITE_UNAVAILABLE else None
    if type(orig).__module__.startswith("sqlite3"):
        return None
    state = getattr(orig, "sqlstate", None)
    if state == _PG_DISK_FULL:
        return StorageFull()
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return DatabaseUnavailable()
    # A driver's connection failure (refused, closed by the server) carries no SQLSTATE.
    if isinstance(exc, OperationalError) and (state is None or state.startswith(_PG_UNAVAILABLE)):
        return DatabaseUnavailable()
    return None


class Database:
    # hide_parameters: statement parameters (wrapped keys, hashes) never appear in errors or logs.
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                path = Path(self.url.database)
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # Created private before SQLite opens it; its WAL and SHM files copy the mode.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            self.engine = create_engine(
                self.url,
                echo=echo,
                hide_parameters=True,
                connect_args={"timeout": 30, "isolation_level": None},
            )
            _configure_sqlite(self.engine)
        else:
            # No pre-ping (a round trip per checkout): a connection found dead is invalidated by
            # SQLAlchemy and `run` starts the unit of work again on a fresh one.
            # A database host that does not answer at all is given up on, not waited for.
            timeout = {} if "connect_timeout" in self.url.query else {"connect_timeout": 10}
            self.engine = create_engine(
                self.url, echo=echo, hide_parameters=True, connect_args=timeout
            )
            _configure_postgresql(self.engine)
        # Copied into every session's ``info`` (the services put their ports here).
        self.session_info: dict[str, Any] = {}
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, info=self.session_info)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(certvault_read_only=True),
            expire_on_commit=False,
            info=self.session_info,
        )
        self._lookup_sessions = (
            self._read_sessions
            if self.is_sqlite
            else sessionmaker(
                self.engine.execution_options(
                    certvault_read_only=True, isolation_level="AUTOCOMMIT"
                ),
                expire_on_commit=False,
                info=self.session_info,
            )
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A unit of work that only reads (on SQLite it does not take the write lock).

        Objects stay usable after the block (nothing is expired), so a plan made while reading
        can be carried into the transaction that writes.
        """
        with self._read_sessions() as session, session.begin():
            yield session

    @contextmanager
    def lookup(self) -> Iterator[Session]:
        """A read of one statement, for the lookups that run before every request (a token).

        On PostgreSQL the statement runs without a transaction around it: one statement is its
        own snapshot, and BEGIN and COMMIT would be two more round trips. More than one
        statement in it would each see a different moment: use :meth:`read` for those. On
        SQLite it is a read transaction.
        """
        with self._lookup_sessions() as session, session.begin():
            yield session

    def run_request(self, work: Callable[[Session], T]) -> T:
        """Run a whole request's ``work`` in as few transactions as the database allows.

        PostgreSQL: one transaction for every read and write of the request (one commit, one
        round trip each), run again from the start after a retryable conflict. SQLite serialises
        writers, so slow work (a release's KDF) must not hold the write lock: ``work`` runs in a
        read transaction and :meth:`write` opens a short transaction of its own at the end.
        """
        if self.is_sqlite:
            with self.read() as session:
                return work(session)

        def in_request(session: Session) -> T:
            session.info[_REQUEST] = True
            return work(session)

        return self.run(in_request)

    @staticmethod
    def writes_in(session: Session | None) -> bool:
        """Whether :meth:`write` runs in ``session`` (a request's transaction on PostgreSQL):
        then what is read and locked there stays so until the writes commit."""
        return session is not None and bool(session.info.get(_REQUEST))

    def write(self, session: Session | None, work: Callable[[Session], T]) -> T:
        """Run ``work`` in ``session`` when it is a request's transaction that may write
        (:meth:`run_request` on PostgreSQL), otherwise in a transaction of its own."""
        if self.writes_in(session):
            assert session is not None
            return work(session)
        return self.run(work)

    def run(self, work: Callable[[Session], T], *, attempts: int = 4) -> T:
        """Run ``work`` in a transaction, again from the start after a retryable conflict (a
        sealed row that someone else changed since it was read is one: StaleDataError)."""
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction() as session:
                    return work(session)
            except (DBAPIError, StaleDataError) as exc:
                if attempt == attempts or (isinstance(exc, DBAPIError) and not is_retryable(exc)):
                    raise
                time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError:
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Lists (the columns of a batch's statements, db/batch.py) go as binary arrays: the
        # driver's text arrays escape every value in Python, bytes above all.
        dbapi_conn.adapters.register_dumper(list, ListBinaryDumper)

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        # An idle connection has nothing to read. If its socket is readable, the server closed it
        # (a restart, a failover, an administrator) or spoke unprompted: the pool drops it and
        # hands out a fresh one, so the first request after a database restart does not fail.
        # One select() on the socket, no round trip (pool_pre_ping costs one per checkout).
        try:
            readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
        except Exception as exc:  # noqa: BLE001 - a closed connection's fileno() raises
            raise DisconnectionError() from exc
        if readable:
            raise DisconnectionError()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: an acknowledged archival survives power loss, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the lock up front: a deferred transaction that later upgrades to a write
        # lock can fail with SQLITE_BUSY instead of waiting for it.
        if conn.get_execution_options().get("certvault_read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
