"""The tests' copies of template databases (tests/pg_copies.py): each copy is fresh and its own,
and nothing is left behind."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.conftest import PG_ADMIN, _pg_available, _pg_exec
from tests.pg_copies import DatabaseCopies


def _url(name: str) -> str:
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"


def _databases(prefix: str) -> set[str]:
    """The databases whose names start with ``prefix`` (other tests run beside this one)."""
    with psycopg.connect(PG_ADMIN) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix]
        )
        return {row[0] for row in rows}


@pytest.fixture
def template() -> str:
    if not _pg_available():
        pytest.fail("PostgreSQL is not reachable")
    name = f"cvt_copies_{uuid.uuid4().hex[:8]}"
    _pg_exec(f'CREATE DATABASE "{name}"')
    with psycopg.connect(_url(name), autocommit=True) as conn:
        conn.execute("CREATE TABLE marks (value text)")
        conn.execute("INSERT INTO marks VALUES ('from the template')")
    yield name
    _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_each_copy_is_fresh_and_its_own_and_none_is_left(template: str) -> None:
    prefix = f"cvcopies_{uuid.uuid4().hex[:8]}_"
    copies = DatabaseCopies(_pg_exec, ahead=2, prefix=prefix)
    first, second = copies.take(template), copies.take(template)
    assert first != second
    with psycopg.connect(_url(first), autocommit=True) as conn:
        conn.execute("INSERT INTO marks VALUES ('written in the first copy')")
    with psycopg.connect(_url(second)) as conn:
        assert conn.execute("SELECT value FROM marks").fetchall() == [("from the template",)]
    copies.drop(first)
    copies.drop(second)
    third = copies.take(template)
    assert third not in (first, second)
    copies.forget(template)  # the template may be dropped now: no copy of it is under way
    copies.close()
    assert _databases(prefix) == {third}  # the one taken and not given back
    _pg_exec(f'DROP DATABASE "{third}"')


def test_a_failed_copy_is_reported_to_the_test_that_waits() -> None:
    copies = DatabaseCopies(_pg_exec)
    with pytest.raises(RuntimeError, match="Copying a template database failed"):
        copies.take(f"cvt_missing_{uuid.uuid4().hex[:8]}")
    copies.close()
