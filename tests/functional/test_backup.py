"""`certvault backup` and `certvault restore` (issue 14, §6), through the real command: a backup
holds the database with keys still wrapped and a manifest MAC-bound through the master key, never
the master key; a restore goes into an empty database only, after every check, and never writes
the audit witness back. Hostile backups are refused with a stable code and change nothing.
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from certvault.db.models import AuditEvent
from certvault.errors import CertvaultError
from certvault.masterkey.file import FileMasterKeyProvider
from certvault.services.access import admins, tokens
from certvault.services.audit import checks as audit_checks
from certvault.services.directory import accounts
from certvault.services.kernel import keyring, seals
from certvault.services.kernel.ports import open_ports
from certvault.services.vault.backup import BackupExists, file_digest, make_backup
from certvault.services.vault.backup_manifest import (
    MAC_KEY_PURPOSE,
    MANIFEST,
    MANIFEST_MAX_BYTES,
    manifest_mac,
)
from certvault.services.vault.restore import _head_revision, restore_backup
from certvault.services.vault.verification import verify_escrow
from tests.conftest import TEST_OPERATOR, _pg_exec, make_settings
from tests.functional import cli_env
from tests.functional.backup_helpers import archive_keys, destroy_database, escrowed_key_uuids

HEAD = _head_revision()  # the newest schema this code knows


@pytest.fixture
def cli(backend, tmp_path):  # type: ignore[no-untyped-def]
    yield from cli_env.cli_for(backend, tmp_path)


def _master_key_bytes(cli: cli_env.Cli) -> bytes:
    [path] = cli.master_key_dir.glob("master-v*.key")
    return path.read_bytes()


def _data_file(backup: Path) -> Path:
    [path] = [p for p in backup.iterdir() if p.name != MANIFEST]
    return path


def test_backup_and_restore_into_a_fresh_home(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cli.bootstrap()
    keys = archive_keys(cli, 3)
    ports = cli.ports()
    try:  # a grant taken away: the account's grant generation moves on
        admins.create_admin(ports, TEST_OPERATOR, "acme", "robot", password="robot-password-0123")
        token = tokens.create_token(ports, TEST_OPERATOR, "acme", "robot")
        tokens.revoke_token(ports, TEST_OPERATOR, "acme", token.token_id)
        acme = audit_checks.chain_named(ports, "acme")
        generation = ports.audit_heads.generation(acme)
        assert generation > 0
    finally:
        ports.close()
    backup = tmp_path / "backup-1"
    made = cli.run("backup", backup)
    shown = cli_env.text(made)
    assert made.returncode == 0, shown
    assert "useless without the master key" in shown and "apart from this backup" in shown
    assert "3 escrowed keys" in shown
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in backup.iterdir()} == {0o600}
    master = _master_key_bytes(cli)
    for path in backup.iterdir():  # never the master key, in any file of the backup
        assert master not in path.read_bytes()
    manifest = json.loads((backup / MANIFEST).read_text())["manifest"]
    assert manifest["counts"]["escrowed_keys"] == 3 and manifest["alembic_revision"] == HEAD
    assert manifest["master_key"]["versions"] == [1]
    assert manifest["master_key"]["held_by"] == ["file v1"]

    destroy_database(cli, witness=True)  # a fresh home: only the master key is left
    restored = cli.run("restore", backup)
    shown = cli_env.text(restored)
    assert restored.returncode == 0, shown
    assert "started from the restored heads" in shown and "certvault retention run" in shown
    assert escrowed_key_uuids(cli) == keys
    ports = cli.ports()
    try:  # the new witness starts where the restored rows are, never below them
        assert ports.audit_heads.generation(acme) == generation
        assert ports.audit_heads.generation(seals.INSTALLATION) == seals.SEALS
    finally:
        ports.close()
    audit = cli.run("audit", "verify")
    assert audit.returncode == 0 and "NOTE" not in cli_env.text(audit), cli_env.text(audit)
    verify = cli.run("verify")
    assert verify.returncode == 0 and "keys checked: 3," in cli_env.text(verify)
    if cli.database_url is None:
        db = cli.home / "db" / "certvault.sqlite3"
        assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_restore_behind_the_witness_acknowledges_the_gap(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The database is lost but the witness outside it is not: the restored chains are behind
    it, and the restore records the gap through the operator's acknowledgement."""
    cli.bootstrap()
    before = archive_keys(cli, 2, "old")
    backup = tmp_path / "backup"
    assert cli.run("backup", backup).returncode == 0
    after = archive_keys(cli, 1, "new")  # events the backup does not hold
    ports = cli.ports()
    try:  # and an account made after it: its whole chain is lost
        late = accounts.create_account(ports, TEST_OPERATOR, "Late", "late").uuid
    finally:
        ports.close()
    destroy_database(cli, witness=False)
    restored = cli.run("restore", backup)
    shown = cli_env.text(restored)
    assert restored.returncode == 0, shown
    assert "had events this backup does not hold" in shown
    assert f"the audit witness knows chain {late}" in shown
    assert escrowed_key_uuids(cli) == before and after - before
    ports = cli.ports()
    try:
        audit = audit_checks.verify_chains(ports)
        assert audit.ok, audit.problems
        # The account's chain (the archival after the backup), the installation's (the
        # backup's own event, written after its snapshot), and the late account's.
        notes = {note.chain: note.reason for note in audit.acknowledged}
        assert len(notes) == 3 and "installation" in notes, notes
        assert "lost with their account" in notes.pop(late)
        assert all("acknowledged as lost in a database restore" in r for r in notes.values())
        assert seals.check_rows(ports).ok
        drill = verify_escrow(ports, TEST_OPERATOR)
        assert drill.ok and drill.keys == 2
    finally:
        ports.close()
    again = archive_keys(cli, 1, "again")  # the log and the vault go on
    assert len(again) == 3


@pytest.mark.parametrize("backend", ["sqlite"])  # refused before the database is looked at
def test_backup_refuses_an_existing_path(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cli.bootstrap()
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    done = cli.run("backup", taken)
    assert done.returncode == 1 and "[backup_exists]" in cli_env.text(done)
    assert taken.read_text() == "keep me"
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    ports = cli.ports()
    try:
        with pytest.raises(BackupExists):
            make_backup(ports, TEST_OPERATOR, link)
        with pytest.raises(CertvaultError, match="does not exist") as caught:
            make_backup(ports, TEST_OPERATOR, tmp_path / "no-such-folder" / "backup")
        assert caught.value.code == "invalid_input"
    finally:
        ports.close()
    assert not (tmp_path / "nowhere").exists()


# --- hostile backups ------------------------------------------------------------------------------


@pytest.fixture
def made(cli, tmp_path):  # type: ignore[no-untyped-def]
    """A vault with two keys, its backup, and the database lost (witness and key kept)."""
    cli.bootstrap()
    archive_keys(cli, 2)
    backup = tmp_path / "good"
    ports = cli.ports()
    try:
        make_backup(ports, TEST_OPERATOR, backup)
        secret = keyring.service_secrets(ports, MAC_KEY_PURPOSE)[0]
    finally:
        ports.close()
    destroy_database(cli, witness=False)
    return cli, backup, secret


def _copy(backup: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(backup, target)
    return target


def _edit_manifest(path: Path, secret: bytes | None, **changes: object) -> None:
    """Change manifest fields; with ``secret``, sign it again as certvault would."""
    outer = json.loads((path / MANIFEST).read_text())
    outer["manifest"].update(changes)
    if secret is not None:
        outer["mac"] = manifest_mac(secret, outer["manifest"])
    (path / MANIFEST).write_text(json.dumps(outer))


def _refused(cli: cli_env.Cli, source: Path, code: str) -> str:
    """Restore in-process and expect the stable ``code``; the database must be left empty."""
    with pytest.raises(CertvaultError) as caught:
        restore_backup(cli.settings(), TEST_OPERATOR, source)
    assert caught.value.code == code, caught.value.message
    _assert_empty(cli)
    return caught.value.message


def _assert_empty(cli: cli_env.Cli) -> None:
    if cli.database_url is None:
        db = cli.home / "db" / "certvault.sqlite3"
        assert not db.exists() or db.stat().st_size == 0
        leftovers = list((cli.home / "db").glob("*")) if (cli.home / "db").exists() else []
        assert [p for p in leftovers if p.name != db.name] == []
    else:
        tables = cli.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables == [(0,)]
    assert [p for p in cli.home.iterdir() if p.name.startswith(".restore-")] == []


def test_hostile_backups_are_refused_and_change_nothing(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cli, good, secret = made
    data_name = _data_file(good).name

    assert "no backup" in _refused(cli, tmp_path / "missing", "backup_invalid")
    empty_file = tmp_path / "empty-file"
    empty_file.write_bytes(b"")
    assert "is a file" in _refused(cli, empty_file, "backup_invalid")
    (tmp_path / "empty-dir").mkdir()
    assert "has no manifest.json" in _refused(cli, tmp_path / "empty-dir", "backup_invalid")

    truncated = _copy(good, tmp_path, "truncated")
    with (truncated / data_name).open("r+b") as f:
        f.truncate(os.path.getsize(truncated / data_name) // 2)
    assert "truncated" in _refused(cli, truncated, "backup_invalid")

    cut_manifest = _copy(good, tmp_path, "cut-manifest")
    raw = (cut_manifest / MANIFEST).read_bytes()
    (cut_manifest / MANIFEST).write_bytes(raw[: len(raw) // 2])
    assert "not JSON" in _refused(cli, cut_manifest, "backup_invalid")

    altered = _copy(good, tmp_path, "altered")  # one byte, same size
    with (altered / data_name).open("r+b") as f:
        f.seek(os.path.getsize(altered / data_name) - 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    assert "SHA-256" in _refused(cli, altered, "backup_invalid")

    bad_mac = _copy(good, tmp_path, "bad-mac")  # counts edited, not signed again
    _edit_manifest(bad_mac, None, counts={"accounts": 99})
    assert "altered" in _refused(cli, bad_mac, "backup_not_authentic")

    swapped = _copy(good, tmp_path, "swapped")  # another database, its digest put in unsigned
    (swapped / data_name).write_bytes(b"x" * 4096)
    _edit_manifest(
        swapped,
        None,
        files=[{"name": data_name, "sha256": "ab" * 32, "size": 4096}],
    )
    _refused(cli, swapped, "backup_not_authentic")

    outside = _copy(good, tmp_path, "outside")
    (tmp_path / "elsewhere.sqlite3").write_bytes(_data_file(good).read_bytes())
    files = json.loads((good / MANIFEST).read_text())["manifest"]["files"]
    _edit_manifest(outside, secret, files=[{**files[0], "name": "../elsewhere.sqlite3"}])
    assert "outside the backup" in _refused(cli, outside, "backup_invalid")

    linked = _copy(good, tmp_path, "linked")  # the file a link to somewhere else
    (linked / data_name).unlink()
    (linked / data_name).symlink_to(_data_file(good))
    assert "Cannot read" in _refused(cli, linked, "backup_invalid")

    huge = _copy(good, tmp_path, "huge")
    with (huge / MANIFEST).open("wb") as f:
        f.write(b'{"manifest": {"pad": "' + b"a" * MANIFEST_MAX_BYTES + b'"}, "mac": ""}')
    assert "larger than" in _refused(cli, huge, "backup_invalid")

    nested = _copy(good, tmp_path, "nested")
    (nested / MANIFEST).write_bytes(b"[" * 100_000 + b"]" * 100_000)
    _refused(cli, nested, "backup_invalid")

    newer = _copy(good, tmp_path, "newer")  # signed by this installation: the revision decides
    _edit_manifest(newer, secret, alembic_revision="9999")
    assert "does not know" in _refused(cli, newer, "backup_unsupported")
    newer_format = _copy(good, tmp_path, "newer-format")
    _edit_manifest(newer_format, secret, format_version=2)
    _refused(cli, newer_format, "backup_unsupported")
    wrong_field = _copy(good, tmp_path, "wrong-field")
    _edit_manifest(wrong_field, secret, counts="many")
    assert "at counts" in _refused(cli, wrong_field, "backup_invalid")

    other_kind = "postgresql" if cli.database_url is None else "sqlite"
    kind = _copy(good, tmp_path, "kind")
    _edit_manifest(kind, secret, database_kind=other_kind)
    _refused(cli, kind, "backup_invalid")  # its one file is not the kind's file

    # After all that, the good backup still restores.
    restore_backup(cli.settings(), TEST_OPERATOR, good)
    assert len(escrowed_key_uuids(cli)) == 2


@pytest.mark.parametrize("backend", ["sqlite"])  # refused before the database is looked at
def test_a_backup_of_another_installation_is_refused(made, tmp_path, backend) -> None:  # type: ignore[no-untyped-def]
    """Another master key cannot open the manifest's key: the MAC cannot be checked, and the
    keys inside could not be opened either. Refused through the real command."""
    cli, good, _ = made
    for other in cli_env.cli_for(backend, tmp_path / "other"):
        ports = other.ports()
        try:
            accounts.initialize(ports, TEST_OPERATOR)  # its own, new master key
        finally:
            ports.close()
        if other.database_url is None:
            shutil.rmtree(other.home / "db")
        else:
            name = other.database_url.rsplit("/", 1)[1]
            _pg_exec(f'DROP DATABASE "{name}" WITH (FORCE)')
            _pg_exec(f'CREATE DATABASE "{name}"')
        done = other.run("restore", good)
        shown = cli_env.text(done)
        assert done.returncode == 1 and "[backup_not_authentic]" in shown, shown
        assert "another installation" in shown
        _assert_empty(other)


def test_restore_refuses_a_database_that_is_not_empty(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cli, good, _ = made
    if cli.database_url is None:
        (cli.home / "db").mkdir(mode=0o700, exist_ok=True)
        cli.sql("CREATE TABLE notes (x TEXT)")
        cli.sql("INSERT INTO notes VALUES ('mine')")
        before = (cli.home / "db" / "certvault.sqlite3").read_bytes()
    else:
        cli.sql("CREATE TABLE notes (x TEXT)")
    done = cli.run("restore", good)
    shown = cli_env.text(done)
    assert done.returncode == 1 and "[restore_target_not_empty]" in shown, shown
    if cli.database_url is None:
        assert (cli.home / "db" / "certvault.sqlite3").read_bytes() == before
    else:
        assert cli.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(1,)]
        cli.sql("DROP TABLE notes")
        cli.sql("CREATE SCHEMA other")  # an empty schema of someone else's is not empty either
        with pytest.raises(CertvaultError, match="not empty"):
            restore_backup(cli.settings(), TEST_OPERATOR, good)


def test_a_new_machine_rebuilds_the_master_key_from_shares(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The server and its master-key file are lost; custodians' shares rebuild the key, which
    is checked against the backup before the database is restored, and installed after."""
    cli, good, _ = made
    ports = cli.ports()
    try:
        shares = ports.master_key.export_shares(2, 3)  # type: ignore[attr-defined]
    finally:
        ports.close()
    stranger = FileMasterKeyProvider.create(tmp_path / "stranger-key")
    wrong = stranger.export_shares(2, 3)
    master = _master_key_bytes(cli)
    shutil.rmtree(cli.master_key_dir)

    with pytest.raises(CertvaultError) as caught:
        restore_backup(cli.settings(), TEST_OPERATOR, good)  # no key here, and no shares
    assert caught.value.code == "master_key_missing" and "--share-file" in caught.value.message
    with pytest.raises(CertvaultError) as caught:
        restore_backup(cli.settings(), TEST_OPERATOR, good, wrong[:2])
    assert caught.value.code == "shares_invalid"
    with pytest.raises(CertvaultError) as caught:
        restore_backup(cli.settings(), TEST_OPERATOR, good, shares[:1])
    assert caught.value.code == "shares_invalid"
    _assert_empty(cli)
    assert not cli.master_key_dir.exists()

    files = [cli_env.write_secret(tmp_path / f"share-{n}.txt", s) for n, s in enumerate(shares)]
    done = cli.run("restore", good, "--share-file", files[0], "--share-file", files[2])
    shown = cli_env.text(done)
    assert done.returncode == 0, shown
    assert "rebuilt from 2 shares" in shown and shares[0].split()[0] not in shown
    assert _master_key_bytes(cli) == master
    assert stat.S_IMODE(cli.master_key_dir.stat().st_mode) == 0o700
    ports = cli.ports()
    try:
        drill = verify_escrow(ports, TEST_OPERATOR)
        assert drill.ok and drill.keys == 2
    finally:
        ports.close()


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite has no password
def test_the_database_password_is_never_shown(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """pg_dump and pg_restore get the password in their environment; no output, error or file
    of the backup carries it (the test server trusts local connections and ignores it)."""
    cli, good, _ = made
    canary = "Canary-Pw-7f3e1b"
    url = cli.database_url.replace("postgres@", f"postgres:{canary}@", 1)
    restored = cli.run("restore", good, env={"CERTVAULT_DATABASE_URL": url})
    assert restored.returncode == 0, cli_env.text(restored)
    again = cli.run("restore", good, env={"CERTVAULT_DATABASE_URL": url})
    assert "[restore_target_not_empty]" in cli_env.text(again)
    for proc in (restored, again):
        assert canary not in proc.stdout + proc.stderr
    ports = open_ports(make_settings(cli.home, url))
    try:  # pg_dump with the password in its environment; the backup holds it nowhere
        make_backup(ports, TEST_OPERATOR, tmp_path / "again")
    finally:
        ports.close()
    for path in (tmp_path / "again").iterdir():
        assert canary.encode() not in path.read_bytes()


def test_a_backup_made_while_keys_are_archived_is_consistent(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Another process archives keys while the backup runs: the snapshot is one consistent
    state (every chain verifies by itself, every key opens) and the manifest's counts are the
    snapshot's own."""
    cli.bootstrap()
    archive_keys(cli, 2, "first")
    stop = threading.Event()
    written: list[int] = []

    def archive_until_stopped() -> None:
        n = 0
        while not stop.is_set():
            archive_keys(cli, 1, f"busy{n}-")
            n += 1
            written.append(n)

    worker = threading.Thread(target=archive_until_stopped)
    worker.start()
    try:
        while not written:  # the writer is under way before the backup begins
            time.sleep(0.05)
        ports = cli.ports()
        try:
            manifest = make_backup(ports, TEST_OPERATOR, tmp_path / "busy").manifest
        finally:
            ports.close()
    finally:
        stop.set()
        worker.join(timeout=120)
    destroy_database(cli, witness=True)
    result = restore_backup(cli.settings(), TEST_OPERATOR, tmp_path / "busy")
    assert result.broken == []
    ports = cli.ports()
    try:
        with ports.db.read() as session:
            events = session.scalar(select(func.count()).select_from(AuditEvent))
        # The snapshot's events, and the restore's own event on the installation chain.
        assert events == manifest.counts["audit_events"] + 1
        drill = verify_escrow(ports, TEST_OPERATOR)
        assert drill.ok and drill.keys == manifest.counts["escrowed_keys"] >= 2
        assert audit_checks.verify_chains(ports).ok
    finally:
        ports.close()


@pytest.mark.parametrize("backend", ["sqlite"])  # the schema step is the same on both
def test_a_backup_of_an_older_schema_is_brought_up_to_date(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A backup made by an older version (one migration behind) restores, and the restore runs
    the migrations `certvault init` would."""
    from alembic import command

    from certvault.db import migrate
    from certvault.db.engine import Database

    cli, good, secret = made
    older = _copy(good, tmp_path, "older")
    data = _data_file(older)
    db = Database(f"sqlite:///{data}")
    try:
        command.downgrade(migrate.alembic_config(db), "0012")
    finally:
        db.dispose()
    for stray in older.iterdir():  # what opening it left beside it
        if stray.name not in (MANIFEST, data.name):
            stray.unlink()
    size, digest = file_digest(data)
    _edit_manifest(
        older,
        secret,
        alembic_revision="0012",
        files=[{"name": data.name, "sha256": digest, "size": size}],
    )
    result = restore_backup(cli.settings(), TEST_OPERATOR, older)
    assert result.needs_upgrade
    assert cli.sql("SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert cli.sql("SELECT count(*) FROM duty_locks") == [(0,)]
    ports = cli.ports()
    try:
        assert seals.check_rows(ports).ok and audit_checks.verify_chains(ports).ok
        drill = verify_escrow(ports, TEST_OPERATOR)
        assert drill.ok and drill.keys == 2
    finally:
        ports.close()
