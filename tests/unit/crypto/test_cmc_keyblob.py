"""The Windows PRIVATEKEYBLOB: written as openssl writes it, read only when all numbers agree."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from certvault.crypto import cmc
from certvault.crypto.cmc import keyblob
from certvault.errors import ArchivedKeyUndecryptable
from tests import cmc_builder as builder


def numbers(key):
    return key.private_numbers()


@pytest.fixture(scope="module")
def alice(cmc_vectors):
    return cmc_vectors.key("alice-rsa2048")


@pytest.mark.parametrize("name", ["alice-rsa2048", "bob-rsa3072"])
def test_private_key_blob_matches_openssl_both_ways(cmc_vectors, name):
    blob = cmc_vectors.data(f"{name}.blob")  # openssl rsa -outform MSBLOB
    key = cmc_vectors.key(name)
    assert cmc.private_key_blob(key) == blob
    assert numbers(cmc.rsa_key_from_private_key_blob(blob)) == numbers(key)


def test_a_blob_round_trips(cmc_vectors):
    for name in ("rsa2048-1", "rsa3072", "rsa4096"):
        key = cmc_vectors.pool_key(name)
        blob = cmc.private_key_blob(key)
        assert numbers(cmc.rsa_key_from_private_key_blob(blob)) == numbers(key)


def test_a_signature_key_blob_is_read_too(alice):
    blob = cmc.private_key_blob(alice, algorithm=0x2400)  # CALG_RSA_SIGN
    assert numbers(cmc.rsa_key_from_private_key_blob(blob)) == numbers(alice)


def test_an_inconsistent_blob_is_refused_with_the_one_error(cmc_vectors):
    blob = cmc_vectors.data("alice-rsa2048.blob")
    full, half = 256, 128
    n_at, p_at = 20, 20 + full
    blobs = [
        b"",
        blob[:19],
        blob[:-1],
        blob + b"\x00",
        builder.flipped(blob, 4, 0xFF),  # aiKeyAlg
        builder.flipped(blob, 16, 1),  # public exponent made even
        builder.flipped(blob, n_at),  # modulus
        builder.flipped(blob, p_at),  # prime1
        builder.flipped(blob, p_at + 2 * half),  # exponent1
        builder.flipped(blob, p_at + 3 * half),  # exponent2
        builder.flipped(blob, p_at + 4 * half),  # coefficient
        builder.flipped(blob, p_at + 5 * half),  # private exponent
        cmc.private_key_blob(cmc_vectors.pool_key("rsa2048-e3"))[:20] + blob[20:],  # e = 3
    ]
    messages = set()
    for bad in blobs:
        with pytest.raises(ArchivedKeyUndecryptable) as caught:
            cmc.rsa_key_from_private_key_blob(bad)
        assert caught.value.__context__ is None and caught.value.__cause__ is None
        messages.add(caught.value.message)
    assert messages == {ArchivedKeyUndecryptable().message}


def test_a_blob_with_composite_primes_fails_the_pairwise_test(alice, monkeypatch):
    """CRT values that agree with a composite "prime" pass every relation the reader
    recomputes; only signing with the key and verifying finds them out."""
    real = alice.private_numbers()
    q, e = real.q, real.public_numbers.e
    fake_p = real.p - 2
    while fake_p % 3 and fake_p % 5:  # the next odd number below p with a small factor
        fake_p -= 2
    d = pow(e, -1, (fake_p - 1) * (q - 1))
    fields = [
        (fake_p * q, 256),
        (fake_p, 128),
        (q, 128),
        (d % (fake_p - 1), 128),
        (d % (q - 1), 128),
        (pow(q, -1, fake_p), 128),
        (d, 256),
    ]
    blob = cmc.private_key_blob(alice)[:20] + b"".join(v.to_bytes(w, "little") for v, w in fields)
    pairwise_refusals = []
    original = keyblob._pairwise

    def pairwise(key):
        try:
            original(key)
        except ValueError:
            pairwise_refusals.append(key)
            raise

    monkeypatch.setattr(keyblob, "_pairwise", pairwise)
    with pytest.raises(ArchivedKeyUndecryptable):
        cmc.rsa_key_from_private_key_blob(blob)
    assert len(pairwise_refusals) == 1


def test_the_writer_refuses_what_a_blob_cannot_hold():
    odd = rsa.generate_private_key(65537, 1032)  # 1032 bits: not whole 16-bit words
    with pytest.raises(ValueError, match="16-bit words"):
        cmc.private_key_blob(odd)
