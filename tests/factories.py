"""Certificates and PKCS#12 files made on the fly, from a pool of pre-generated keys."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEYS = Path(__file__).parent / "vectors" / "keys"
NOW = dt.datetime.now(dt.UTC)


@cache
def pool_key(name: str):  # type: ignore[no-untyped-def]
    """A pre-generated key from tests/vectors/keys (RSA generation is too slow for every test)."""
    return serialization.load_pem_private_key((KEYS / f"{name}.pem").read_bytes(), None)


def new_key(kind: str = "ec256"):  # type: ignore[no-untyped-def]
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ec521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind[3:]))
    raise ValueError(kind)


def _sign_hash(issuer_key):  # type: ignore[no-untyped-def]
    return None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def make_ca(name: str = "Test CA", key=None):  # type: ignore[no-untyped-def]
    key = key or new_key("ec256")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, _sign_hash(key))
    )
    return key, cert


def make_cert(
    key,
    email: str = "alice@example.org",
    *,
    issuer=None,
    serial: int | None = None,  # type: ignore[no-untyped-def]
    days: int = 365,
    not_before: dt.datetime | None = None,
    cn: str | None = None,
    subject_email: bool = False,  # the address also as an emailAddress attribute of the subject
) -> x509.Certificate:
    issuer_key, issuer_cert = issuer if issuer else make_ca()
    start = not_before or NOW - dt.timedelta(days=1)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn or email)]
    if subject_email:
        attributes.insert(0, x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    subject = x509.Name(attributes)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .sign(issuer_key, _sign_hash(issuer_key))
    )


def make_p12(
    key,
    cert: x509.Certificate,
    password: str,
    chain: Sequence[x509.Certificate] = (),  # type: ignore[no-untyped-def]
    name: bytes | None = b"alias",
) -> bytes:
    enc = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password.encode())
    )
    return pkcs12.serialize_key_and_certificates(name, key, cert, list(chain), enc)


# --- keys no certificate may carry (S/MIME BR 6.1.5, 6.1.6) -----------------------------------


@cache
def rsa_key_with_exponent(e: int, base: str = "rsa2048-2"):  # type: ignore[no-untyped-def]
    """The primes of a pool key under the public exponent ``e`` (which must be invertible)."""
    numbers = pool_key(base).private_numbers()
    p, q = numbers.p, numbers.q
    d = pow(e, -1, (p - 1) * (q - 1))
    return rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, p * q),
    ).private_key(unsafe_skip_rsa_key_validation=True)


@cache
def small_rsa_key():  # type: ignore[no-untyped-def]
    return rsa.generate_private_key(65537, 1024)


def csr_der(key, name: str = "x") -> bytes:  # type: ignore[no-untyped-def]
    """A CSR signed by ``key`` (any key cryptography signs with), DER."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return builder.sign(key, _sign_hash(key)).public_bytes(serialization.Encoding.DER)


def csr_with_spki(csr: bytes, spki: bytes) -> bytes:
    """``csr`` with its SubjectPublicKeyInfo replaced by ``spki`` (its signature no longer fits)."""
    from asn1crypto import csr as asn1_csr
    from asn1crypto import keys as asn1_keys

    request = asn1_csr.CertificationRequest.load(csr)
    info = request["certification_request_info"]
    replaced = asn1_csr.CertificationRequestInfo(
        {
            "version": info["version"],
            "subject": info["subject"],
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(spki),
            "attributes": info["attributes"],
        }
    )
    return asn1_csr.CertificationRequest(
        {
            "certification_request_info": replaced,
            "signature_algorithm": request["signature_algorithm"],
            "signature": request["signature"],
        }
    ).dump()


def rsa_spki(n: int, e: int) -> bytes:
    """A SubjectPublicKeyInfo of any RSA numbers, even ones cryptography refuses to load."""
    from asn1crypto import keys as asn1_keys

    return asn1_keys.PublicKeyInfo(
        {
            "algorithm": {"algorithm": "rsa"},
            "public_key": asn1_keys.RSAPublicKey({"modulus": n, "public_exponent": e}),
        }
    ).dump()


@cache
def explicit_p256_csr() -> bytes:
    """A CSR (DER) whose P-256 key openssl wrote with explicit curve parameters."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        key, csr = Path(folder) / "explicit.key.pem", Path(folder) / "explicit.csr"
        for out, args in (
            (
                key,
                ["ecparam", "-name", "prime256v1", "-param_enc", "explicit", "-genkey", "-noout"],
            ),
            (csr, ["req", "-new", "-key", str(key), "-subj", "/CN=explicit", "-outform", "DER"]),
        ):
            subprocess.run(["openssl", *args, "-out", str(out)], check=True, capture_output=True)
        return csr.read_bytes()


def custom_curve_spki(explicit_csr: bytes) -> bytes:
    """The explicit P-256 key of ``explicit_csr`` with another generator: a curve of its own."""
    from asn1crypto import csr as asn1_csr
    from asn1crypto import keys as asn1_keys

    spki = asn1_csr.CertificationRequest.load(explicit_csr)["certification_request_info"][
        "subject_pk_info"
    ]
    params = spki["algorithm"]["parameters"].chosen
    domain = asn1_keys.SpecifiedECDomain(
        {
            **{f: params[f] for f in ("version", "field_id", "curve", "order", "cofactor")},
            "base": asn1_keys.ECPoint(spki["public_key"].native),
        }
    )
    return asn1_keys.PublicKeyInfo(
        {
            "algorithm": {
                "algorithm": "ec",
                "parameters": asn1_keys.ECDomainParameters(name="specified", value=domain),
            },
            "public_key": spki["public_key"],
        }
    ).dump()
