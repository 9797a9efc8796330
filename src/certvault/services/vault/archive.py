"""The one way in: every private key enters the vault through :func:`archive_entry`.

Callers: PKCS#12 import (here), and later web-form enrollment and agent archival. The key must
match its certificate; it is escrowed once per account and public key; the audit event and the
subscriber's notification are written in the same transaction as the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto import keys as keylib
from certvault.crypto.ca import chains_to
from certvault.crypto.names import subject_name
from certvault.crypto.profiles import Profile
from certvault.db.models import (
    Account,
    Certificate,
    EscrowedKey,
    Organization,
    Person,
    TrustedIssuer,
    new_uuid,
)
from certvault.errors import (
    CertvaultError,
    Conflict,
    Forbidden,
    InvalidInput,
    KeyMismatch,
    NotFound,
)
from certvault.services.audit import log as audit
from certvault.services.directory import persons
from certvault.services.directory.certificates import add_certificate
from certvault.services.kernel import keyring, notify
from certvault.services.kernel.actors import Actor, Privilege
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import default_organization, find_organization
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
class _ArchiveCache:
    """What every archive of one transaction reads alike, read once (a bulk import archives
    hundreds of keys in one transaction). Forgotten when the session ends."""

    account_id: int
    trusted_issuers: list[x509.Certificate]
    default_organization: Organization
    service_spkis: set[bytes]

    @classmethod
    def of(cls, session: Session, account: Account) -> _ArchiveCache:
        cache: _ArchiveCache | None = session.info.get("certvault_archive_cache")
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


def _chains_to_trusted(
    session: Session, account: Account, cert: x509.Certificate, chain: Sequence[x509.Certificate]
) -> bool:
    return chains_to(cert, chain, _ArchiveCache.of(session, account).trusted_issuers)


def _owner(
    session: Session, account: Account, actor: Actor, req: EscrowRequest, emails: list[str]
) -> tuple[Person, Organization]:
    if req.person_id is not None:
        person = session.get(Person, req.person_id)
        if person is None or person.account_id != account.id:
            raise NotFound("Person not found.")
        actor.require_visible(account.id, person.organization_id, "Person")
        if person.email not in emails:
            raise PersonMismatch()
        return person, session.get_one(Organization, person.organization_id)
    org = (
        find_organization(session, account, req.organization)
        if req.organization
        else _ArchiveCache.of(session, account).default_organization
    )
    email = req.person_email or (emails[0] if emails else None)
    if email is None:
        raise NoOwner()
    person, _ = persons.find_or_create(session, account, email, org)
    return person, session.get_one(Organization, person.organization_id)


@dataclass(frozen=True)
class EntryFacts:
    """What an entry's key and certificate say, checked before the database is asked."""

    key: keylib.PrivateKey
    spki: bytes
    sha256: bytes
    sha1: str
    md5: str
    issuer_sha256: bytes
    serial: str
    emails: list[str]
    alias: str


def entry_facts(session: Session, account: Account, req: EscrowRequest) -> EntryFacts:
    """The checks of :func:`archive_entry` that need no row of the entry's own, in its order."""
    if not account.key_vault_enabled:
        raise KeyVaultDisabled()
    if req.profile is not None and not req.profile.escrow:
        raise EscrowNotAllowed()
    key = keylib.supported_key(req.key)
    cert = req.certificate
    if not keylib.key_matches_certificate(key, cert):
        raise KeyMismatch()
    spki = keylib.spki_sha256(key.public_key())
    if spki in _ArchiveCache.of(session, account).service_spkis:
        raise ServiceKeyRefused()
    der = cert.public_bytes(Encoding.DER)
    emails = keylib.certificate_emails(cert)
    return EntryFacts(
        key=key,
        spki=spki,
        sha256=hashlib.sha256(der).digest(),
        sha1=hashlib.sha1(der).hexdigest(),  # noqa: S324 - an identifier for the SCM API
        md5=hashlib.md5(der).hexdigest(),  # noqa: S324
        issuer_sha256=hashlib.sha256(cert.issuer.public_bytes()).digest(),
        serial=format(cert.serial_number, "x"),
        emails=emails,
        alias=_alias(req, emails),
    )


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


def archive_entry(
    session: Session, ports: Ports, account: Account, actor: Actor, req: EscrowRequest
) -> EntryResult:
    """Escrow one key with its certificate, inside the caller's transaction.

    Raises a :class:`CertvaultError` for a refusal; the caller rolls back and audits it.
    A bulk import plans and writes many entries at once with the same rules (bulk.py).
    """
    facts = entry_facts(session, account, req)
    spki, sha256, sha1, md5 = facts.spki, facts.sha256, facts.sha1, facts.md5
    issuer_sha256, serial, emails, alias = (
        facts.issuer_sha256,
        facts.serial,
        facts.emails,
        facts.alias,
    )
    cert = req.certificate

    clash = session.scalars(
        select(Certificate.id).where(
            Certificate.account_id == account.id,
            Certificate.issuer_sha256 == issuer_sha256,
            Certificate.serial == serial,
            Certificate.sha256 != sha256,
        )
    ).first()
    if clash is not None:
        raise CertificateConflict()
    trusted = _chains_to_trusted(session, account, cert, req.chain)
    if account.require_trusted_issuer and not trusted:
        raise UntrustedIssuer()

    existing = session.scalars(
        select(Certificate).where(
            Certificate.account_id == account.id, Certificate.sha256 == sha256
        )
    ).first()
    escrowed = session.scalars(
        select(EscrowedKey).where(
            EscrowedKey.account_id == account.id, EscrowedKey.spki_sha256 == spki
        )
    ).first()
    if existing is not None:
        actor.require_visible(account.id, existing.organization_id, "Certificate")
        if req.person_id is not None:  # an upload for a person: the known certificate is theirs
            named, _ = _owner(session, account, actor, req, emails)
            if existing.person_id != named.id:
                raise PersonMismatch()
        if escrowed is not None and existing.escrowed_key_id == escrowed.id:
            return EntryResult(alias, existing.id, md5, sha1, ALREADY_EXISTS)
        owner = existing.person
        organization_id = existing.organization_id
    else:
        owner, org = _owner(session, account, actor, req, emails)
        organization_id = org.id
    actor.require(Privilege.CERTIFICATES_MANAGE, account.id, organization_id)

    new_key = escrowed is None
    if escrowed is None:
        escrowed = EscrowedKey(**escrowed_key_values(session, ports, account, actor, req, facts))
        session.add(escrowed)
        session.flush()

    if existing is not None:
        existing.escrowed_key_id = escrowed.id
        row = existing
    else:
        row = add_certificate(
            session,
            account,
            cert,
            req.chain,
            person=owner,
            organization_id=organization_id,
            source=req.source,
            profile=req.profile.name if req.profile else None,
            ca_id=req.ca_id,
            escrowed_key_id=escrowed.id,
            trusted_issuer=trusted,
            friendly_name=req.friendly_name,
        )

    recipients = emails or ([owner.email] if owner else [])
    for address in recipients:
        notify.queue_mail(
            session,
            account,
            address,
            ESCROW_SUBJECT,
            _escrow_notice(account, row),
        )
    # Last, so that nothing after it can fail and leave a head for an event never committed.
    audit.record(
        session,
        ports,
        account=account,
        actor=actor,
        action=ARCHIVE,
        target_type="certificate",
        target_id=row.id,
        details=archive_details(req, sha256, spki, new_key, trusted),
    )
    return EntryResult(alias, row.id, md5, sha1, IMPORTED)


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


def _escrow_notice(account: Account, cert: Certificate) -> str:
    return escrow_notice(account, cert.subject, cert.issuer, cert.serial, cert.not_after)


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
