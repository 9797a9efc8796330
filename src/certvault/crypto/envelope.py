"""Envelope sealing with AES-256-GCM (DESIGN.md §4).

A private key is sealed with its own random data key; the data key is wrapped by the account key.
Associated data binds each blob to the ids it belongs to, so a blob copied onto another row fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from certvault.errors import SealBroken

KEY_BYTES = 32
NONCE_BYTES = 12
SEAL_FORMAT = 1


@dataclass(frozen=True)
class Sealed:
    nonce: bytes
    ciphertext: bytes


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> Sealed:
    # A fresh data key per sealed object means a random 96-bit nonce is never reused under a key.
    nonce = os.urandom(NONCE_BYTES)
    return Sealed(nonce, AESGCM(key).encrypt(nonce, plaintext, aad))


def open_sealed(key: bytes, sealed: Sealed, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise SealBroken() from None


def _aad(*parts: str | bytes | int) -> bytes:
    encoded = []
    for part in parts:
        if isinstance(part, int):
            part = str(part)
        if isinstance(part, str):
            part = part.encode()
        encoded.append(len(part).to_bytes(2, "big") + part)
    return b"".join(encoded)


def account_key_aad(account_uuid: str, version: int) -> bytes:
    return _aad("certvault/account-key", SEAL_FORMAT, account_uuid, version)


def data_key_aad(account_uuid: str, escrowed_key_uuid: str, account_key_version: int) -> bytes:
    return _aad(
        "certvault/data-key", SEAL_FORMAT, account_uuid, escrowed_key_uuid, account_key_version
    )


def private_key_aad(account_uuid: str, escrowed_key_uuid: str, spki_sha256: bytes) -> bytes:
    # Nothing that rotation changes goes in here: rotation rewraps data keys, never key blobs.
    return _aad("certvault/private-key", SEAL_FORMAT, account_uuid, escrowed_key_uuid, spki_sha256)


def service_key_aad(service_key_uuid: str, purpose: str) -> bytes:
    return _aad("certvault/service-key", SEAL_FORMAT, service_key_uuid, purpose)


class DataKeyRewrap:
    """Moves an account's data keys from one account-key version to another (a rotation,
    DESIGN.md §4): each is opened with the old key under :func:`data_key_aad` naming the old
    version, and sealed with the new key under the same naming the new one.

    Built for a hundred thousand keys, whose rotation should cost the database's time, not ours:
    the key objects and the fixed parts of the associated data are made once, and fresh nonces
    are drawn from the system in blocks rather than one call per key.
    """

    _NONCES_PER_DRAW = 256

    def __init__(
        self, account_uuid: str, old_key: bytes, old_version: int, new_key: bytes, new_version: int
    ) -> None:
        self._old, self._new = AESGCM(old_key), AESGCM(new_key)
        self._head = _aad("certvault/data-key", SEAL_FORMAT, account_uuid)
        self._old_tail, self._new_tail = _aad(old_version), _aad(new_version)

    def many(
        self, items: Iterable[tuple[str, bytes, bytes]]
    ) -> Iterator[tuple[bytes, bytes] | None]:
        """For each (escrowed-key uuid, nonce, wrapped data key): the new (nonce, wrapped data
        key), or None where the old wrapping does not open (altered, or moved from another row)."""
        decrypt, encrypt = self._old.decrypt, self._new.encrypt
        head, old_tail, new_tail = self._head, self._old_tail, self._new_tail
        nonces, at = b"", 0
        for key_uuid, nonce, ciphertext in items:
            bound = head + _aad(key_uuid)
            try:
                data_key = decrypt(nonce, ciphertext, bound + old_tail)
            except InvalidTag:
                yield None
                continue
            if at == len(nonces):
                nonces, at = os.urandom(NONCE_BYTES * self._NONCES_PER_DRAW), 0
            fresh = nonces[at : at + NONCE_BYTES]
            at += NONCE_BYTES
            yield fresh, encrypt(fresh, data_key, bound + new_tail)
