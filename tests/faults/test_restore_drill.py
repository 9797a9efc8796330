"""Restore drill (issue 14, fault drill 6): archive keys, back up, lose the database and the
audit witness, restore; every key opens with the same master key and none opens without it.
SQLite and PostgreSQL; `make drills` runs it with 500 keys."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select

from certvault.db.models import Account, EscrowedKey
from certvault.errors import CertvaultError, SealBroken
from certvault.masterkey.file import FileMasterKeyProvider
from certvault.services.audit import checks as audit_checks
from certvault.services.kernel import keyring
from certvault.services.kernel.ports import Ports
from certvault.services.vault.restore import restore_backup
from certvault.services.vault.verification import verify_escrow
from tests.conftest import TEST_OPERATOR, make_settings
from tests.faults.drill import report, size
from tests.functional import cli_env
from tests.functional.backup_helpers import archive_keys, destroy_database, escrowed_key_uuids


@pytest.fixture
def cli(backend, tmp_path):  # type: ignore[no-untyped-def]
    yield from cli_env.cli_for(backend, tmp_path)


def _opens_with(ports: Ports, provider: FileMasterKeyProvider) -> tuple[int, int]:
    """How many escrowed keys open, and how many are refused, under ``provider``."""
    opened = refused = 0
    with ports.db.read() as session:
        rows = session.execute(
            select(EscrowedKey, Account).join(Account, Account.id == EscrowedKey.account_id)
        ).all()
        for row, account in rows:
            session.info.pop("certvault_account_keys", None)  # no account key kept from before
            held = ports.master_key
            ports.master_key = provider
            try:
                keyring.open_private_key(session, ports, account, row)
                opened += 1
            except SealBroken:
                refused += 1
            finally:
                ports.master_key = held
    return opened, refused


def test_restore_drill(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cli.bootstrap()
    acknowledged = archive_keys(cli, size(20, 500))
    backup = tmp_path / "backup"
    made = cli.run("backup", backup)
    assert made.returncode == 0, cli_env.text(made)

    destroy_database(cli, witness=True)  # the server is lost; the master key was kept apart
    restored = cli.run("restore", backup)
    assert restored.returncode == 0, cli_env.text(restored)

    present = escrowed_key_uuids(cli)
    ports = cli.ports()
    try:
        drill = verify_escrow(ports, TEST_OPERATOR)  # decrypts and checks every key in memory
        assert drill.ok, drill.failures
        assert audit_checks.verify_chains(ports).ok
        # Without the master key: another one opens none of them.
        other = tmp_path / "other-master-key"
        stranger = FileMasterKeyProvider.create(other)
        opened, refused = _opens_with(ports, stranger)
        assert (opened, refused) == (0, len(present))
        assert _opens_with(ports, ports.master_key) == (len(present), 0)  # type: ignore[arg-type]
    finally:
        ports.close()

    # Nor can the backup be restored where another master key is configured.
    stranger_home = tmp_path / "stranger"
    stranger_home.mkdir(mode=0o700)
    shutil.copytree(other, stranger_home / "master-key")
    settings = make_settings(stranger_home, None)  # refused before the database is looked at
    with pytest.raises(CertvaultError) as caught:
        restore_backup(settings, TEST_OPERATOR, backup)
    assert caught.value.code == "backup_not_authentic"
    assert not (stranger_home / "db" / "certvault.sqlite3").exists()

    lost = acknowledged - present
    report(
        "restore",
        backend=cli.database_url and "postgresql" or "sqlite",
        keys_acknowledged=len(acknowledged),
        keys_verified=drill.keys,
        keys_refused_without_master_key=refused,
        keys_lost=len(lost),
    )
    assert drill.keys == len(acknowledged) and not lost
