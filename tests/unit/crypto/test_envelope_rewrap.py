"""Rewrapping data keys (an account-key rotation), bytes in, bytes out."""

from __future__ import annotations

import random
import uuid

import pytest

from certvault.crypto import envelope
from certvault.errors import SealBroken

ACCOUNT = "6f1c8a0e-4d2b-4a57-9c1e-3b5f7d9e2a10"


@pytest.mark.parametrize(("old", "new"), [(1, 2), (9, 10), (99, 100), (65_535, 65_536)])
def test_rewrapped_data_keys_open_only_under_the_new_key_and_version(old, new):
    rng = random.Random(old)
    old_key, new_key = envelope.new_key(), envelope.new_key()
    # More keys than one draw of nonces, so that a second draw is used too.
    keys = [(str(uuid.UUID(int=rng.getrandbits(128))), envelope.new_key()) for _ in range(300)]
    sealed = [
        envelope.seal(old_key, data_key, envelope.data_key_aad(ACCOUNT, key_uuid, old))
        for key_uuid, data_key in keys
    ]
    items = [(u, s.nonce, s.ciphertext) for (u, _), s in zip(keys, sealed, strict=True)]

    done = list(envelope.DataKeyRewrap(ACCOUNT, old_key, old, new_key, new).many(items))

    assert len({n for n, _ in done}) == len(done)  # a fresh nonce for each
    for (key_uuid, data_key), moved in zip(keys, done, strict=True):
        assert moved is not None
        rewrapped = envelope.Sealed(*moved)
        bound = envelope.data_key_aad(ACCOUNT, key_uuid, new)
        assert envelope.open_sealed(new_key, rewrapped, bound) == data_key
        for key, aad in (
            (old_key, bound),
            (new_key, envelope.data_key_aad(ACCOUNT, key_uuid, old)),
            (new_key, envelope.data_key_aad(ACCOUNT, keys[0][0] + "x", new)),
        ):
            with pytest.raises(SealBroken):
                envelope.open_sealed(key, rewrapped, aad)


def test_a_wrapping_that_does_not_open_gives_none_and_the_others_go_on():
    old_key, new_key = envelope.new_key(), envelope.new_key()
    good = envelope.seal(old_key, envelope.new_key(), envelope.data_key_aad(ACCOUNT, "k", 1))
    flipped = bytes([good.ciphertext[0] ^ 1]) + good.ciphertext[1:]
    items = [
        ("k", good.nonce, flipped),  # altered blob
        ("other", good.nonce, good.ciphertext),  # moved from another key's row
        ("k", good.nonce, good.ciphertext[:-1]),  # cut short
        ("k", good.nonce, good.ciphertext),
    ]
    done = list(envelope.DataKeyRewrap(ACCOUNT, old_key, 1, new_key, 2).many(items))
    assert done[:3] == [None, None, None] and done[3] is not None
    # Under another account's name it opens nowhere either.
    elsewhere = envelope.DataKeyRewrap(ACCOUNT[:-1] + "1", old_key, 1, new_key, 2)
    assert list(elsewhere.many(items[3:])) == [None]
