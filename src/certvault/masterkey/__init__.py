"""Where the master key lives, behind one small Protocol (DESIGN.md §4)."""

from __future__ import annotations

import struct
from typing import Protocol

from certvault.errors import SealBroken


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


# Every wrapped blob starts with this header: its format names the provider kind that made it
# (and how), its version the master-key version; a chain of providers routes unwrap by it.
HEADER = struct.Struct(">BI")
FORMAT_FILE = 1
FORMAT_PKCS11_GCM = 2
FORMAT_PKCS11_KEY_WRAP = 3
KIND_OF_FORMAT = {
    FORMAT_FILE: "file",
    FORMAT_PKCS11_GCM: "pkcs11",
    FORMAT_PKCS11_KEY_WRAP: "pkcs11",
}


def blob_origin(blob: bytes) -> tuple[str, int]:
    """The provider kind and master-key version a wrapped blob was made with."""
    if len(blob) < HEADER.size:
        raise SealBroken("A wrapped key is truncated.")
    fmt, version = HEADER.unpack(blob[: HEADER.size])
    kind = KIND_OF_FORMAT.get(fmt)
    if kind is None:
        raise SealBroken("A wrapped key has an unknown format.")
    return kind, int(version)


class VersionedProvider(MasterKeyProvider, Protocol):
    """A provider whose versions can be listed, added (rotation) and removed (retirement)."""

    def versions(self) -> list[int]:
        """Versions present, oldest first."""
        ...

    def create_version(self) -> int:
        """Make the next version, which new wraps then use; returns it."""
        ...

    def retire_version(self, version: int) -> None:
        """Remove an old version for good; never the one new wraps use."""
        ...
