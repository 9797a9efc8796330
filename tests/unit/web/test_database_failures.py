"""A database that is down or full: which driver errors mean it (db/engine.py failure_of), and
what clients and the CLI are told (503 database_unavailable, 507 storage_full), never the
driver's own message."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from certvault.cli.common import guarded
from certvault.db.engine import failure_of
from certvault.errors import DatabaseUnavailable, StorageFull
from certvault.web import errors
from certvault.web.middleware import Shield
from tests.functional.smtp_server import free_port

CANARY = "Zq7-canary-password-Zq7"


def _wrap(kind: type[DBAPIError], orig: Exception) -> DBAPIError:
    return kind("SELECT 1", {"secret": CANARY}, orig)


def _sqlite_full() -> DBAPIError:
    """A real SQLITE_FULL: an in-memory database that may not grow."""
    engine = create_engine("sqlite://")
    with pytest.raises(OperationalError) as raised, engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x BLOB)"))
        conn.execute(text("PRAGMA max_page_count = 3"))
        for _ in range(10):
            conn.execute(text("INSERT INTO t VALUES (zeroblob(4000))"))
    return raised.value


def _sqlite_error(statement: str) -> DBAPIError:
    engine = create_engine("sqlite://")
    with pytest.raises(DBAPIError) as raised, engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
        conn.execute(text(statement))
    return raised.value


def _refused() -> DBAPIError:
    """A real refused connection: nothing listens on the port."""
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(OperationalError) as raised:
        engine.connect()
    return raised.value


UNAVAILABLE: list[Callable[[], DBAPIError]] = [
    _refused,
    lambda: _wrap(OperationalError, psycopg.errors.AdminShutdown(CANARY)),
    lambda: _wrap(OperationalError, psycopg.errors.CannotConnectNow(CANARY)),
    lambda: _wrap(OperationalError, psycopg.OperationalError(f"server closed {CANARY}")),
    lambda: _wrap(InterfaceError, psycopg.InterfaceError("the connection is closed")),
    lambda: _wrap(OperationalError, psycopg.errors.TooManyConnections(CANARY)),
]
FULL: list[Callable[[], DBAPIError]] = [
    _sqlite_full,
    lambda: _wrap(OperationalError, psycopg.errors.DiskFull(CANARY)),
]
NEITHER: list[Callable[[], DBAPIError]] = [
    lambda: _sqlite_error("INSERT INTO t VALUES (1)"),  # a constraint
    lambda: _sqlite_error("SELECT * FROM missing"),  # a bug
    lambda: _wrap(IntegrityError, psycopg.errors.UniqueViolation(CANARY)),
    lambda: _wrap(DBAPIError, psycopg.errors.SyntaxError(CANARY)),
    lambda: _wrap(OperationalError, psycopg.errors.QueryCanceled(CANARY)),
]


@pytest.mark.parametrize("make", UNAVAILABLE)
def test_unreachable_databases_are_unavailable(make: Callable[[], DBAPIError]) -> None:
    assert isinstance(failure_of(make()), DatabaseUnavailable)


def test_a_lost_connection_is_unavailable() -> None:
    exc = _wrap(OperationalError, psycopg.OperationalError("consuming input failed"))
    exc.connection_invalidated = True
    assert isinstance(failure_of(exc), DatabaseUnavailable)


def test_sqlite_busy_past_its_timeout_is_unavailable() -> None:
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
    assert isinstance(failure_of(_wrap(OperationalError, busy)), DatabaseUnavailable)


@pytest.mark.parametrize("make", FULL)
def test_full_databases_are_storage_full(make: Callable[[], DBAPIError]) -> None:
    assert isinstance(failure_of(make()), StorageFull)


@pytest.mark.parametrize("make", NEITHER)
def test_other_database_errors_are_neither(make: Callable[[], DBAPIError]) -> None:
    assert failure_of(make()) is None


def _app(exc: Exception) -> TestClient:
    app = FastAPI()
    errors.install(app)

    @app.post("/api/v1/persons/1/keys")
    def own() -> None:
        raise exc

    @app.post("/api/person/v2/1/import-key")
    def scm() -> None:
        raise exc

    @app.middleware("http")
    async def outside_routes(request, call_next):  # type: ignore[no-untyped-def]
        if request.url.path == "/middleware":
            raise exc
        return await call_next(request)

    app.add_middleware(Shield)
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [(UNAVAILABLE[1], 503, "database_unavailable"), (FULL[1], 507, "storage_full")],
)
def test_clients_get_a_stable_code_and_retry_after(
    make: Callable[[], DBAPIError], status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = _app(make())
    caplog.set_level(logging.DEBUG)
    own = client.post("/api/v1/persons/1/keys")
    assert own.status_code == status
    assert own.json()["code"] == code
    assert int(own.headers["Retry-After"]) > 0
    scm = client.post("/api/person/v2/1/import-key")
    assert scm.status_code == status and scm.json()["code"] == -status
    assert int(scm.headers["Retry-After"]) > 0
    outside = client.get("/middleware")
    assert outside.status_code == status and outside.json()["code"] == code
    assert int(outside.headers["Retry-After"]) > 0
    for answer in (own, scm, outside):
        assert CANARY not in answer.text
    assert CANARY not in caplog.text


def test_other_database_errors_stay_internal(caplog: pytest.LogCaptureFixture) -> None:
    client = _app(NEITHER[2]())
    caplog.set_level(logging.DEBUG)
    answer = client.post("/api/v1/persons/1/keys")
    assert answer.status_code == 500
    assert answer.json() == {"code": "internal", "description": "Internal error."}
    assert CANARY not in answer.text and CANARY not in caplog.text


@pytest.mark.parametrize(
    ("make", "code"), [(UNAVAILABLE[0], "database_unavailable"), (FULL[0], "storage_full")]
)
def test_the_cli_says_it_in_one_line(
    make: Callable[[], DBAPIError], code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exc = make()

    def work() -> None:
        raise exc

    with pytest.raises(SystemExit) as exited:
        guarded(work)
    assert exited.value.code == 1
    said = capsys.readouterr().err
    assert f"[{code}]" in said
    assert "Traceback" not in said and CANARY not in said
