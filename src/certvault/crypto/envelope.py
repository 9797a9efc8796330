"""Envelope sealing with AES-256-GCM (DESIGN.md §4).

A private key is sealed with its own random data key; the data key is wrapped by the account key.
Associated data binds each blob to the ids it belongs to, so a blob copied onto another row fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
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


def data_key_aad_of(account_uuid: str) -> Callable[[str, int], bytes]:
    """:func:`data_key_aad` for one account, its fixed parts encoded once: a rotation makes two
    for each of an account's keys, and encoding every part afresh cost more than the AES-GCM."""
    head = _aad("certvault/data-key", SEAL_FORMAT, account_uuid)

    def aad(escrowed_key_uuid: str, account_key_version: int) -> bytes:
        key, version = escrowed_key_uuid.encode(), str(account_key_version).encode()
        return b"".join(
            (head, len(key).to_bytes(2, "big"), key, len(version).to_bytes(2, "big"), version)
        )

    return aad


def private_key_aad(account_uuid: str, escrowed_key_uuid: str, spki_sha256: bytes) -> bytes:
    # Nothing that rotation changes goes in here: rotation rewraps data keys, never key blobs.
    return _aad("certvault/private-key", SEAL_FORMAT, account_uuid, escrowed_key_uuid, spki_sha256)


def service_key_aad(service_key_uuid: str, purpose: str) -> bytes:
    return _aad("certvault/service-key", SEAL_FORMAT, service_key_uuid, purpose)


class Rewrap:
    """Moves data keys from one wrapping key to another (an account-key rotation, DESIGN.md §4).

    Each data key is opened with the old key and its old associated data, then sealed with the
    new key under the new associated data. The key objects are made once, not once per data key:
    at a hundred thousand data keys the rotation's cost should be the database's, not ours.
    """

    def __init__(self, old_key: bytes, new_key: bytes) -> None:
        self._old, self._new = AESGCM(old_key), AESGCM(new_key)

    def many(
        self, items: Iterable[tuple[bytes, bytes, bytes, bytes]]
    ) -> Iterator[tuple[bytes, bytes] | None]:
        """For each (nonce, wrapped data key, old associated data, new associated data): the new
        (nonce, wrapped data key), or None where the old wrapping does not open."""
        decrypt, encrypt, urandom = self._old.decrypt, self._new.encrypt, os.urandom
        for nonce, ciphertext, old_aad, new_aad in items:
            try:
                data_key = decrypt(nonce, ciphertext, old_aad)
            except InvalidTag:
                yield None
                continue
            fresh = urandom(NONCE_BYTES)
            yield fresh, encrypt(fresh, data_key, new_aad)
