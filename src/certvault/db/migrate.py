"""Alembic, driven from code so `certvault init` and the tests use the same migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect

from certvault.db.engine import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = db.engine
    return cfg


def upgrade(db: Database) -> None:
    command.upgrade(alembic_config(db), "head")


def is_initialized(db: Database) -> bool:
    return inspect(db.engine).has_table("alembic_version")
