"""What an archival decides, and the values it stores: the request, the refusals, the facts of
an entry checked before the database is asked, and the columns of a new escrowed key.

The decisions themselves are made in one place, :class:`bulk.BatchPlan`, for one entry
(:func:`archive.archive_entry`, the one way in) and for many alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto import keys as keylib
from certvault.crypto.names import subject_name
from certvault.crypto.profiles import Profile
from certvault.db.models import Account, Organization, TrustedIssuer, new_uuid
from certvault.errors import (
    CertvaultError,
    Conflict,
    Forbidden,
    InvalidInput,
    KeyMismatch,
)
from certvault.services.directory.certificates import CertificateIdentity, identify
from certvault.services.kernel import keyring
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import default_organization
from certvault.services.kernel.text import column_text

ARCHIVE = "key.archive"
IMPORTED = "Imported successfully"
ALREADY_EXISTS = "Already exists"


class KeyVaultDisabled(Forbidden):
    """Key Vault is not enabled for this account."""

    code = "key_vault_disabled"


class CertificateConflict(Conflict):
    """Another certificate with the same issuer and serial number is already stored."""

    code = "certificate_conflict"


class UntrustedIssuer(InvalidInput):
    """The certificate does not chain to one of the account's trusted issuers."""

    code = "untrusted_issuer"


class ServiceKeyRefused(Forbidden):
    """This key is one certvault uses itself; it is never escrowed or released."""

    code = "service_key"


class EscrowNotAllowed(Forbidden):
    """The certificate's profile forbids escrowing its key (signing keys stay with their owner)."""

    code = "escrow_not_allowed"


class NoOwner(InvalidInput):
    """The certificate carries no email address; name the person it belongs to."""

    code = "no_owner"


class PersonMismatch(InvalidInput):
    """The certificate's email address does not belong to this person."""

    code = "person_mismatch"


@dataclass(frozen=True)
class EscrowRequest:
    key: keylib.PrivateKey
    certificate: x509.Certificate
    chain: Sequence[x509.Certificate] = ()
    friendly_name: str | None = None
    source: str = "import"
    person_id: int | None = None  # upload for a given person: the certificate must be theirs
    person_email: str | None = None  # owner named by an import manifest
    organization: str | None = None  # name or id, for a person certvault creates
    profile: Profile | None = None  # set when certvault issued the certificate
    ca_id: int | None = None  # the built-in CA that issued it
    # How the import file's password had to be encoded, when not as the standard says (audited).
    password_encoding: str | None = None


@dataclass(frozen=True, slots=True)
class EntryResult:
    """One entry of an import, in the shape of the SCM import-key response. Kept for every
    entry of a bulk import until it ends: small (slots; no key, no certificate)."""

    alias: str
    client_cert_id: int | None
    md5: str
    sha1: str
    message: str
    code: str | None = None  # None when imported or already there
    status: int | None = None  # the HTTP status of a failed entry's error

    @property
    def ok(self) -> bool:
        return self.code is None

    def scm(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "clientCertId": self.client_cert_id,
            "md5": self.md5,
            "sha1": self.sha1,
            "message": self.message,
        }


def _alias(req: EscrowRequest, emails: list[str]) -> str:
    name = column_text(req.friendly_name or "", 200)
    if name:
        return name
    if emails:
        return emails[0]
    return column_text(req.certificate.subject.rfc4514_string(), 200)


def failed_entry(req: EscrowRequest, exc: CertvaultError) -> EntryResult:
    cert = req.certificate
    try:
        emails = keylib.certificate_emails(cert)
    except CertvaultError:
        emails = []  # the refusal may be about these very addresses
    return EntryResult(
        alias=_alias(req, emails),
        client_cert_id=None,
        md5=cert.fingerprint(hashes.MD5()).hex(),  # noqa: S303
        sha1=cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303
        message=exc.message,
        code=exc.code,
        status=exc.status,
    )


@dataclass
class ArchiveCache:
    """What every archive of one transaction reads alike, read once (a bulk import archives
    hundreds of keys in one transaction). Forgotten when the session ends."""

    account_id: int
    trusted_issuers: list[x509.Certificate]
    default_organization: Organization
    service_spkis: set[bytes]

    @classmethod
    def of(cls, session: Session, account: Account) -> ArchiveCache:
        cache: ArchiveCache | None = session.info.get("certvault_archive_cache")
        if cache is None or cache.account_id != account.id:
            cache = cls(
                account.id,
                [
                    x509.load_der_x509_certificate(issuer.der)
                    for issuer in session.scalars(
                        select(TrustedIssuer).where(TrustedIssuer.account_id == account.id)
                    )
                ],
                default_organization(session, account),
                keyring.service_public_keys(session),
            )
            session.info["certvault_archive_cache"] = cache
        return cache


@dataclass(frozen=True)
class EntryFacts:
    """What an entry's key and certificate say, checked before the database is asked."""

    key: keylib.PrivateKey
    spki: bytes  # of the key, and so of the certificate it matches
    certificate: CertificateIdentity
    alias: str


def entry_facts(session: Session, account: Account, req: EscrowRequest) -> EntryFacts:
    """The checks of an archival that need no row of the entry's own, in the order it makes them."""
    if not account.key_vault_enabled:
        raise KeyVaultDisabled()
    if req.profile is not None and not req.profile.escrow:
        raise EscrowNotAllowed()
    key = keylib.supported_key(req.key)
    cert = req.certificate
    spki_der = keylib.matched_spki_der(key, cert)
    if spki_der is None:
        raise KeyMismatch()
    spki = hashlib.sha256(spki_der).digest()
    if spki in ArchiveCache.of(session, account).service_spkis:
        raise ServiceKeyRefused()
    identity = identify(cert)
    return EntryFacts(key=key, spki=spki, certificate=identity, alias=_alias(req, identity.emails))


def escrowed_key_values(
    session: Session,
    ports: Ports,
    account: Account,
    actor: Actor,
    req: EscrowRequest,
    facts: EntryFacts,
) -> dict[str, Any]:
    """The column values of a new escrowed key: the key sealed under its own data key."""
    key_uuid = new_uuid()
    sealed = keyring.seal_private_key(
        session, ports, account, key_uuid, facts.spki, keylib.to_pkcs8_der(facts.key)
    )
    algorithm, size = keylib.describe_key(facts.key)
    return {
        "uuid": key_uuid,
        "account_id": account.id,
        "spki_sha256": facts.spki,
        "algorithm": algorithm,
        "key_size": str(size),
        "nonce": sealed.nonce,
        "ciphertext": sealed.ciphertext,
        "data_key_nonce": sealed.data_key_nonce,
        "wrapped_data_key": sealed.wrapped_data_key,
        "account_key_version": sealed.account_key_version,
        "source": req.source,
        "created_by": actor.name[:320],
    }


def archive_details(
    req: EscrowRequest, sha256: bytes, spki: bytes, new_key: bool, trusted: bool
) -> dict[str, Any]:
    """The audit details of an archived entry, the same whichever path stored it."""
    return {
        "certificate_sha256": sha256.hex(),
        "spki_sha256": spki.hex(),
        "source": req.source,
        "new_key": new_key,
        "trusted_issuer": trusted,
        **({"password_encoding": req.password_encoding} if req.password_encoding else {}),
    }


ESCROW_SUBJECT = "Your private key has been escrowed"


def escrow_notice(
    account: Account, subject: str, issuer: str, serial: str, not_after: datetime
) -> str:
    return (
        f"A copy of the private key of your certificate has been stored, encrypted, in the key "
        f"vault of {account.name}, so that it can be recovered if you lose it.\n\n"
        f"Certificate subject: {subject_name(subject).dn}\n"
        f"Issuer: {subject_name(issuer).dn}\n"
        f"Serial number: {serial}\n"
        f"Valid until: {not_after:%Y-%m-%d}\n\n"
        "Every recovery of this key is recorded, and you will be told of it by mail.\n"
    )
