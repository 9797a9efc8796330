"""Certificate profiles and the key types enrollment offers."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from certvault.crypto import profiles
from certvault.crypto.profiles import PROFILES, KeyType, Profile, get_profile, key_type_of
from certvault.errors import InvalidInput, UnsupportedKey
from tests.unit.crypto.test_ca import pool_key

EMAIL = ExtendedKeyUsageOID.EMAIL_PROTECTION


def test_the_four_profiles():
    assert set(PROFILES) == {"smime", "smime-encryption", "smime-signing", "client-auth"}
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert profile.validity_days == 365
        assert profile.allowed_key_types == frozenset(KeyType)
        assert profile.purpose


@pytest.mark.parametrize(
    ("name", "escrow", "ekus", "signing", "encryption", "non_repudiation"),
    [
        ("smime", True, (EMAIL,), True, True, False),
        ("smime-encryption", True, (EMAIL,), False, True, False),
        ("smime-signing", False, (EMAIL,), True, False, True),
        ("client-auth", True, (ExtendedKeyUsageOID.CLIENT_AUTH,), True, False, False),
    ],
)
def test_profile_settings(name, escrow, ekus, signing, encryption, non_repudiation):
    profile = PROFILES[name]
    assert profile.escrow is escrow
    assert profile.extended_key_usages == ekus
    assert (profile.signing, profile.encryption, profile.non_repudiation) == (
        signing,
        encryption,
        non_repudiation,
    )


def test_profiles_that_escrow_a_signing_key_are_flagged():
    # What the console warns about: whoever can release such a key can sign (or log in) as the
    # person.
    warned = {name for name, profile in PROFILES.items() if profile.escrows_signing_key}
    assert warned == {"smime", "client-auth"}
    assert "sign as the person" in PROFILES["smime"].purpose


USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


def set_bits(usage: x509.KeyUsage) -> set[str]:
    bits = {bit for bit in USAGE_BITS if getattr(usage, bit)}
    if usage.key_agreement:
        assert not usage.encipher_only and not usage.decipher_only
    return bits


@pytest.mark.parametrize(
    ("name", "rsa_bits", "ec_bits"),
    [
        (
            "smime",
            {"digital_signature", "key_encipherment"},
            {"digital_signature", "key_agreement"},
        ),
        ("smime-encryption", {"key_encipherment"}, {"key_agreement"}),
        (
            "smime-signing",
            {"digital_signature", "content_commitment"},
            {"digital_signature", "content_commitment"},
        ),
        ("client-auth", {"digital_signature"}, {"digital_signature"}),
    ],
)
def test_key_usage_per_profile_and_key_type(name, rsa_bits, ec_bits):
    profile = PROFILES[name]
    assert set_bits(profile.key_usage(pool_key("rsa2048-1").public_key())) == rsa_bits
    assert set_bits(profile.key_usage(pool_key("ec256").public_key())) == ec_bits
    assert set_bits(profile.key_usage(pool_key("ec384").public_key())) == ec_bits


def test_an_encryption_profile_refuses_a_key_that_cannot_encrypt():
    ed = pool_key("ed25519").public_key()
    with pytest.raises(UnsupportedKey):
        PROFILES["smime-encryption"].key_usage(ed)
    assert set_bits(PROFILES["smime-signing"].key_usage(ed)) == {
        "digital_signature",
        "content_commitment",
    }


def test_get_profile():
    assert get_profile("smime-signing") is PROFILES["smime-signing"]
    with pytest.raises(InvalidInput) as caught:
        get_profile("smime-dual")
    for name in PROFILES:
        assert name in caught.value.message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"validity_days": 826}, "validity_days"),
        ({"validity_days": 0}, "validity_days"),
        ({"allowed_key_types": frozenset()}, "key type"),
        ({"signing": False, "encryption": False}, "signing, encryption"),
    ],
)
def test_profiles_refuse_impossible_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PROFILES["smime"], **changes)


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["smime-signing"].escrow = True  # type: ignore[misc]
    assert isinstance(PROFILES["smime"], Profile)


@pytest.mark.parametrize(
    ("key_name", "expected"),
    [
        ("rsa2048-1", KeyType.RSA2048),
        ("rsa3072", KeyType.RSA3072),
        ("rsa4096", KeyType.RSA4096),
        ("ec256", KeyType.EC256),
        ("ec384", KeyType.EC384),
        ("ec521", None),
        ("ed25519", None),
    ],
)
def test_key_type_of(key_name, expected):
    assert key_type_of(pool_key(key_name).public_key()) is expected


def test_key_type_of_other_keys_is_none():
    assert key_type_of(x25519.X25519PrivateKey.generate().public_key()) is None
    assert key_type_of(ec.generate_private_key(ec.SECP256K1()).public_key()) is None


def test_parse_key_type():
    assert profiles.parse_key_type("ec384") is KeyType.EC384
    with pytest.raises(InvalidInput, match="rsa2048, rsa3072, rsa4096, ec256, ec384"):
        profiles.parse_key_type("dsa1024")


@pytest.mark.parametrize("kind", [KeyType.EC256, KeyType.EC384])
def test_generate_ec_keys(kind):
    assert key_type_of(profiles.generate_key(kind).public_key()) is kind


def test_generate_rsa_key():
    # The one RSA generation in the suite (about 80 ms); larger sizes share its code path.
    key = profiles.generate_key(KeyType.RSA2048)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.public_key().public_numbers().e == 65537
    assert key_type_of(key.public_key()) is KeyType.RSA2048
