"""`certvault restore`: a backup into an empty database, after every check has passed.

Checked first, before anything is written: the manifest (form, size, MAC under the master key
configured here), the schema revision (one this version knows), the database kind, an empty
target, and every file's size and SHA-256 (on a private copy, which is what gets restored).

A restore never writes the witness back (DESIGN.md §8). Where the live witness is ahead of the
restored chains, the gap is recorded through the operator's restore acknowledgement; where there
is no witness yet (a fresh home), it starts from the restored heads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from certvault.config import Settings
from certvault.crypto import envelope
from certvault.db import migrate
from certvault.db.migrate import MIGRATIONS
from certvault.errors import CertvaultError, ConfigurationError
from certvault.masterkey import MasterKeyProvider
from certvault.masterkey.file import FileMasterKeyProvider, MasterKeyExists, blob_version
from certvault.masterkey.shares import SharesInvalid, combine_shares
from certvault.services.audit import checks as audit_checks
from certvault.services.audit import log as audit
from certvault.services.audit.checks import AuditProblem
from certvault.services.kernel import seals
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.durable import sync_directory
from certvault.services.kernel.ports import master_key_provider, open_ports
from certvault.services.vault.backup import postgresql_tool, run_tool
from certvault.services.vault.backup_manifest import (
    BackupInvalid,
    BackupUnsupported,
    Manifest,
    open_backup_file,
    parse_manifest,
    read_manifest,
    wrapped_mac_key,
)
from certvault.services.vault.restore_witness import reconcile_witness, start_generations

_CHUNK = 1024 * 1024


class RestoreTargetNotEmpty(CertvaultError):
    """The database restored into must be empty; nothing was changed."""

    code = "restore_target_not_empty"
    status = 409


class BackupKindMismatch(CertvaultError):
    """The backup is of another kind of database than the one configured here."""

    code = "backup_kind_mismatch"
    status = 422


@dataclass
class RestoreResult:
    manifest: Manifest
    # Chains where the live witness had seen events the backup does not hold: acknowledged.
    acknowledged: list[str] = field(default_factory=list)
    # Chains the witness had not seen (a fresh home): it starts from the restored heads.
    started: list[str] = field(default_factory=list)
    # Chains the witness has seen but the backup does not hold at all (accounts made after
    # it): acknowledged as lost whole.
    missing: list[str] = field(default_factory=list)
    # Chains of the restored database that do not verify by themselves.
    broken: list[AuditProblem] = field(default_factory=list)
    # The schema was older than this version's: it was brought up to date.
    needs_upgrade: bool = False


def check_backup(master_key: MasterKeyProvider, source: Path) -> Manifest:
    """The backup's manifest, checked (form, MAC, schema revision); the data file is checked
    when it is copied."""
    manifest = read_manifest(source, master_key)
    _known_revision(manifest.alembic_revision)
    return manifest


def restore_backup(
    settings: Settings, actor: Actor, source: Path, shares: Sequence[str] = ()
) -> RestoreResult:
    """Restore ``source`` into the empty database ``settings`` name. With ``shares``, the master
    key is rebuilt from them first (a new machine), checked against the backup, and installed
    only once the database is restored."""
    source = Path(os.path.abspath(source))
    staged: _StagedKey | None = None
    try:
        if shares:
            staged = _stage_master_key(settings, source, shares)
            master_key: MasterKeyProvider = staged.provider
        else:
            master_key = master_key_provider(settings)
        manifest = _restore_database(settings, master_key, source)
        if staged is not None:
            FileMasterKeyProvider.install_restored(
                settings.effective_master_key_dir, staged.key, staged.version
            )
    finally:
        if staged is not None:
            shutil.rmtree(staged.folder, ignore_errors=True)
    return _after_restore(settings, actor, source, manifest, from_shares=staged is not None)


@dataclass(frozen=True)
class _StagedKey:
    provider: FileMasterKeyProvider
    folder: Path
    key: bytes = field(repr=False)
    version: int


def _stage_master_key(settings: Settings, source: Path, shares: Sequence[str]) -> _StagedKey:
    """The master key rebuilt from custodians' shares, in a private folder of its own until the
    restore is done; refused unless it opens the backup's manifest key."""
    configured = master_key_provider(settings)
    if not isinstance(configured, FileMasterKeyProvider):
        raise ConfigurationError("Only the file master key can be rebuilt from shares.")
    if configured.versions_on_disk():
        raise MasterKeyExists(
            "A master key is configured here already; restore without --share-file."
        )
    manifest, _, _ = parse_manifest(source)
    key = combine_shares(shares)
    row = wrapped_mac_key(manifest.mac_key)
    aad = envelope.service_key_aad(row.uuid, row.purpose)
    if not FileMasterKeyProvider.opens(key, row.wrapped_data_key, aad):
        raise SharesInvalid("The shares rebuild a key, but not the one this backup was made with.")
    version = blob_version(row.wrapped_data_key)
    settings.home_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".restore-key-", dir=settings.home_dir))
    provider = FileMasterKeyProvider.install_restored(folder / "master-key", key, version)
    return _StagedKey(provider, folder, key, version)


def _restore_database(settings: Settings, master_key: MasterKeyProvider, source: Path) -> Manifest:
    manifest = check_backup(master_key, source)
    url = make_url(settings.effective_database_url)
    kind = "sqlite" if url.get_backend_name() == "sqlite" else "postgresql"
    if manifest.database_kind != kind:
        raise BackupKindMismatch(
            f"The backup holds a {manifest.database_kind} database; certvault is configured "
            f"for {kind} here (CERTVAULT_DATABASE_URL)."
        )
    if kind == "sqlite":
        _restore_sqlite(settings, url, source, manifest)
    else:
        _restore_postgresql(settings, url, source, manifest)
    return manifest


def _after_restore(
    settings: Settings, actor: Actor, source: Path, manifest: Manifest, *, from_shares: bool
) -> RestoreResult:
    result = RestoreResult(manifest, needs_upgrade=manifest.alembic_revision != _head_revision())
    ports = open_ports(settings)
    try:
        if result.needs_upgrade:
            migrate.upgrade(ports.db)  # what `certvault init` would do next
        tips, result.broken = audit_checks.database_tips(ports)
        reason = f"restored from backup {source.name} made {manifest.created_at}"
        found = reconcile_witness(ports, actor, tips, reason)
        result.started, result.acknowledged, result.missing = found
        start_generations(ports, manifest.witness_generations.get(seals.INSTALLATION, 0))
        seals.seal_existing(ports)  # tables sealed since the backup's version, if any
        ports.db.run(
            lambda session: audit.record(
                session,
                ports,
                account=None,
                actor=actor,
                action="installation.restore",
                target_type="backup",
                target_id=manifest.data_file.sha256,
                details={
                    "created_at": manifest.created_at,
                    "acknowledged_chains": len(result.acknowledged),
                    "missing_chains": len(result.missing),
                    "master_key_from_shares": from_shares,
                },
            )
        )
    finally:
        ports.close()
    return result


# --- checks -------------------------------------------------------------------------------------


def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def _head_revision() -> str:
    return str(_scripts().get_current_head())


def _known_revision(revision: str) -> None:
    try:
        found = _scripts().get_revision(revision)
    except CommandError:
        found = None
    if found is None:
        raise BackupUnsupported(
            f"The backup's database has schema revision {revision}, which this certvault does "
            f"not know (it knows up to {_head_revision()}): it was made by a newer version. "
            "Restore it with that version or a later one."
        )


def _copy_checked(source: Path, manifest: Manifest, into: Path) -> Path:
    """Copy the backup's data file into the private folder ``into``, refusing it unless its
    size and SHA-256 are the manifest's. What is restored is this copy, never the original,
    which could change after it was checked."""
    named = manifest.data_file
    fd = open_backup_file(source, named.name)
    target = into / named.name
    digest, size = hashlib.sha256(), 0
    try:
        if os.fstat(fd).st_size != named.size:
            raise BackupInvalid(
                f"{named.name} of the backup has {os.fstat(fd).st_size} bytes, the manifest "
                f"says {named.size}: the backup is truncated or was altered."
            )
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while size <= named.size and (chunk := os.read(fd, _CHUNK)):
                digest.update(chunk)
                size += len(chunk)
                os.write(out, chunk)
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    if size != named.size or digest.hexdigest() != named.sha256:
        raise BackupInvalid(
            f"{named.name} of the backup does not match the SHA-256 in its manifest: the "
            "backup is damaged or was altered."
        )
    return target


def _sqlite_is_empty(path: Path) -> bool:
    if not os.path.lexists(path):
        return True
    if not path.is_file() or path.is_symlink():
        return False
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return False
    if path.stat().st_size == 0:
        return True
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False  # not a database: not ours to replace
    return int(tables) == 0


def _postgresql_is_empty(url: URL) -> bool:
    """No table, view, sequence or type of anyone's in any schema but the system's, and no
    schema but ``public``."""
    engine = create_engine(url, hide_parameters=True)
    try:
        with engine.connect() as connection:
            relations = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
                    " AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"
                )
            )
            schemas = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_namespace WHERE nspname NOT IN"
                    " ('pg_catalog', 'information_schema', 'public')"
                    " AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%'"
                )
            )
    except DBAPIError:
        raise ConfigurationError(
            f"Cannot open the database {url.render_as_string(hide_password=True)} to restore "
            "into; create it (empty) first."
        ) from None
    finally:
        engine.dispose()
    return not relations and not schemas


def _not_empty(where: str) -> RestoreTargetNotEmpty:
    return RestoreTargetNotEmpty(
        f"The database {where} is not empty: a restore goes into an empty database only. "
        "Nothing was changed."
    )


# --- restoring ----------------------------------------------------------------------------------


def _restore_sqlite(settings: Settings, url: URL, source: Path, manifest: Manifest) -> None:
    path = Path(str(url.database)).expanduser()
    if not _sqlite_is_empty(path):
        raise _not_empty(str(path))
    settings.home_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".restore-", dir=path.parent))
    try:
        copy = _copy_checked(source, manifest, work)
        if not _sqlite_is_empty(path):  # again: someone may have begun in the meantime
            raise _not_empty(str(path))
        try:
            os.link(copy, path)  # never over a database that appeared meanwhile
        except FileExistsError:
            os.replace(copy, path)  # the empty file `init` or a command left: nothing lost
        for stale in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)  # empty ones (checked above), of no database
        sync_directory(path.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _restore_postgresql(settings: Settings, url: URL, source: Path, manifest: Manifest) -> None:
    where = url.render_as_string(hide_password=True)
    if not _postgresql_is_empty(url):
        raise _not_empty(where)
    settings.home_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".restore-", dir=settings.home_dir))
    try:
        copy = _copy_checked(source, manifest, work)
        engine = create_engine(url, hide_parameters=True)
        try:
            with engine.connect() as connection:
                major = int(str(connection.scalar(text("SHOW server_version_num")))) // 10000
        finally:
            engine.dispose()
        tool = postgresql_tool("pg_restore", major)
        # One transaction: a failure leaves the database as empty as it was.
        args = [tool, "--single-transaction", "--exit-on-error", "--no-owner", "--no-acl"]
        run_tool([*args, "--no-password", f"--dbname={url.database}", str(copy)], url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
