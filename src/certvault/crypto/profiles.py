"""Certificate profiles: what a certificate is for, which keys it takes, whether it is escrowed."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from certvault.crypto.keypolicy import check_public_key
from certvault.crypto.keys import PrivateKey
from certvault.errors import InvalidInput, UnsupportedKey

# S/MIME Baseline Requirements 6.3.2: subscriber certificates live at most 825 days.
MAX_VALIDITY_DAYS = 825
DEFAULT_VALIDITY_DAYS = 365


class KeyType(StrEnum):
    """The key types a person may choose on enrollment (and a CSR may carry)."""

    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"
    EC256 = "ec256"
    EC384 = "ec384"


_RSA_BITS = {KeyType.RSA2048: 2048, KeyType.RSA3072: 3072, KeyType.RSA4096: 4096}
_EC_CURVES: dict[KeyType, ec.EllipticCurve] = {
    KeyType.EC256: ec.SECP256R1(),
    KeyType.EC384: ec.SECP384R1(),
}
ALL_KEY_TYPES = frozenset(KeyType)


def parse_key_type(text: str) -> KeyType:
    """The :class:`KeyType` named ``text`` (as a form or the CLI submits it)."""
    try:
        return KeyType(text)
    except ValueError:
        known = ", ".join(KeyType)
        raise InvalidInput(f"Unknown key type. Known key types: {known}.") from None


def generate_key(kind: KeyType) -> PrivateKey:
    """A fresh private key of ``kind`` (RSA-4096 takes seconds: run it off the event loop)."""
    key: PrivateKey
    if kind in _RSA_BITS:
        key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[kind])
    else:
        key = ec.generate_private_key(_EC_CURVES[kind])
    # Held to the same rules as a client's key, so that a change here cannot slip past them.
    check_public_key(key.public_key())
    return key


def key_type_of(public_key: PublicKeyTypes) -> KeyType | None:
    """The :class:`KeyType` of ``public_key``, or None when it is none of them."""
    if isinstance(public_key, rsa.RSAPublicKey):
        for kind, bits in _RSA_BITS.items():
            if public_key.key_size == bits:
                return kind
        return None
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for kind, curve in _EC_CURVES.items():
            if public_key.curve.name == curve.name:
                return kind
    return None


@dataclass(frozen=True)
class Profile:
    """A kind of certificate the built-in CA issues."""

    name: str
    purpose: str  # one line for the console and the enrollment page
    validity_days: int
    allowed_key_types: frozenset[KeyType]
    escrow: bool  # whether the archive path may take the key; enforced there
    extended_key_usages: tuple[x509.ObjectIdentifier, ...]
    signing: bool  # digitalSignature
    encryption: bool  # keyEncipherment (RSA) or keyAgreement (EC)
    non_repudiation: bool = False  # contentCommitment, for signatures meant to bind the signer

    def __post_init__(self) -> None:
        if not 1 <= self.validity_days <= MAX_VALIDITY_DAYS:
            raise ValueError(f"validity_days must be 1 to {MAX_VALIDITY_DAYS}")
        if not self.allowed_key_types:
            raise ValueError("a profile must allow at least one key type")
        if not (self.signing or self.encryption):
            raise ValueError("a profile must allow signing, encryption or both")

    @property
    def escrows_signing_key(self) -> bool:
        """True when an escrowed key could also sign: administrators could sign as the person."""
        return self.escrow and self.signing

    def key_usage(self, public_key: PublicKeyTypes) -> x509.KeyUsage:
        """The KeyUsage for a certificate of this profile over ``public_key``."""
        is_ec = isinstance(public_key, ec.EllipticCurvePublicKey)
        if self.encryption and not (is_ec or isinstance(public_key, rsa.RSAPublicKey)):
            raise UnsupportedKey("Only RSA and EC keys can be used for encryption.")
        return x509.KeyUsage(
            digital_signature=self.signing,
            content_commitment=self.non_repudiation,
            # EC keys cannot encipher a content key; S/MIME with EC uses ECDH (RFC 5480 §3,
            # RFC 5753), which is keyAgreement.
            key_encipherment=self.encryption and not is_ec,
            data_encipherment=False,
            key_agreement=self.encryption and is_ec,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )


_EMAIL = (ExtendedKeyUsageOID.EMAIL_PROTECTION,)

PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        # Dual use, as the commercial product issues it. Escrowing this key lets whoever can
        # release it sign as the person: the console and docs say so (escrows_signing_key).
        Profile(
            name="smime",
            purpose="Email signing and encryption (dual use). The key is escrowed, so "
            "administrators who can recover it could also sign as the person.",
            validity_days=DEFAULT_VALIDITY_DAYS,
            allowed_key_types=ALL_KEY_TYPES,
            escrow=True,
            extended_key_usages=_EMAIL,
            signing=True,
            encryption=True,
        ),
        Profile(
            name="smime-encryption",
            purpose="Email encryption only; the key is escrowed so that old mail stays readable.",
            validity_days=DEFAULT_VALIDITY_DAYS,
            allowed_key_types=ALL_KEY_TYPES,
            escrow=True,
            extended_key_usages=_EMAIL,
            signing=False,
            encryption=True,
        ),
        # A signing key is never escrowed: nobody needs it back to read anything, and a copy
        # would let its holder sign as the person.
        Profile(
            name="smime-signing",
            purpose="Email signing only; the key is delivered once and never escrowed.",
            validity_days=DEFAULT_VALIDITY_DAYS,
            allowed_key_types=ALL_KEY_TYPES,
            escrow=False,
            extended_key_usages=_EMAIL,
            signing=True,
            encryption=False,
            non_repudiation=True,
        ),
        Profile(
            name="client-auth",
            purpose="Client authentication (TLS, VPN, Wi-Fi).",
            validity_days=DEFAULT_VALIDITY_DAYS,
            allowed_key_types=ALL_KEY_TYPES,
            escrow=True,
            extended_key_usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
            signing=True,
            encryption=False,
        ),
    )
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``, or :class:`InvalidInput` naming the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise InvalidInput(f"Unknown certificate profile. Known profiles: {known}.") from None
