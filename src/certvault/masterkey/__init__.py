"""Where the master key lives, behind one small Protocol (DESIGN.md §4)."""

from __future__ import annotations

from typing import Protocol


class MasterKeyProvider(Protocol):
    """Wraps and unwraps small secrets (account keys, service-key data keys) under the master key.

    It never hands out the master key itself, so that an HSM can stand behind it.
    """

    name: str

    @property
    def version(self) -> int:
        """The version new wraps are made with."""
        ...

    def wrap(self, data: bytes, aad: bytes) -> bytes:
        """Encrypt ``data`` bound to ``aad``; the result names the master-key version used."""
        ...

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Reverse :meth:`wrap`; raises ``SealBroken`` if the blob or ``aad`` was altered."""
        ...

    def is_available(self) -> bool:
        """Whether the master key can be used right now (for readiness checks)."""
        ...
