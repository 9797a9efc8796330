"""How a blob is made inside a token: AES-GCM, or AES key wrap with an HMAC beside it.

The key objects are python-pkcs11 ``SecretKey`` objects of a token; no key value ever leaves it.
Both functions that open a blob return ``None`` when it fails authentication; a token error
propagates, for the provider to tell an outage from a bad blob.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from certvault.errors import ConfigurationError

NONCE = 12
TAG = 16
MAC = 32
_LENGTH = struct.Struct(">I")


def gcm_wrap(key: Any, header: bytes, data: bytes, aad: bytes) -> bytes:
    """header, a random 12-byte nonce, then ciphertext and tag; header and aad authenticated."""
    nonce = os.urandom(NONCE)
    params = GCMParams(nonce, header + aad, TAG * 8)
    return header + nonce + key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=params)


def gcm_unwrap(key: Any, header: bytes, body: bytes, aad: bytes) -> bytes:
    params = GCMParams(body[:NONCE], header + aad, TAG * 8)
    return bytes(key.decrypt(body[NONCE:], mechanism=Mechanism.AES_GCM, mechanism_param=params))


def key_wrap(session: Any, key: Any, mac_key: Any, header: bytes, data: bytes, aad: bytes) -> bytes:
    """header, the RFC 5649 wrap of ``data``, then an HMAC-SHA256 binding all three to ``aad``."""
    if len(data) % 8 or not 16 <= len(data) <= 1024:
        # Everything certvault wraps is a 256-bit key; whole blocks avoid padding quirks.
        raise ConfigurationError("Key wrapping takes 16 to 1024 bytes in 8-byte blocks.")
    # The bytes enter the token as a short-lived session object, so that C_WrapKey can wrap
    # them; it is destroyed at once.
    carrier = session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
            Attribute.TOKEN: False,
            Attribute.VALUE: data,
            Attribute.EXTRACTABLE: True,
            Attribute.SENSITIVE: False,
        }
    )
    try:
        wrapped = key.wrap_key(carrier, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    finally:
        carrier.destroy()
    tag = mac_key.sign(_mac_input(header, wrapped, aad), mechanism=Mechanism.SHA256_HMAC)
    return header + wrapped + bytes(tag)


def key_unwrap(key: Any, mac_key: Any, header: bytes, body: bytes, aad: bytes) -> bytes | None:
    wrapped, tag = body[:-MAC], body[-MAC:]
    # The MAC first: nothing unauthenticated is unwrapped.
    if not mac_key.verify(_mac_input(header, wrapped, aad), tag, mechanism=Mechanism.SHA256_HMAC):
        return None
    carrier = key.unwrap_key(
        ObjectClass.SECRET_KEY,
        KeyType.GENERIC_SECRET,
        wrapped,
        mechanism=Mechanism.AES_KEY_WRAP_PAD,
        store=False,
        template={Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False},
    )
    try:
        return bytes(carrier[Attribute.VALUE])
    finally:
        carrier.destroy()


def _mac_input(header: bytes, wrapped: bytes, aad: bytes) -> bytes:
    # Lengths first, so that no split of wrapped bytes and associated data reads as another.
    return header + _LENGTH.pack(len(wrapped)) + wrapped + _LENGTH.pack(len(aad)) + aad
