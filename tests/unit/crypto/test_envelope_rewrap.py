"""Rewrapping data keys (an account-key rotation), bytes in, bytes out."""

from __future__ import annotations

import random
import uuid

import pytest

from certvault.crypto import envelope
from certvault.errors import SealBroken

ACCOUNT = "6f1c8a0e-4d2b-4a57-9c1e-3b5f7d9e2a10"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def test_the_account_bound_aad_is_the_same_as_data_key_aad():
    rng = random.Random(14)
    aad = envelope.data_key_aad_of(ACCOUNT)
    for version in (1, 2, 9, 10, 99, 100, 65_535, 2**40):
        key_uuid = _uuid(rng)
        assert aad(key_uuid, version) == envelope.data_key_aad(ACCOUNT, key_uuid, version)
    other = envelope.data_key_aad_of("7f1c8a0e-4d2b-4a57-9c1e-3b5f7d9e2a10")
    assert other("k", 1) != aad("k", 1)


def test_rewrapped_data_keys_open_only_under_the_new_key_and_new_aad():
    old_key, new_key = envelope.new_key(), envelope.new_key()
    aad = envelope.data_key_aad_of(ACCOUNT)
    data_keys = [envelope.new_key() for _ in range(5)]
    sealed = [envelope.seal(old_key, k, aad(f"key-{i}", 1)) for i, k in enumerate(data_keys)]
    items = [
        (s.nonce, s.ciphertext, aad(f"key-{i}", 1), aad(f"key-{i}", 2))
        for i, s in enumerate(sealed)
    ]

    done = list(envelope.Rewrap(old_key, new_key).many(items))

    for i, (new, data_key) in enumerate(zip(done, data_keys, strict=True)):
        assert new is not None
        nonce, wrapped = new
        assert nonce != sealed[i].nonce and len(nonce) == envelope.NONCE_BYTES
        moved = envelope.Sealed(nonce, wrapped)
        assert envelope.open_sealed(new_key, moved, aad(f"key-{i}", 2)) == data_key
        for key, bound in ((old_key, aad(f"key-{i}", 2)), (new_key, aad(f"key-{i}", 1))):
            with pytest.raises(SealBroken):
                envelope.open_sealed(key, moved, bound)


def test_a_wrapping_that_does_not_open_gives_none_and_the_others_go_on():
    old_key, new_key = envelope.new_key(), envelope.new_key()
    good = envelope.seal(old_key, envelope.new_key(), b"a")
    flipped = bytes([good.ciphertext[0] ^ 1]) + good.ciphertext[1:]
    items = [
        (good.nonce, flipped, b"a", b"b"),  # altered blob
        (good.nonce, good.ciphertext, b"other", b"b"),  # moved to another key's row
        (good.nonce, good.ciphertext[:-1], b"a", b"b"),  # cut short
        (good.nonce, good.ciphertext, b"a", b"b"),
    ]
    done = list(envelope.Rewrap(old_key, new_key).many(items))
    assert done[:3] == [None, None, None] and done[3] is not None
