"""What the services need from the outside world, built once per process."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from certvault.config import Settings
from certvault.crypto.keys import PrivateKey
from certvault.db.engine import Database
from certvault.errors import ConfigurationError
from certvault.masterkey import MasterKeyProvider
from certvault.masterkey.file import FileMasterKeyProvider
from certvault.services.kernel.witness import AuditHeadStore, Witness

if TYPE_CHECKING:
    from certvault.masterkey.pkcs11 import Pkcs11MasterKeyProvider

# Where a session finds the ports it was opened with (row seals need the master key and witness).
PORTS_INFO = "certvault_ports"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Ports:
    settings: Settings
    db: Database
    master_key: MasterKeyProvider
    audit_heads: Witness
    clock: Callable[[], datetime] = _utcnow
    # The audit MAC key is unwrapped once per process; it never leaves memory.
    cache: dict[str, bytes] = field(default_factory=dict, repr=False)
    # Service keys certvault signs with, validated once (CA keys); never released.
    signing_keys: dict[str, PrivateKey] = field(default_factory=dict, repr=False)
    # Account ids to uuids, for row seals (an account's uuid never changes).
    account_uuids: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.db.session_info[PORTS_INFO] = self

    def close(self) -> None:
        self.db.dispose()


def master_key_provider(settings: Settings) -> MasterKeyProvider:
    if settings.master_key_provider == "pkcs11":
        from certvault.masterkey.chain import MasterKeyChain

        token = pkcs11_provider(settings)
        files = file_master_key_provider(settings)
        # A file key still on disk keeps opening what it wrapped until `kek migrate` is done.
        return MasterKeyChain(token, files) if files.versions_on_disk() else MasterKeyChain(token)
    if settings.master_key_provider != "file":
        raise ConfigurationError(
            f"Unknown master-key provider {settings.master_key_provider[:40]!r}; "
            "this version supports 'file' and 'pkcs11'."
        )
    return file_master_key_provider(settings)


def pkcs11_provider(settings: Settings) -> Pkcs11MasterKeyProvider:
    """The token provider the CERTVAULT_PKCS11_* settings describe (its session opens lazily)."""
    from certvault.masterkey.pkcs11 import Pkcs11MasterKeyProvider, read_pin_file

    if not settings.pkcs11_token_label:
        raise ConfigurationError("Set CERTVAULT_PKCS11_TOKEN_LABEL to use the pkcs11 provider.")
    if settings.pkcs11_pin_file is not None:
        pin = read_pin_file(settings.pkcs11_pin_file.expanduser())
    elif settings.pkcs11_pin is not None:
        pin = settings.pkcs11_pin.get_secret_value()
    else:
        raise ConfigurationError(
            "Set CERTVAULT_PKCS11_PIN_FILE (a 0600 file) or CERTVAULT_PKCS11_PIN for the token."
        )
    return Pkcs11MasterKeyProvider(
        settings.pkcs11_module,
        settings.pkcs11_token_label,
        settings.pkcs11_key_label,
        pin,
        mechanism=settings.pkcs11_mechanism,
    )


def file_master_key_provider(settings: Settings) -> FileMasterKeyProvider:
    key_dir = settings.effective_master_key_dir
    db_dir = settings.database_dir if settings.database_url is None else None
    if db_dir is not None and (key_dir == db_dir or db_dir in key_dir.parents):
        # A copy of the database directory would then carry the key that opens it.
        raise ConfigurationError(
            "The master-key directory must not be inside the database directory "
            f"({db_dir}); set CERTVAULT_MASTER_KEY_DIR elsewhere."
        )
    return FileMasterKeyProvider(key_dir)


def witness_store(settings: Settings) -> Witness:
    """The file store under the home for one machine; Redis for several nodes (DESIGN.md §8)."""
    if settings.audit_witness_url:
        from certvault.services.kernel.witness_redis import RedisWitness

        return RedisWitness(settings.audit_witness_url, settings.audit_witness_prefix)
    return AuditHeadStore(settings.effective_audit_head_dir)


def open_ports(settings: Settings) -> Ports:
    # The home holds the database, the master key and the audit heads: private before anything.
    settings.home_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Ports(
        settings=settings,
        db=Database(settings.effective_database_url),
        master_key=master_key_provider(settings),
        audit_heads=witness_store(settings),
    )


def operator_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"operator:{user}@{socket.gethostname()}"
