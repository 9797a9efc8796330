"""The checks that make a key on its way in work: RSA numbers and a pairwise signature."""

from __future__ import annotations

import math

import pytest
from asn1crypto import keys as asn1_keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certvault.crypto import keys
from certvault.errors import CryptoError, KeyInconsistent

KEY_TYPES = ["rsa2048", "rsa4096", "p256", "p384", "p521", "ed25519"]


def _rsa_pkcs8(vectors, **changes: int) -> bytes:
    """The rsa2048 vector key as PKCS#8, with some of its RSAPrivateKey fields replaced."""
    info = asn1_keys.PrivateKeyInfo.load(vectors.pkcs8(vectors.key("rsa2048")))
    numbers = asn1_keys.RSAPrivateKey.load(info["private_key"].parsed.dump())
    for name, value in changes.items():
        numbers[name] = value
    info["private_key"] = numbers
    return info.dump(force=True)


def _numbers(vectors) -> dict[str, int]:
    n = vectors.key("rsa2048").private_numbers()
    return {
        "modulus": n.public_numbers.n,
        "public_exponent": n.public_numbers.e,
        "private_exponent": n.d,
        "prime1": n.p,
        "prime2": n.q,
        "exponent1": n.dmp1,
        "exponent2": n.dmq1,
        "coefficient": n.iqmp,
    }


@pytest.mark.parametrize("name", KEY_TYPES)
def test_good_keys_pass_both_checks(vectors, name):
    key = vectors.key(name)
    keys.check_rsa_numbers(key)
    keys.check_pairwise(key, vectors.cert(name).public_key())


def _broken(vectors, what: str) -> dict[str, int]:
    v = _numbers(vectors)
    p, q, d, e = v["prime1"], v["prime2"], v["private_exponent"], v["public_exponent"]
    if what == "dP":
        return {"exponent1": v["exponent1"] + 2}
    if what == "dQ":
        return {"exponent2": v["exponent2"] - 2}
    if what == "qInv":
        return {"coefficient": v["coefficient"] + 1}
    if what == "p swapped with q":  # qInv is then the inverse of the wrong prime
        return {"prime1": q, "prime2": p, "exponent1": v["exponent2"], "exponent2": v["exponent1"]}
    if what == "d":  # the CRT values left as they were
        return {"private_exponent": d + 2}
    if what == "e even":
        return {"public_exponent": e + 1}
    if what == "n not p*q":
        return {"modulus": v["modulus"] + 2}
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what", ["dP", "dQ", "qInv", "p swapped with q", "d", "e even", "n not p*q"]
)
def test_each_rsa_number_that_does_not_fit_is_refused(vectors, what):
    key = keys.load_pkcs8_der(_rsa_pkcs8(vectors, **_broken(vectors, what)), validate=False)
    with pytest.raises(KeyInconsistent):
        keys.check_rsa_numbers(key)


def test_unbalanced_primes_are_refused():
    # n = p*q with a 61-bit p: every other number fits, but anybody factors such a modulus.
    p, q, e = 2**61 - 1, (1 << 1990) + 3, 65537
    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    d = pow(e, -1, lam)
    numbers = {
        "version": 0,
        "modulus": p * q,
        "public_exponent": e,
        "private_exponent": d,
        "prime1": q,
        "prime2": p,
        "exponent1": d % (q - 1),
        "exponent2": d % (p - 1),
        "coefficient": pow(p, -1, q),
    }
    info = asn1_keys.PrivateKeyInfo(
        {
            "version": 0,
            "private_key_algorithm": {"algorithm": "rsa", "parameters": None},
            "private_key": asn1_keys.RSAPrivateKey(numbers),
        }
    )
    key = keys.load_pkcs8_der(info.dump(), validate=False)
    with pytest.raises(KeyInconsistent):
        keys.check_rsa_numbers(key)


@pytest.mark.parametrize(
    ("name", "other"), [("rsa2048", "rsa4096"), ("p256", "p384"), ("ed25519", "p256")]
)
def test_pairwise_check_fails_with_another_public_key(vectors, name, other):
    with pytest.raises(KeyInconsistent):
        keys.check_pairwise(vectors.key(name), vectors.cert(other).public_key())


def test_ec_pairwise_check_fails_with_another_point_on_the_same_curve(vectors):
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(KeyInconsistent):
        keys.check_pairwise(vectors.key("p256"), stranger)
    keys.check_pairwise(vectors.key("p256"), vectors.cert("p256").public_key())


def test_ec_key_whose_stored_point_is_not_its_own_is_refused_on_load(vectors):
    # The scalar of p256 with another key's public point: cryptography refuses it when loading,
    # before the pairwise check would have caught it.
    info = asn1_keys.PrivateKeyInfo.load(vectors.pkcs8(vectors.key("p256")))
    ec_key = asn1_keys.ECPrivateKey.load(info["private_key"].parsed.dump())
    ec_key["public_key"] = (
        vectors.key("p256")
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    assert keys.load_pkcs8_der(info.dump(force=True), validate=False)  # its own point: fine
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_key["public_key"] = stranger.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    info["private_key"] = ec_key
    with pytest.raises(CryptoError):
        keys.load_pkcs8_der(info.dump(force=True), validate=False)


def test_a_bad_crt_value_is_caught_by_the_numbers_not_the_signature(vectors):
    # OpenSSL verifies its CRT result and falls back to d: the signature comes out right.
    key = keys.load_pkcs8_der(_rsa_pkcs8(vectors, **_broken(vectors, "dP")), validate=False)
    keys.check_pairwise(key, vectors.cert("rsa2048").public_key())
    with pytest.raises(KeyInconsistent):
        keys.check_rsa_numbers(key)
