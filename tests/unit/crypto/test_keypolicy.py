"""The key rules of the S/MIME Baseline Requirements (6.1.5, 6.1.6) on every path that certifies a
public key: the policy function, CSRs, the CA, generated keys and the issuer seam."""

from __future__ import annotations

import math
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x25519

from certvault.crypto import ca, keypolicy, profiles
from certvault.crypto.keypolicy import (
    EcCurveNotAllowed,
    KeyAlgorithmNotAllowed,
    RsaExponentNotAllowed,
    RsaModulusNotAllowed,
    check_public_key,
)
from certvault.crypto.profiles import PROFILES, KeyType
from certvault.errors import CsrUnsupportedKey, InvalidInput, UnsupportedKey
from certvault.services.pki.issuance import IssueRequest
from tests.factories import (
    csr_der,
    csr_with_spki,
    custom_curve_spki,
    explicit_p256_csr,
    pool_key,
    rsa_key_with_exponent,
    rsa_spki,
    small_rsa_key,
)

N2048 = pool_key("rsa2048-2").public_key().public_numbers().n


def rsa_public(e: int, n: int = N2048) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(e, n).public_key()


def rsa_public_unloadable(e: int, n: int = N2048) -> rsa.RSAPublicKey:
    """An RSA public key cryptography would refuse to build (an even e): a stand-in object."""
    stand_in = mock.Mock(spec=rsa.RSAPublicKey)
    stand_in.public_numbers.return_value = rsa.RSAPublicNumbers(e, n)
    return stand_in


@pytest.mark.parametrize(
    "public_key",
    [
        pool_key("rsa2048-2").public_key(),
        pool_key("rsa3072").public_key(),
        pool_key("rsa4096").public_key(),
        rsa_public(2**16 + 1),
        rsa_public(2**256 - 1),
        pool_key("ec256").public_key(),
        pool_key("ec384").public_key(),
        pool_key("ec521").public_key(),
        pool_key("ed25519").public_key(),
        ed448.Ed448PrivateKey.generate().public_key(),
    ],
    ids=lambda k: type(k).__name__,
)
def test_keys_the_rules_allow(public_key):
    check_public_key(public_key)


BAD_EXPONENTS = {
    "e=3": pool_key("rsa2048-e3").public_key(),
    "e=17": rsa_public(17),
    "e=2^16-1": rsa_public(2**16 - 1),
    "e=2^16+2 (even)": rsa_public_unloadable(2**16 + 2),
    "e=65538 (even)": rsa_public_unloadable(65538),
    "e=2^256+1": rsa_public(2**256 + 1),
    "a 2,041-bit e": rsa_key_with_exponent(2**2040 + 1).public_key(),
}


@pytest.mark.parametrize("public_key", BAD_EXPONENTS.values(), ids=list(BAD_EXPONENTS))
def test_rsa_exponents_outside_the_rules_are_refused(public_key):
    with pytest.raises(RsaExponentNotAllowed, match="odd and from 2\\^16\\+1 to 2\\^256-1"):
        check_public_key(public_key)


def perfect_power(k: int) -> int:
    """An m**k of 2,056 bits without a factor below 752: what a broken key generator might give."""
    m = (math.isqrt(1 << 2055) if k == 2 else keypolicy._integer_root(1 << 2055, k)) + 1
    m |= 1
    while math.gcd(m, keypolicy._small_primes_product()) != 1:
        m += 2
    assert (m**k).bit_length() == 2056
    return m**k


BAD_MODULI = {
    "1,024 bits": (small_rsa_key().public_key().public_numbers().n, "2048 to 8192 bits"),
    "2,047 bits": ((1 << 2046) + 1, "2048 to 8192 bits"),
    "2,052 bits: not a multiple of 8": ((1 << 2051) + 1, "a multiple of 8"),
    "8,200 bits": ((1 << 8199) + 1, "2048 to 8192 bits"),
    "even": (N2048 - 1, "small factor"),
    "a factor of 751": (751 * ((1 << 2046) + 1), "small factor"),
    "a square": (perfect_power(2), "perfect power"),
    "a cube": (perfect_power(3), "perfect power"),
    "a seventh power": (perfect_power(7), "perfect power"),
}


@pytest.mark.parametrize(("n", "message"), BAD_MODULI.values(), ids=list(BAD_MODULI))
def test_rsa_moduli_outside_the_rules_are_refused(n, message):
    with pytest.raises(RsaModulusNotAllowed, match=message):
        check_public_key(rsa_public(65537, n))


def test_perfect_powers_are_found_and_rsa_moduli_are_not():
    for k in (2, 3, 5, 7, 11, 13):
        root = (1 << (2100 // k)) + 753  # odd; its powers are what a broken key generator gives
        assert keypolicy._is_perfect_power(root**k), k
        assert not keypolicy._is_perfect_power(root**k + 2), k
    for name in ("rsa2048-1", "rsa2048-2", "rsa3072", "rsa4096"):
        assert not keypolicy._is_perfect_power(pool_key(name).public_key().public_numbers().n)


@pytest.mark.parametrize(
    "curve", [ec.SECP256K1(), ec.SECP192R1(), ec.SECP224R1(), ec.BrainpoolP256R1()]
)
def test_curves_other_than_the_nist_ones_are_refused(curve):
    with pytest.raises(EcCurveNotAllowed, match="P-256, P-384 or P-521"):
        check_public_key(ec.generate_private_key(curve).public_key())


def test_other_algorithms_are_refused():
    for public_key in (
        dsa.generate_private_key(1024).public_key(),
        x25519.X25519PrivateKey.generate().public_key(),
    ):
        with pytest.raises(KeyAlgorithmNotAllowed):
            check_public_key(public_key)


def test_refusals_are_422_with_a_code_per_rule_and_never_show_the_key():
    codes = {
        cls.code
        for cls in (
            RsaModulusNotAllowed,
            RsaExponentNotAllowed,
            EcCurveNotAllowed,
            KeyAlgorithmNotAllowed,
        )
    }
    assert codes == {
        "rsa_modulus_not_allowed",
        "rsa_exponent_not_allowed",
        "ec_curve_not_allowed",
        "key_algorithm_not_allowed",
    }
    assert issubclass(keypolicy.KeyPolicyViolation, UnsupportedKey)
    with pytest.raises(RsaExponentNotAllowed) as refused:
        check_public_key(rsa_key_with_exponent(2**2040 + 1).public_key())
    assert refused.value.status == 422
    e = 2**2040 + 1
    for shown in (str(e), format(e, "x"), str(N2048)[:20], format(N2048, "x")[:20]):
        assert shown not in refused.value.message


# --- every path that certifies a key ------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "csr", "error", "code"),
    [
        ("e=3", lambda: csr_der(pool_key("rsa2048-e3")), RsaExponentNotAllowed, None),
        (
            "a 2,041-bit e",
            lambda: csr_der(rsa_key_with_exponent(2**2040 + 1)),
            RsaExponentNotAllowed,
            None,
        ),
        ("RSA-1024", lambda: csr_der(small_rsa_key()), RsaModulusNotAllowed, None),
        (
            "secp256k1",
            lambda: csr_der(ec.generate_private_key(ec.SECP256K1())),
            EcCurveNotAllowed,
            None,
        ),
        # cryptography will not even load these two: refused as unreadable keys.
        (
            "an even e",
            lambda: csr_with_spki(csr_der(pool_key("rsa2048-2")), rsa_spki(N2048, 65538)),
            CsrUnsupportedKey,
            "csr_unsupported_key",
        ),
        (
            "a curve of its own (explicit parameters, another generator)",
            lambda: csr_with_spki(explicit_p256_csr(), custom_curve_spki(explicit_p256_csr())),
            CsrUnsupportedKey,
            "csr_unsupported_key",
        ),
    ],
)
def test_csrs_over_keys_outside_the_rules_are_refused(label, csr, error, code):
    loaded = ca.load_csr(csr())
    with pytest.raises(error) as refused:
        ca.check_csr(loaded)
    assert isinstance(refused.value, InvalidInput | UnsupportedKey)
    if code is not None:
        assert refused.value.code == code


def test_a_csr_with_explicit_p256_parameters_is_a_p256_key():
    """The same curve, spelled out: certified, and the certificate names the curve."""
    csr = ca.load_csr(explicit_p256_csr())
    ca.check_csr(csr)
    assert profiles.key_type_of(csr.public_key()) is KeyType.EC256


def test_the_ca_refuses_to_certify_keys_outside_the_rules():
    root_key = pool_key("ec384")
    root = ca.build_root(root_key, "Policy Root")
    good = ca.issue_certificate(
        root_key, root, pool_key("rsa2048-2").public_key(), PROFILES["smime"], email="a@x.org"
    )
    assert good.public_key().public_numbers().e == 65537
    for public_key, error in (
        (pool_key("rsa2048-e3").public_key(), RsaExponentNotAllowed),
        (small_rsa_key().public_key(), RsaModulusNotAllowed),
        (ec.generate_private_key(ec.SECP256K1()).public_key(), EcCurveNotAllowed),
    ):
        with pytest.raises(error):
            ca.issue_certificate(root_key, root, public_key, PROFILES["smime"], email="a@x.org")


def test_the_issuer_seam_refuses_a_request_over_a_key_outside_the_rules():
    """Whatever the issuer (built-in CA, an external one, agent requests later): no request over
    such a key can be made."""
    with pytest.raises(RsaExponentNotAllowed):
        IssueRequest(rsa_key_with_exponent(2**2040 + 1).public_key(), PROFILES["smime"], "a@x.org")
    with pytest.raises(EcCurveNotAllowed):
        IssueRequest(
            ec.generate_private_key(ec.SECP256K1()).public_key(), PROFILES["smime"], "a@x.org"
        )
    assert IssueRequest(pool_key("ec256").public_key(), PROFILES["smime"], "a@x.org")


def test_generated_keys_are_held_to_the_same_rules(monkeypatch):
    assert profiles.generate_key(KeyType.EC256)
    # Were generation ever changed to a weak exponent, the key would not leave generate_key.
    monkeypatch.setattr(profiles.rsa, "generate_private_key", lambda **_: pool_key("rsa2048-e3"))
    with pytest.raises(RsaExponentNotAllowed):
        profiles.generate_key(KeyType.RSA2048)
