"""The manifest of a backup: what it holds, authenticated by a MAC keyed through the master key.

The MAC key is a service secret (purpose ``backup-manifest``). Its wrapped form travels in the
manifest, so a restore opens it with the master-key provider alone, before anything of the backup
is read or written: a backup of another installation (another master key), or one whose manifest
was edited, is refused at once. The wrapped secret is no more use without the master key than
the wrapped keys in the database beside it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from certvault.db.models import ServiceKey
from certvault.errors import CertvaultError, SealBroken
from certvault.masterkey import MasterKeyProvider
from certvault.masterkey.file import MasterKeyMissing
from certvault.services.kernel import keyring

FORMAT: Literal["certvault-backup"] = "certvault-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAC_KEY_PURPOSE = "backup-manifest"
# A manifest names one file and a few counts; the witness heads grow with the accounts (about
# 150 bytes each), so this holds tens of thousands of accounts and no more.
MANIFEST_MAX_BYTES = 8 * 1024 * 1024
DATA_FILES = {"sqlite": "database.sqlite3", "postgresql": "database.pgdump"}
DatabaseKind = Literal["sqlite", "postgresql"]
_HEX64 = r"^[0-9a-f]{64}$"
_B64 = r"^[A-Za-z0-9+/=]{1,4096}$"
_UUID = r"^[0-9a-f-]{36}$"


class BackupInvalid(CertvaultError):
    """The backup is incomplete, damaged or not a certvault backup; nothing was restored."""

    code = "backup_invalid"
    status = 422


class BackupNotAuthentic(CertvaultError):
    """The backup's manifest does not verify under this installation's master key."""

    code = "backup_not_authentic"
    status = 422


class BackupUnsupported(CertvaultError):
    """The backup was made by a newer certvault than this one."""

    code = "backup_unsupported"
    status = 422


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BackupFile(_Strict):
    name: str = Field(max_length=64)
    sha256: str = Field(pattern=_HEX64)
    size: int = Field(ge=0)


class WitnessHead(_Strict):
    chain: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    seq: int = Field(ge=0)
    mac: str = Field(max_length=64)


class MasterKeyNeeds(_Strict):
    provider: str = Field(max_length=40)
    versions: list[int] = Field(max_length=1000)
    # Each version named with the provider kind that holds it ("file v1", "pkcs11 v2"): after a
    # migration into a token, a backup may need versions of both.
    held_by: list[str] = Field(default_factory=list, max_length=1000)


class MacKey(_Strict):
    """The manifest's MAC key as the database keeps it: wrapped by the master key."""

    uuid: str = Field(pattern=_UUID)
    nonce: str = Field(pattern=_B64)
    ciphertext: str = Field(pattern=_B64)
    wrapped_data_key: str = Field(pattern=_B64)


class Manifest(_Strict):
    format: Literal["certvault-backup"]
    format_version: int
    certvault_version: str = Field(max_length=40)
    installation: str = Field(pattern=_UUID)
    database_kind: DatabaseKind
    alembic_revision: str = Field(pattern=r"^[0-9A-Za-z_]{1,32}$")
    server_version: str | None = Field(default=None, max_length=200)
    created_at: str = Field(max_length=40)
    files: list[BackupFile] = Field(max_length=16)
    counts: dict[str, int]
    # For reference only: a restore never writes these back (DESIGN.md §8).
    witness_heads: list[WitnessHead] = Field(max_length=100_000)
    witness_generations: dict[str, int]
    master_key: MasterKeyNeeds
    mac_key: MacKey

    @property
    def data_file(self) -> BackupFile:
        return self.files[0]


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_mac(secret: bytes, body: Any) -> str:
    return hmac.new(secret, canonical(body), hashlib.sha256).hexdigest()


def mac_key_of(row: ServiceKey) -> MacKey:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return MacKey(
        uuid=row.uuid,
        nonce=b64(row.nonce),
        ciphertext=b64(row.ciphertext),
        wrapped_data_key=b64(row.wrapped_data_key),
    )


def wrapped_mac_key(mac_key: MacKey) -> ServiceKey:
    """The manifest's MAC key as a (detached) service-key row, to be opened by the provider."""
    return ServiceKey(
        uuid=mac_key.uuid,
        purpose=MAC_KEY_PURPOSE,
        nonce=base64.b64decode(mac_key.nonce),
        ciphertext=base64.b64decode(mac_key.ciphertext),
        wrapped_data_key=base64.b64decode(mac_key.wrapped_data_key),
    )


def write_manifest(directory: Path, manifest: Manifest, secret: bytes) -> None:
    body = manifest.model_dump(mode="json")
    data = json.dumps({"manifest": body, "mac": manifest_mac(secret, body)}, indent=1).encode()
    write_new_file(directory / MANIFEST, data)


def write_new_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def check_name(name: str) -> None:
    """A file name of the backup: a plain name in the backup's own folder."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name) or ".." in name:
        raise BackupInvalid(f"The backup names a path outside the backup: {name[:80]!r}.")


def open_backup_file(directory: Path, name: str) -> int:
    """A file of the backup, opened for reading: a plain file in the backup's own folder, never
    a link or a path elsewhere."""
    check_name(name)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise BackupInvalid(f"There is no backup at {directory}.") from None
    except NotADirectoryError:
        raise BackupInvalid(
            f"{directory} is a file, not a certvault backup (a folder made by `certvault backup`)."
        ) from None
    except OSError as exc:
        raise BackupInvalid(f"Cannot open the backup at {directory}: {exc.strerror}.") from None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        raise BackupInvalid(f"The backup at {directory} has no {name}.") from None
    except OSError as exc:
        raise BackupInvalid(f"Cannot read {name} of the backup: {exc.strerror}.") from None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BackupInvalid(f"{name} of the backup is not a plain file.")
    return fd


def read_manifest(directory: Path, master_key: MasterKeyProvider) -> Manifest:
    """The backup's manifest, refused unless it is whole, in a form this version reads, and
    its MAC verifies under the master key configured here."""
    manifest, body, mac = parse_manifest(directory)
    secret = _open_mac_key(manifest.mac_key, master_key)
    if not hmac.compare_digest(mac, manifest_mac(secret, body)):
        raise BackupNotAuthentic(
            "The backup's manifest MAC does not verify: the manifest was altered."
        )
    return manifest


def parse_manifest(directory: Path) -> tuple[Manifest, dict[str, Any], str]:
    """The backup's manifest in a form this version reads, with the body and MAC as read: not
    yet authenticated (:func:`read_manifest` is)."""
    fd = open_backup_file(directory, MANIFEST)
    try:
        raw = os.read(fd, MANIFEST_MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MANIFEST_MAX_BYTES:
        raise BackupInvalid(f"The backup's manifest is larger than {MANIFEST_MAX_BYTES} bytes.")
    if not raw.strip():
        raise BackupInvalid("The backup's manifest is empty.")
    try:
        outer = json.loads(raw)
    except (ValueError, RecursionError):
        raise BackupInvalid("The backup's manifest is not JSON (truncated or damaged).") from None
    if not isinstance(outer, dict) or set(outer) != {"manifest", "mac"}:
        raise BackupInvalid("The backup's manifest is not a certvault backup manifest.")
    body, mac = outer["manifest"], outer["mac"]
    if not isinstance(body, dict) or not isinstance(mac, str) or not re.match(_HEX64, mac):
        raise BackupInvalid("The backup's manifest is not a certvault backup manifest.")
    if body.get("format") != FORMAT:
        raise BackupInvalid("The backup's manifest is not a certvault backup manifest.")
    version = body.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BackupInvalid("The backup's manifest has no valid format version.")
    if version > FORMAT_VERSION:
        raise BackupUnsupported(
            f"The backup has format version {version}; this certvault reads up to "
            f"{FORMAT_VERSION}. Restore it with the certvault version that made it."
        )
    try:
        manifest = Manifest.model_validate(body)
    except ValidationError as exc:
        # Only where the problem is, never the values (the manifest is untrusted input).
        where = ".".join(str(part) for part in exc.errors()[0]["loc"])
        raise BackupInvalid(f"The backup's manifest is not valid (at {where[:80]}).") from None
    for named in manifest.files:
        check_name(named.name)
    expected = DATA_FILES[manifest.database_kind]
    if len(manifest.files) != 1 or manifest.files[0].name != expected:
        raise BackupInvalid(f"The backup's manifest must name exactly one file, {expected}.")
    return manifest, body, mac


def _open_mac_key(mac_key: MacKey, master_key: MasterKeyProvider) -> bytes:
    try:
        return keyring.open_sealed_service_key(master_key, wrapped_mac_key(mac_key))
    except MasterKeyMissing:
        raise MasterKeyMissing(
            "The master key this backup was made with is not configured here. Put it in place "
            "(or restore with --share-file to rebuild it from custodians' shares) and try again."
        ) from None
    except (SealBroken, ValueError):
        raise BackupNotAuthentic(
            "The backup does not verify under the master key configured here: it was made by "
            "another installation (another master key), or its manifest was altered. Restore "
            "it where the master key it was made with is configured."
        ) from None
