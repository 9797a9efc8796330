"""The migration of retention's tables goes up and down again, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

from alembic import command
from sqlalchemy import inspect

from certvault.db.engine import Database
from certvault.db.migrate import alembic_config
from tests.conftest import _pg_exec, _sqla_url

REVISION = "0014"
TABLES = {"retention_policies", "legal_holds", "key_destructions"}


def _up_and_down(db: Database) -> None:
    cfg = alembic_config(db)
    command.upgrade(cfg, REVISION)
    assert TABLES <= set(inspect(db.engine).get_table_names())
    command.downgrade(cfg, f"{REVISION}-1")
    assert not TABLES & set(inspect(db.engine).get_table_names())
    command.upgrade(cfg, "head")
    names = inspect(db.engine).get_table_names()
    assert TABLES <= set(names)
    uniques = inspect(db.engine).get_unique_constraints("key_destructions")
    assert [u["column_names"] for u in uniques] == [["escrowed_key_id"]]


def test_retention_tables_up_and_down_sqlite(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    try:
        _up_and_down(db)
    finally:
        db.dispose()


def test_retention_tables_up_and_down_postgresql(pg_template):
    name = f"cvm_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}"')
    db = Database(_sqla_url(name))
    try:
        _up_and_down(db)
    finally:
        db.dispose()
        _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
