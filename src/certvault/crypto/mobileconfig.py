"""iOS configuration profiles (.mobileconfig): a plist of PKCS#12 payloads, an optional Exchange
ActiveSync account wired to the newest of them, and an optional CMS signature.

Bytes in, bytes out: the caller makes the PKCS#12 files and says what the account's settings are.
Payload keys follow Apple's device-management schema (TopLevel, com.apple.security.pkcs12,
com.apple.eas.account).
"""

from __future__ import annotations

import plistlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.hazmat.primitives.serialization.pkcs7 import (
    PKCS7Options,
    PKCS7SignatureBuilder,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from certvault.crypto.keys import PrivateKey, key_matches_certificate
from certvault.crypto.pkcs12.writer import EncryptionType
from certvault.errors import InvalidInput, KeyMismatch, UnsupportedKey

MEDIA_TYPE = "application/x-apple-aspen-config"
EXTENSION = ".mobileconfig"
# What iOS opens on every version it still installs profiles on.
P12_ENCRYPTION = EncryptionType.TRIPLEDES_SHA1
# Payload UUIDs are uuid5 names under this namespace: the same account and certificate give the
# same UUIDs in every download, so that a device replaces a profile instead of adding another.
NAMESPACE = uuid.UUID("ef857f55-af8e-4dde-9544-c6cb38728291")
PKCS12, EXCHANGE, PROFILE = "pkcs12", "eas", "profile"


@dataclass(frozen=True)
class Identity:
    """One certificate with its key, as a PKCS#12 file encrypted with P12_ENCRYPTION."""

    certificate: x509.Certificate
    p12: bytes
    filename: str  # PayloadCertificateFileName
    display_name: str
    email: str | None  # the owner's address, for the Exchange account


@dataclass(frozen=True)
class ExchangeAccount:
    """The account's Exchange ActiveSync settings (Key Vault Recovery Options)."""

    host: str
    use_ssl: bool
    past_days: int
    prevent_move: bool


@dataclass(frozen=True)
class Signer:
    """The profile-signing identity: its key, certificate and intermediates."""

    key: PrivateKey
    certificate: x509.Certificate
    chain: Sequence[x509.Certificate] = ()


def can_sign(key: PrivateKey) -> TypeGuard[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]:
    """Whether profiles can be signed with ``key`` (CMS here takes RSA and EC keys only)."""
    return isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))


def payload_uuid(account_uuid: str, role: str, certificates: Sequence[x509.Certificate]) -> str:
    """The UUID of the ``role`` payload over ``certificates``: stable, and distinct across
    accounts, certificates and roles."""
    digests = sorted(c.fingerprint(hashes.SHA256()).hex() for c in certificates)
    name = ":".join([account_uuid, role, *digests])
    return str(uuid.uuid5(NAMESPACE, name)).upper()


def newest(identities: Sequence[Identity]) -> Identity:
    """The identity issued last (latest notBefore): the one a mail account should use."""
    return max(
        identities,
        key=lambda i: (
            i.certificate.not_valid_before_utc,
            i.certificate.fingerprint(hashes.SHA256()),
        ),
    )


def build_profile(
    account_uuid: str,
    organization: str,
    display_name: str,
    identities: Sequence[Identity],
    exchange: ExchangeAccount | None = None,
) -> bytes:
    """The profile's plist (XML): one pkcs12 payload per identity, and the Exchange account.

    The payloads carry no Password: iOS asks for it on install, and a password inside the
    profile would travel beside the key it protects.
    """
    if not identities:
        raise InvalidInput("A profile needs at least one certificate.")
    content = [_pkcs12_payload(account_uuid, identity) for identity in identities]
    if exchange is not None:
        content.append(_exchange_payload(account_uuid, exchange, newest(identities)))
    top = payload_uuid(account_uuid, PROFILE, [i.certificate for i in identities])
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"certvault.{PROFILE}.{top}",
        "PayloadUUID": top,
        "PayloadDisplayName": display_name,
        "PayloadOrganization": organization,
        "PayloadContent": content,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


def _pkcs12_payload(account_uuid: str, identity: Identity) -> dict[str, Any]:
    own = payload_uuid(account_uuid, PKCS12, [identity.certificate])
    return {
        "PayloadType": "com.apple.security.pkcs12",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"certvault.{PKCS12}.{own}",
        "PayloadUUID": own,
        "PayloadDisplayName": identity.display_name,
        "PayloadCertificateFileName": identity.filename,
        "PayloadContent": identity.p12,  # bytes: a <data> element
    }


def _exchange_payload(
    account_uuid: str, exchange: ExchangeAccount, identity: Identity
) -> dict[str, Any]:
    """The Exchange account, its S/MIME and authentication wired to ``identity``'s payload as
    far as its certificate allows: signing needs digitalSignature in its key usage, client
    authentication the clientAuth extended key usage (an absent extension allows neither)."""
    own = payload_uuid(account_uuid, EXCHANGE, [identity.certificate])
    target = payload_uuid(account_uuid, PKCS12, [identity.certificate])
    payload: dict[str, Any] = {
        "PayloadType": "com.apple.eas.account",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"certvault.{EXCHANGE}.{own}",
        "PayloadUUID": own,
        "PayloadDisplayName": "Exchange ActiveSync",
        "Host": exchange.host,
        "SSL": exchange.use_ssl,
        "MailNumberOfPastDaysToSync": exchange.past_days,
        "PreventMove": exchange.prevent_move,
        "SMIMEEncryptionCertificateUUID": target,
    }
    if identity.email:
        payload["EmailAddress"] = identity.email
    if _signs(identity.certificate):
        payload["SMIMESigningEnabled"] = True
        payload["SMIMESigningCertificateUUID"] = target
    if _authenticates_clients(identity.certificate):
        payload["PayloadCertificateUUID"] = target
    return payload


def _signs(certificate: x509.Certificate) -> bool:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return usage.digital_signature


def _authenticates_clients(certificate: x509.Certificate) -> bool:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages


def sign_profile(profile: bytes, signer: Signer) -> bytes:
    """The profile as DER CMS SignedData with the plist inside (not detached), carrying the
    signing certificate and its intermediates: without them a device cannot build the path and
    shows the profile as unverified."""
    key = signer.key
    if not can_sign(key):
        raise UnsupportedKey("Profiles can be signed with RSA and EC keys only.")
    if not key_matches_certificate(key, signer.certificate):
        raise KeyMismatch()
    builder = (
        PKCS7SignatureBuilder()
        .set_data(profile)
        .add_signer(signer.certificate, key, hashes.SHA256())
    )
    # The intermediates go last: set_data and add_signer return builders that have dropped the
    # certificates added before them.
    for certificate in signer.chain:
        builder = builder.add_certificate(certificate)
    # Binary: the plist is signed and embedded byte for byte, not turned into CRLF text.
    return builder.sign(Encoding.DER, [PKCS7Options.Binary])
