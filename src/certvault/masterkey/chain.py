"""Several master-key providers as one: new wraps by the first, unwraps by whichever made the blob.

This is how certvault moves from the file key to a token without downtime: nodes configured with
``pkcs11`` still open the blobs the file key made (the blob's format names its maker), until
`certvault kek migrate` has rewrapped them all and the file key is retired.
"""

from __future__ import annotations

from certvault.masterkey import VersionedProvider, blob_origin
from certvault.masterkey.file import MasterKeyMissing


class MasterKeyChain:
    def __init__(self, primary: VersionedProvider, *readers: VersionedProvider) -> None:
        self.primary = primary
        self.name = primary.name
        self.members: tuple[VersionedProvider, ...] = (primary, *readers)
        self._by_kind = {p.name: p for p in reversed(self.members)}

    @property
    def version(self) -> int:
        return self.primary.version

    def wrap(self, data: bytes, aad: bytes) -> bytes:
        return self.primary.wrap(data, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        kind, version = blob_origin(blob)
        provider = self._by_kind.get(kind)
        if provider is None:
            raise MasterKeyMissing(
                f"A wrapped key was made by the {kind} master key (version {version}), "
                "which is not configured here."
            )
        return provider.unwrap(blob, aad)

    def is_available(self) -> bool:
        return self.primary.is_available()

    def member(self, kind: str) -> VersionedProvider | None:
        return self._by_kind.get(kind)


def members_of(provider: object) -> tuple[VersionedProvider, ...]:
    """The providers behind ``provider``, the one new wraps use first."""
    if isinstance(provider, MasterKeyChain):
        return provider.members
    return (provider,)  # type: ignore[return-value]
