"""What the backup tests and the restore drill share: keys archived into a vault, and a
database destroyed the way a lost server loses it."""

from __future__ import annotations

import shutil

from sqlalchemy import select

from certvault.db.models import EscrowedKey
from certvault.services.vault.imports import ImportItem, import_files
from tests.conftest import TEST_OPERATOR, _pg_exec
from tests.factories import make_ca, make_cert, make_p12, new_key
from tests.functional.cli_env import Cli

PW = "backup-test-p12"


def archive_keys(cli: Cli, count: int, prefix: str = "k") -> set[str]:
    """Archive ``count`` fresh EC keys into account "acme"; the uuids of the escrowed keys."""
    issuer = make_ca()
    items = []
    for i in range(count):
        key = new_key("ec256")
        data = make_p12(key, make_cert(key, f"{prefix}{i}@acme.example", issuer=issuer), PW)
        items.append(ImportItem(name=f"{prefix}{i}.p12", load=lambda d=data: d, password=PW))
    ports = cli.ports()
    try:
        results = import_files(ports, TEST_OPERATOR, "acme", items)
        assert all(e.ok for r in results for e in r.entries), results
        return escrowed_key_uuids(cli)
    finally:
        ports.close()


def escrowed_key_uuids(cli: Cli) -> set[str]:
    ports = cli.ports()
    try:
        with ports.db.read() as session:
            return set(session.scalars(select(EscrowedKey.uuid)))
    finally:
        ports.close()


def destroy_database(cli: Cli, *, witness: bool) -> None:
    """Lose the database (SQLite: its folder; PostgreSQL: the database, made again empty) and,
    with ``witness``, the audit witness beside it. The master key stays."""
    if cli.database_url is None:
        shutil.rmtree(cli.home / "db")
    else:
        name = cli.database_url.rsplit("/", 1)[1]
        _pg_exec(f'DROP DATABASE "{name}" WITH (FORCE)')
        _pg_exec(f'CREATE DATABASE "{name}"')
    if witness:
        shutil.rmtree(cli.home / "audit-heads")
