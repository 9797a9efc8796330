"""Shared fixtures: every test gets its own CERTVAULT_HOME, master key and database, on SQLite and
on PostgreSQL (a fresh database per test, copied from a migrated template)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from certvault.config import Settings
from certvault.db import migrate
from certvault.db.engine import Database
from certvault.services.directory import accounts
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports, open_ports
from tests.pg_copies import DatabaseCopies

PG_ADMIN = os.environ.get("CERTVAULT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI") == "true"
TEST_OPERATOR = Actor.operator("operator:test@localhost")


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _sqla_url(dbname: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def _pg_exec(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql)


# This process's copies of template databases (tests/pg_copies.py); closed as the session ends.
PG_COPIES = DatabaseCopies(_pg_exec)


@pytest.fixture(scope="session", autouse=True)
def _pg_copies() -> Iterator[DatabaseCopies]:
    yield PG_COPIES
    PG_COPIES.close()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    if not _pg_available():
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}")
        pytest.skip("PostgreSQL is not reachable")
    name = f"cvt_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}"')
    db = Database(_sqla_url(name))
    migrate.upgrade(db)
    db.dispose()
    yield name
    PG_COPIES.forget(name)
    _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "certvault.sqlite3"
    db = Database(f"sqlite:///{path}")
    migrate.upgrade(db)
    db.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_settings(home: Path, database_url: str | None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home,
        "database_url": database_url,
        "p12_kdf_rounds": 2048,  # cheap in tests; one test checks the production default
        "argon2_time_cost": 1,
        "argon2_memory_kib": 8,
        "smtp_host": None,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def database_url(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> Iterator[str | None]:
    """A fresh, migrated database; ``None`` means the embedded SQLite default under the home."""
    if backend == "sqlite":
        target = tmp_path / "home" / "db" / "certvault.sqlite3"
        target.parent.mkdir(parents=True, mode=0o700)
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        yield None
        return
    name = PG_COPIES.take(request.getfixturevalue("pg_template"))
    yield _sqla_url(name)
    PG_COPIES.drop(name)


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return make_settings(tmp_path / "home", database_url)


@pytest.fixture
def ports(settings: Settings) -> Iterator[Ports]:
    p = open_ports(settings)
    accounts.initialize(p, TEST_OPERATOR)
    yield p
    p.close()


@pytest.fixture
def operator() -> Actor:
    return TEST_OPERATOR


@pytest.fixture
def account(ports: Ports) -> str:
    accounts.create_account(ports, TEST_OPERATOR, "Acme Corp", "acme", key_vault_enabled=True)
    return "acme"


@pytest.fixture(scope="session")
def console_templates(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The admin console's test data, built once per backend and process
    (tests/functional/console_fixtures.py copies it for each test)."""
    from tests.functional.console_fixtures import ConsoleTemplates

    templates = ConsoleTemplates(request, tmp_path_factory.mktemp("console-template"))
    yield templates
    templates.close()
