"""Private keys certvault accepts, and how they relate to certificates."""

from __future__ import annotations

import hashlib
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import InternalError, InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from certvault.errors import (
    CertificateEmailInvalid,
    CryptoError,
    InvalidInput,
    KeyInconsistent,
    UnsupportedKey,
)

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

MIN_RSA_BITS = 2048
# Fully validating an RSA key costs about (bits/2048)^3 x 75 ms: 4 s at 8192 bits, half a minute
# at 16384. Larger keys are refused before that work is done (DESIGN §5.5).
MAX_RSA_BITS = 8192
SUPPORTED_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
# How far the bit length of each RSA prime may stray from half the modulus'. The generators in
# use (OpenSSL, GnuTLS, NSS, Go, Java, Windows) make both primes exactly half as long, as FIPS
# 186-4 B.3 asks; a little slack admits odd modulus sizes, while a key with one small factor,
# which anybody factors at once, is refused.
RSA_PRIME_BITS_SLACK = 4
_PAIRWISE_MESSAGE = b"certvault pairwise consistency test"


def supported_key(key: PrivateKeyTypes) -> PrivateKey:
    """Return ``key`` as a :data:`PrivateKey`, or raise :class:`UnsupportedKey`."""
    if isinstance(key, rsa.RSAPrivateKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise UnsupportedKey(f"RSA keys need {MIN_RSA_BITS} to {MAX_RSA_BITS} bits.")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in SUPPORTED_CURVES:
            raise UnsupportedKey("Only the EC curves P-256, P-384 and P-521 are supported.")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise UnsupportedKey("Only RSA, EC (P-256, P-384, P-521) and Ed25519 keys are supported.")


def spki_der(public_key: PublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of ``public_key``."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_sha256(public_key: PublicKeyTypes) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: the public-key fingerprint."""
    return hashlib.sha256(spki_der(public_key)).digest()


def certificate_spki_der(cert: x509.Certificate) -> bytes | None:
    """The certificate's SubjectPublicKeyInfo, or None when its key type cannot be loaded."""
    try:
        return spki_der(cert.public_key())
    except (ValueError, UnsupportedAlgorithm):
        # A certificate for a key type we cannot load can never match a key we accept.
        return None


def key_matches_certificate(key: PrivateKey, cert: x509.Certificate) -> bool:
    """True when ``cert`` certifies the public half of ``key``."""
    return matched_spki_der(key, cert) is not None


def matched_spki_der(key: PrivateKey, cert: x509.Certificate) -> bytes | None:
    """The DER SubjectPublicKeyInfo of ``key`` when ``cert`` certifies it, else None."""
    # The whole SPKI, not just the modulus or point: a wrong curve or algorithm must not match.
    found = spki_der(key.public_key())
    return found if found == certificate_spki_der(cert) else None


def describe_key(key: PrivateKey) -> tuple[str, int | str]:
    """Algorithm and size or curve, e.g. ``("rsa", 2048)`` or ``("ec", "secp256r1")``."""
    key = supported_key(key)
    if isinstance(key, rsa.RSAPrivateKey):
        return ("rsa", key.key_size)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ("ec", key.curve.name)
    return ("ed25519", 255)


def certificate_emails(cert: x509.Certificate) -> list[str]:
    """rfc822 SAN names, then subject emailAddress values; lowercased, unique, in order."""
    found: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found.extend(san.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        pass
    except (ValueError, x509.DuplicateExtension) as exc:
        # Duplicate or undecodable extensions: guessing would risk sending a recovery code to the
        # wrong address (DESIGN §5.8), so refuse instead.
        raise InvalidInput("The certificate's extensions cannot be read.") from exc
    for attribute in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if isinstance(attribute.value, str):
            found.append(attribute.value)
    addresses = list(dict.fromkeys(address.lower() for address in found if address))
    if any(not a.isprintable() or any(c.isspace() for c in a) for a in addresses):
        # Recovery codes go to these addresses (DESIGN §5.8), and they are stored space-separated:
        # one with a NUL, a control character or a space is refused, never cleaned into another.
        raise CertificateEmailInvalid("The certificate names an email address that is not text.")
    return addresses


def to_pkcs8_der(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 DER of ``key`` (for sealing, never for storage as is)."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def check_rsa_numbers(key: PrivateKey) -> None:
    """Raise :class:`KeyInconsistent` unless an RSA key's private numbers fit together.

    What makes the key work, checked in microseconds instead of OpenSSL's primality tests
    (DESIGN §10): n = p·q with p ≠ q of about half the bits of n, an odd e > 1, the CRT values
    recomputed and compared, and e·d ≡ 1 modulo p−1 and q−1. Other key types have no such
    numbers to check; :func:`check_pairwise` covers them.
    """
    if not isinstance(key, rsa.RSAPrivateKey):
        return
    numbers = key.private_numbers()
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    p, q, d = numbers.p, numbers.q, numbers.d
    half = n.bit_length() / 2
    fits = (
        p * q == n
        and p > 1
        and q > 1
        and p != q
        and all(abs(f.bit_length() - half) <= RSA_PRIME_BITS_SLACK for f in (p, q))
        and 1 < e < n
        and e % 2 == 1
        and 1 < d < n
        and numbers.dmp1 == d % (p - 1)
        and numbers.dmq1 == d % (q - 1)
        and e * d % (p - 1) == 1
        and e * d % (q - 1) == 1
    )
    if not fits:
        raise KeyInconsistent()
    try:
        q_inverse = pow(q, -1, p)
    except ValueError as exc:  # p and q share a factor
        raise KeyInconsistent() from exc
    if numbers.iqmp != q_inverse:
        raise KeyInconsistent()


def check_pairwise(key: PrivateKey, public_key: PublicKeyTypes) -> None:
    """Raise :class:`KeyInconsistent` unless ``key`` is the private half of ``public_key`` (the
    certificate's).

    RSA and Ed25519: a signature made with ``key`` verifies with ``public_key``. For RSA the
    signature goes through the CRT; OpenSSL then checks its own result and quietly falls back to
    d when the CRT values are wrong, which is why :func:`check_rsa_numbers` runs too. EC: the
    point d·G, computed from the private scalar, is the certificate's point (the pairwise
    consistency check of NIST SP 800-56A for EC keys: it proves the pair outright, for a third
    of the cost of a signature and its verification).
    """
    try:
        if isinstance(key, rsa.RSAPrivateKey) and isinstance(public_key, rsa.RSAPublicKey):
            rsa_padding = padding.PKCS1v15()
            signature = key.sign(_PAIRWISE_MESSAGE, rsa_padding, hashes.SHA256())
            public_key.verify(signature, _PAIRWISE_MESSAGE, rsa_padding, hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
            public_key, ec.EllipticCurvePublicKey
        ):
            scalar = key.private_numbers().private_value
            if ec.derive_private_key(scalar, key.curve).public_key() != public_key:
                raise KeyInconsistent()
        elif isinstance(key, ed25519.Ed25519PrivateKey) and isinstance(
            public_key, ed25519.Ed25519PublicKey
        ):
            public_key.verify(key.sign(_PAIRWISE_MESSAGE), _PAIRWISE_MESSAGE)
        else:
            raise KeyInconsistent()
    except (InvalidSignature, ValueError) as exc:
        raise KeyInconsistent() from exc


def load_pkcs8_der(der: bytes, *, validate: bool) -> PrivateKey:
    """Load an unencrypted PKCS#8 key with or without OpenSSL's full RSA validation.

    ``validate=False`` for keys unsealed from the vault, which were checked when archived and are
    authenticated by AES-GCM: re-checking the RSA primes on every release would cost up to half a
    second for nothing (DESIGN §10); and for keys on their way in, which the PKCS#12 reader
    checks with :func:`check_rsa_numbers` and :func:`check_pairwise` instead.
    """
    # The cheap load comes first so that an unsupported (say, 16384-bit) key is refused before
    # the expensive RSA checks run.
    key = supported_key(_load_der(der, validate=False))
    if validate and isinstance(key, rsa.RSAPrivateKey):
        key = supported_key(_load_der(der, validate=True))
    return key


def _load_der(der: bytes, *, validate: bool) -> PrivateKeyTypes:
    try:
        return serialization.load_der_private_key(
            der, password=None, unsafe_skip_rsa_key_validation=not validate
        )
    except UnsupportedAlgorithm as exc:
        raise UnsupportedKey() from exc
    except (ValueError, TypeError, InternalError) as exc:
        # InternalError: OpenSSL refusing some damaged keys (an Ed25519 key of the wrong length)
        # without an error cryptography knows.
        raise CryptoError("The private key is not a valid unencrypted PKCS#8 key.") from exc
