"""What the services need from the outside world, built once per process."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from certvault.config import Settings
from certvault.db.engine import Database
from certvault.errors import ConfigurationError
from certvault.masterkey import MasterKeyProvider
from certvault.masterkey.file import FileMasterKeyProvider
from certvault.services.audit_heads import AuditHeadStore


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Ports:
    settings: Settings
    db: Database
    master_key: MasterKeyProvider
    audit_heads: AuditHeadStore
    clock: Callable[[], datetime] = _utcnow
    # The audit MAC key is unwrapped once per process; it never leaves memory.
    cache: dict[str, bytes] = field(default_factory=dict, repr=False)

    def close(self) -> None:
        self.db.dispose()


def master_key_provider(settings: Settings) -> MasterKeyProvider:
    if settings.master_key_provider != "file":
        raise ConfigurationError(
            f"Unknown master-key provider {settings.master_key_provider[:40]!r}; "
            "this version supports 'file'."
        )
    return FileMasterKeyProvider(settings.effective_master_key_dir)


def open_ports(settings: Settings) -> Ports:
    return Ports(
        settings=settings,
        db=Database(settings.effective_database_url),
        master_key=master_key_provider(settings),
        audit_heads=AuditHeadStore(settings.effective_audit_head_dir),
    )


def operator_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"operator:{user}@{socket.gethostname()}"
