"""`certvault backup`: a consistent snapshot of the database, escrowed keys still wrapped, with a
manifest whose MAC is keyed through the master key. Never the master key, the PKCS#11 PIN or the
witness as restorable state: a backup is useless without the master key (DESIGN.md §4, §8).

SQLite is copied with its online backup API, which reads one consistent state while the server
goes on writing. PostgreSQL is dumped by ``pg_dump --snapshot`` inside a REPEATABLE READ
transaction that exported that snapshot (``pg_export_snapshot()``) and stays open until the dump
is done: the counts, schema revision and chain heads in the manifest are read in that same
transaction, so they describe exactly the rows in the dump (pg_dump's own transaction alone
would be consistent, but the manifest could not be read from it).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, func, select, text
from sqlalchemy.engine import URL

from certvault import __version__
from certvault.db.models import (
    Account,
    AccountKey,
    AuditEvent,
    AuditHead,
    Certificate,
    EscrowedKey,
    Installation,
    ServiceKey,
)
from certvault.errors import CertvaultError, ConfigurationError, InvalidInput, SealBroken
from certvault.masterkey import blob_origin
from certvault.services.audit import log as audit
from certvault.services.kernel import keyring, seals
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.durable import sync_directory
from certvault.services.kernel.ports import Ports
from certvault.services.vault.backup_manifest import (
    DATA_FILES,
    FORMAT,
    FORMAT_VERSION,
    MAC_KEY_PURPOSE,
    BackupFile,
    DatabaseKind,
    Manifest,
    MasterKeyNeeds,
    WitnessHead,
    mac_key_of,
    write_manifest,
)

_CHUNK = 1024 * 1024


class BackupExists(CertvaultError):
    """Something exists at the backup's path already; a backup never overwrites anything."""

    code = "backup_exists"
    status = 409


class BackupToolFailed(ConfigurationError):
    """The PostgreSQL client tool could not be run, or failed."""

    code = "backup_tool_failed"


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: Manifest


def make_backup(ports: Ports, actor: Actor, out: Path) -> BackupResult:
    """Write a backup into the new folder ``out`` (0700, files 0600); refuse if it exists."""
    out = Path(os.path.abspath(out))
    if os.path.lexists(out):
        raise BackupExists(f"{out} exists; a backup is written to a new path only.")
    if not out.parent.is_dir():
        raise InvalidInput(f"The folder {out.parent} does not exist.")
    keyring.service_secrets(ports, MAC_KEY_PURPOSE)  # made (and so in the snapshot) before it
    with ports.db.read() as session:
        mac_row = session.scalars(
            select(ServiceKey).where(ServiceKey.purpose == MAC_KEY_PURPOSE).order_by(ServiceKey.id)
        ).first()
        account_uuids = list(session.scalars(select(Account.uuid)))
    assert mac_row is not None
    secret = keyring.open_service_key(ports, mac_row)
    # Read before the snapshot: a head is written after its commit, so the snapshot holds it.
    heads = [WitnessHead(chain=h.chain, seq=h.seq, mac=h.mac) for h in ports.audit_heads.all()]
    generations = {u: ports.audit_heads.generation(u) for u in [seals.INSTALLATION, *account_uuids]}
    try:
        os.mkdir(out, 0o700)
    except FileExistsError:
        raise BackupExists(f"{out} exists; a backup is written to a new path only.") from None
    except OSError as exc:
        raise InvalidInput(f"Cannot make the folder {out}: {exc.strerror}.") from None
    try:
        kind: DatabaseKind = "sqlite" if ports.db.is_sqlite else "postgresql"
        target = out / DATA_FILES[kind]
        if ports.db.is_sqlite:
            facts = _sqlite_snapshot(Path(str(ports.db.url.database)), target)
        else:
            facts = _postgresql_snapshot(ports, target)
        size, digest = file_digest(target)
        manifest = Manifest(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            certvault_version=__version__,
            installation=facts.installation,
            database_kind=kind,
            alembic_revision=facts.revision,
            server_version=facts.server_version,
            created_at=facts.created_at,
            files=[BackupFile(name=target.name, sha256=digest, size=size)],
            counts=facts.counts,
            witness_heads=heads,
            witness_generations=generations,
            master_key=MasterKeyNeeds(
                provider=ports.master_key.name, versions=facts.versions, held_by=facts.held_by
            ),
            mac_key=mac_key_of(mac_row),
        )
        write_manifest(out, manifest, secret)
        sync_directory(out)
        sync_directory(out.parent)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise

    def work(session: Any) -> None:
        audit.record(
            session,
            ports,
            account=None,
            actor=actor,
            action="installation.backup",
            target_type="backup",
            target_id=digest[:64],
            details={"created_at": manifest.created_at, **manifest.counts},
        )

    ports.db.run(work)
    return BackupResult(out, manifest)


@dataclass(frozen=True)
class _Facts:
    installation: str
    revision: str
    created_at: str
    counts: dict[str, int]
    versions: list[int]
    held_by: list[str]
    server_version: str | None = None


def _facts(connection: Connection, created_at: str) -> _Facts:
    """What the manifest says of the snapshot, read from the snapshot itself."""

    def count(model: Any, *where: Any) -> int:
        return int(connection.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    installation = connection.scalar(select(Installation.uuid).limit(1))
    revision = connection.scalar(text("SELECT version_num FROM alembic_version"))
    if installation is None or revision is None:
        raise ConfigurationError("The database holds no certvault installation to back up.")
    blobs = [*connection.scalars(select(AccountKey.wrapped_key))]
    blobs += connection.scalars(select(ServiceKey.wrapped_data_key))
    origins: set[tuple[str, int]] = set()
    for blob in blobs:
        try:
            origins.add(blob_origin(blob))
        except SealBroken:  # not a blob any provider made: `certvault verify` names it
            continue
    return _Facts(
        installation=str(installation),
        revision=str(revision),
        created_at=created_at,
        counts={
            "accounts": count(Account),
            "escrowed_keys": count(EscrowedKey),
            "escrowed_keys_live": count(EscrowedKey, EscrowedKey.destroyed_at.is_(None)),
            "certificates": count(Certificate),
            "audit_events": count(AuditEvent),
            "audit_chains": count(AuditHead),
        },
        versions=sorted({version for _, version in origins}),
        held_by=[f"{kind} v{version}" for kind, version in sorted(origins)],
    )


def _sqlite_snapshot(source: Path, target: Path) -> _Facts:
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # one consistent state, also while the server writes
            # One self-contained file: no WAL beside it.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    engine = create_engine(f"sqlite:///{target}")
    try:
        with engine.connect() as connection:
            now = connection.scalar(text("SELECT strftime('%Y-%m-%dT%H:%M:%SZ', 'now')"))
            return _facts(connection, str(now))
    finally:
        engine.dispose()


def _postgresql_snapshot(ports: Ports, target: Path) -> _Facts:
    url = ports.db.url
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with ports.db.engine.connect() as connection:
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                connection.execute(text("SET TRANSACTION READ ONLY"))
                snapshot = str(connection.execute(text("SELECT pg_export_snapshot()")).scalar())
                server = str(connection.scalar(text("SHOW server_version")))
                major = int(str(connection.scalar(text("SHOW server_version_num")))) // 10000
                # The server's time (of this transaction), not this node's.
                now = connection.scalar(
                    text(
                        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                    )
                )
                facts = _facts(connection, str(now))
                tool = postgresql_tool("pg_dump", major)
                args = [tool, "--format=custom", "--no-password", f"--snapshot={snapshot}"]
                run_tool(args, url, stdout=fd)
                os.fsync(fd)
    finally:
        os.close(fd)
    return replace(facts, server_version=server)


def postgresql_tool(name: str, server_major: int) -> str:
    """``pg_dump``/``pg_restore`` of the server's major version or newer (an older client
    refuses a newer server)."""
    candidates = [f"/usr/lib/postgresql/{server_major}/bin/{name}", shutil.which(name)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            try:
                shown = subprocess.run(
                    [candidate, "--version"], capture_output=True, text=True, timeout=30
                ).stdout
            except OSError:
                continue
            found = re.search(r"(\d+)(?:\.\d+)?", shown)
            if found and int(found.group(1)) >= server_major:
                return candidate
    raise BackupToolFailed(
        f"{name} of PostgreSQL {server_major} or newer is needed; install the Debian package "
        "postgresql-client."
    )


def run_tool(args: list[str], url: URL, **kwargs: Any) -> None:
    """Run a PostgreSQL client tool on the database ``url`` names. The password goes in the
    environment, never on the command line (where `ps` shows it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    named = {
        "PGHOST": url.host or url.query.get("host"),
        "PGPORT": str(url.port) if url.port else None,
        "PGUSER": url.username,
        "PGPASSWORD": url.password,
        "PGDATABASE": url.database,
        "PGSSLMODE": url.query.get("sslmode"),
    }
    env.update({k: str(v) for k, v in named.items() if v})
    try:
        done = subprocess.run(
            args, env=env, stderr=subprocess.PIPE, text=True, timeout=24 * 3600, **kwargs
        )
    except OSError as exc:
        raise BackupToolFailed(f"{Path(args[0]).name} could not be run: {exc.strerror}.") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
        said = lines[-1][:300] if lines else "no message"
        raise BackupToolFailed(f"{Path(args[0]).name} failed ({done.returncode}): {said}")


def file_digest(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
