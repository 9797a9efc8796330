"""argon2 for administrator passwords, access codes and Secret IDs, and what counts as text."""

from __future__ import annotations

from argon2 import PasswordHasher

from certvault.services.kernel.ports import Ports


def password_hasher(ports: Ports) -> PasswordHasher:
    return PasswordHasher(
        time_cost=ports.settings.argon2_time_cost,
        memory_cost=ports.settings.argon2_memory_kib,
        parallelism=1,
    )


def is_text(value: str) -> bool:
    """Printable text that survives UTF-8 (JSON may carry lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return value.isprintable()
