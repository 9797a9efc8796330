"""Supported key types, fingerprints and key/certificate matching."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519
from cryptography.x509.oid import NameOID

from certvault.crypto import keys
from certvault.errors import CryptoError, InvalidInput, UnsupportedKey

KEY_TYPES = ["rsa2048", "rsa4096", "p256", "p384", "p521", "ed25519"]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rsa2048", ("rsa", 2048)),
        ("rsa4096", ("rsa", 4096)),
        ("p256", ("ec", "secp256r1")),
        ("p384", ("ec", "secp384r1")),
        ("p521", ("ec", "secp521r1")),
        ("ed25519", ("ed25519", 255)),
    ],
)
def test_describe_key(vectors, name, expected):
    assert keys.describe_key(vectors.key(name)) == expected


@pytest.mark.parametrize("name", KEY_TYPES)
def test_spki_sha256_is_the_fingerprint_of_the_certificate_key(vectors, name):
    cert = vectors.cert(name)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = hashlib.sha256(spki).digest()

    assert keys.spki_sha256(cert.public_key()) == expected
    assert keys.spki_sha256(vectors.key(name).public_key()) == expected


@pytest.mark.parametrize("name", KEY_TYPES)
def test_key_matches_its_own_certificate_only(vectors, name):
    key = vectors.key(name)
    assert keys.key_matches_certificate(key, vectors.cert(name))
    for other in KEY_TYPES:
        if other != name:
            assert not keys.key_matches_certificate(key, vectors.cert(other))
    assert not keys.key_matches_certificate(key, vectors.cert("ca"))


def test_same_curve_other_key_does_not_match(vectors):
    assert not keys.key_matches_certificate(
        ec.generate_private_key(ec.SECP256R1()), vectors.cert("p256")
    )


def test_certificate_emails_san_first_lowercased_unique(vectors):
    # SAN alice.p256@example.org, a.p256@example.net; subject emailAddress Alice.p256@Example.org
    assert keys.certificate_emails(vectors.cert("p256")) == [
        "alice.p256@example.org",
        "a.p256@example.net",
    ]


def _cert(key, extensions=(), subject_email: str | None = None) -> x509.Certificate:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, "someone")]
    if subject_email is not None:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, subject_email))
    name = x509.Name(attributes)
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())


def test_certificate_emails_subject_only_and_none():
    key = ec.generate_private_key(ec.SECP256R1())
    assert keys.certificate_emails(_cert(key, subject_email="Bob@Example.ORG")) == [
        "bob@example.org"
    ]
    assert keys.certificate_emails(_cert(key)) == []


def test_certificate_emails_ignore_other_san_types():
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName("host.example.org"), x509.RFC822Name("Carol@Example.org")]
    )
    cert = _cert(key, [san], subject_email="carol@example.org")
    assert keys.certificate_emails(cert) == ["carol@example.org"]


def test_certificate_emails_refuses_a_duplicated_san(vectors):
    # Two SAN extensions: which one names the owner is anyone's guess, so none is used.
    cert = asn1_x509.Certificate.load(der(vectors.cert("p256")))
    extensions = cert["tbs_certificate"]["extensions"]
    san = next(e for e in extensions if e["extn_id"].native == "subject_alt_name")
    extensions.append(asn1_x509.Extension.load(san.dump()))
    cert["tbs_certificate"]["extensions"] = extensions
    doubled = x509.load_der_x509_certificate(cert.dump(force=True))

    with pytest.raises(InvalidInput):
        keys.certificate_emails(doubled)


@pytest.mark.parametrize("name", KEY_TYPES)
@pytest.mark.parametrize("validate", [True, False])
def test_pkcs8_round_trip(vectors, name, validate):
    key = vectors.key(name)
    der = keys.to_pkcs8_der(key)
    loaded = keys.load_pkcs8_der(der, validate=validate)
    assert keys.to_pkcs8_der(loaded) == der
    assert vectors.pkcs8(loaded) == vectors.pkcs8(key)


def test_validation_can_be_skipped_only_on_request(vectors):
    # An RSA key whose CRT exponent is wrong: only the full check notices.
    info = asn1_keys.PrivateKeyInfo.load(keys.to_pkcs8_der(vectors.key("rsa2048")))
    rsa_key = info["private_key"].parsed
    rsa_key["exponent1"] = rsa_key["exponent1"].native + 2
    broken = asn1_keys.PrivateKeyInfo(
        {
            "version": 0,
            "private_key_algorithm": info["private_key_algorithm"],
            "private_key": asn1_keys.RSAPrivateKey.load(rsa_key.dump(force=True)),
        }
    ).dump()

    with pytest.raises(CryptoError) as refused:
        keys.load_pkcs8_der(broken, validate=True)
    assert not isinstance(refused.value, UnsupportedKey)
    assert isinstance(keys.load_pkcs8_der(broken, validate=False), rsa.RSAPrivateKey)


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
        lambda: ec.generate_private_key(ec.SECP256K1()),
        lambda: ec.generate_private_key(ec.SECP224R1()),
        lambda: x25519.X25519PrivateKey.generate(),
        lambda: ed448.Ed448PrivateKey.generate(),
    ],
    ids=["rsa1024", "secp256k1", "p224", "x25519", "ed448"],
)
def test_unsupported_keys(make_key):
    key = make_key()
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(UnsupportedKey):
        keys.load_pkcs8_der(der, validate=True)
    with pytest.raises(UnsupportedKey):
        keys.supported_key(key)
    with pytest.raises(UnsupportedKey):
        keys.describe_key(key)


@pytest.mark.parametrize("validate", [True, False])
def test_oversized_rsa_is_unsupported_without_checking_it(validate):
    # Numbers that only pretend to be a 16384-bit key: a check would refuse them as broken, so
    # UnsupportedKey shows that the size was refused first (a real check takes half a minute).
    numbers = asn1_keys.RSAPrivateKey(
        {
            "version": 0,
            "modulus": (1 << 16383) | 1,
            "public_exponent": 65537,
            "private_exponent": 3,
            "prime1": 3,
            "prime2": 5,
            "exponent1": 1,
            "exponent2": 1,
            "coefficient": 1,
        }
    )
    der = asn1_keys.PrivateKeyInfo(
        {
            "version": 0,
            "private_key_algorithm": {"algorithm": "rsa", "parameters": None},
            "private_key": numbers,
        }
    ).dump()
    with pytest.raises(UnsupportedKey):
        keys.load_pkcs8_der(der, validate=validate)


@pytest.mark.parametrize("blob", [b"", b"\x30\x03\x02\x01\x00", b"not a key at all"])
def test_garbage_is_a_crypto_error(blob):
    with pytest.raises(CryptoError) as refused:
        keys.load_pkcs8_der(blob, validate=True)
    assert not isinstance(refused.value, UnsupportedKey)


def test_messages_do_not_contain_key_bytes(vectors):
    der = keys.to_pkcs8_der(vectors.key("p256"))
    with pytest.raises(CryptoError) as refused:
        keys.load_pkcs8_der(der[:-3], validate=True)
    assert der[-40:].hex() not in refused.value.message
    assert "MII" not in refused.value.message
