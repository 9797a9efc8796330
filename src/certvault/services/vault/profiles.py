"""iOS configuration profiles for a release: the format a release is asked for, and the profile
built from the account's Key Vault settings (Exchange account, signing identity).

Only release.release_keys calls this, in its reading transaction: the keys it puts into a
profile are the PKCS#12 files the release made, so the release stays the one way out. The signing
key is a service key, used here and never released.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from sqlalchemy.orm import Session

from certvault.crypto import mobileconfig
from certvault.crypto.pkcs12.writer import EncryptionType
from certvault.db.models import Account, Certificate, KeyVaultSettings, Person, ServiceKey
from certvault.errors import Conflict, InvalidInput
from certvault.services.kernel import keyring
from certvault.services.kernel.ports import Ports

P12_MEDIA_TYPE = "application/x-pkcs12"


class UnsupportedFormat(InvalidInput):
    """This release format is not supported."""

    code = "unsupported_format"


class ProfileEncryptionFixed(InvalidInput):
    """The PKCS#12 inside an iOS profile is always encrypted TripleDES-SHA1."""

    code = "profile_encryption_fixed"


class SigningIdentityMissing(Conflict):
    """Profiles are to be signed, but no signing identity is stored: upload one on the Key
    Vault page."""

    code = "signing_identity_missing"


class SigningIdentityExpired(Conflict):
    """The profile-signing certificate has expired."""

    code = "signing_identity_expired"


class ReleaseFormat(StrEnum):
    """What a release hands out: PKCS#12 files, or one iOS configuration profile."""

    P12 = "p12"
    MOBILECONFIG = "mobileconfig"

    @classmethod
    def parse(cls, value: str | ReleaseFormat | None) -> ReleaseFormat:
        """``None`` gives p12; the submitted value is never echoed (it may be anything)."""
        if value is None:
            return cls.P12
        for member in cls:
            if value.strip().lower() == member.value:
                return member
        raise UnsupportedFormat("Unknown format; use one of: " + ", ".join(cls) + ".")

    @property
    def media_type(self) -> str:
        return mobileconfig.MEDIA_TYPE if self is ReleaseFormat.MOBILECONFIG else P12_MEDIA_TYPE

    @property
    def extension(self) -> str:
        return mobileconfig.EXTENSION if self is ReleaseFormat.MOBILECONFIG else ".p12"

    @property
    def label(self) -> str:
        """As the owner's notice names it."""
        if self is ReleaseFormat.MOBILECONFIG:
            return "iOS configuration profile (.mobileconfig)"
        return "PKCS#12 file (.p12)"


def release_format(
    value: str | ReleaseFormat | None, encryption: str | EncryptionType | None
) -> ReleaseFormat:
    """The format asked for. A profile's PKCS#12 is always TripleDES-SHA1 (what iOS opens), so
    asking for another encryption with it is refused rather than quietly weakened."""
    kind = ReleaseFormat.parse(value)
    if (
        kind is ReleaseFormat.MOBILECONFIG
        and encryption is not None
        and EncryptionType.parse(encryption) is not mobileconfig.P12_ENCRYPTION
    ):
        raise ProfileEncryptionFixed()
    return kind


@dataclass(frozen=True)
class ProfileOptions:
    """What the account's Key Vault settings put into its profiles."""

    exchange: mobileconfig.ExchangeAccount | None
    signer: mobileconfig.Signer | None  # None: delivered unsigned


def profile_options(session: Session, ports: Ports, account: Account) -> ProfileOptions:
    """The account's profile settings, checked before any key is opened: signing switched on
    without a usable identity is refused here, unless the account allows unsigned profiles once
    the signing certificate has expired."""
    row = session.get(KeyVaultSettings, account.id)
    if row is None:  # never saved: the defaults, no Exchange and no signing
        return ProfileOptions(None, None)
    exchange = None
    if row.exchange_enabled:
        exchange = mobileconfig.ExchangeAccount(
            row.exchange_host,
            row.exchange_use_ssl,
            row.exchange_past_days,
            row.exchange_prevent_move,
        )
    return ProfileOptions(exchange, _signer(session, ports, row) if row.sign_profiles else None)


def _signer(session: Session, ports: Ports, row: KeyVaultSettings) -> mobileconfig.Signer | None:
    sealed = session.get(ServiceKey, row.signing_key_id) if row.signing_key_id else None
    if sealed is None or sealed.certificate_der is None:
        raise SigningIdentityMissing()
    certificate = x509.load_der_x509_certificate(sealed.certificate_der)
    expiry = certificate.not_valid_after_utc
    if expiry <= ports.clock():
        if row.unsigned_fallback:
            return None
        raise SigningIdentityExpired(
            f"The profile-signing certificate expired on {expiry:%Y-%m-%d}: upload a new signing "
            "identity on the Key Vault page, or allow unsigned profiles there."
        )
    chain = x509.load_pem_x509_certificates(sealed.chain_pem.encode()) if sealed.chain_pem else []
    return mobileconfig.Signer(keyring.open_signing_key(ports, sealed), certificate, chain)


def profile_writer(
    session: Session,
    account: Account,
    options: ProfileOptions,
    certificates: Sequence[tuple[Certificate, str]],
) -> Callable[[Sequence[bytes]], bytes]:
    """What the .mobileconfig needs from the database, read now; the returned function builds
    it from each certificate's PKCS#12 file (encrypted with mobileconfig.P12_ENCRYPTION, named as
    in ``certificates``) and signs it when ``options`` say so. A release commits in between."""
    named = [
        (x509.load_der_x509_certificate(cert.der), filename, _display_name(cert))
        for cert, filename in certificates
    ]
    emails = [_owner_email(session, cert) for cert, _ in certificates]
    owners = sorted({email for email in emails if email})
    description = "Certificates and keys" + (" of " + ", ".join(owners) if owners else "")
    uuid, name = account.uuid, account.name  # build runs once the release's session is gone

    def build(p12s: Sequence[bytes]) -> bytes:
        identities = [
            mobileconfig.Identity(certificate, p12, filename, display, email)
            for (certificate, filename, display), p12, email in zip(
                named, p12s, emails, strict=True
            )
        ]
        plist = mobileconfig.build_profile(uuid, name, description, identities, options.exchange)
        return mobileconfig.sign_profile(plist, options.signer) if options.signer else plist

    return build


def _owner_email(session: Session, cert: Certificate) -> str | None:
    """The address of the certificate's person, else the first address in the certificate."""
    person = session.get(Person, cert.person_id) if cert.person_id is not None else None
    if person is not None:
        return person.email
    return next(iter(cert.emails.split()), None)


def _display_name(cert: Certificate) -> str:
    """What the device lists: whose certificate, and until when (two generations differ)."""
    name = next(iter(cert.emails.split()), None) or cert.friendly_name or cert.subject
    return f"{name} (valid until {cert.not_after:%Y-%m-%d})"
