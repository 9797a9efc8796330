"""Enrollment with a client CSR: the requester keeps the private key, the issuer signs, and
certvault records the certificate (nothing is escrowed). Issued certificates are collected again
in the shapes clients ask for (PEM, DER, PKCS#7, with or without the chain)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from sqlalchemy.orm import Session

from certvault.crypto.ca import check_csr, load_csr
from certvault.crypto.names import subject_name
from certvault.crypto.profiles import PROFILES, Profile, get_profile, key_type_of
from certvault.db.models import Account, Certificate, Organization, Person
from certvault.errors import (
    CertvaultError,
    InvalidInput,
    KeyTypeNotAllowed,
    NotFound,
)
from certvault.services.audit import log as audit
from certvault.services.directory import persons
from certvault.services.directory.certificates import add_certificate, get_certificate
from certvault.services.kernel import notify
from certvault.services.kernel.actors import Actor, Privilege, Scope
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import default_organization, get_account
from certvault.services.pki.ca import BuiltinIssuer
from certvault.services.pki.issuance import CertificateIssuer, IssueRequest

ENROLL = "certificate.enroll"
SOURCE = "csr"
MAX_EXTRA_EMAILS = 20
MAX_COMMENT = 500


class PersonMismatch(InvalidInput):
    """An address to certify does not belong to the person the certificate is for."""

    code = "person_mismatch"


class OrganizationMismatch(InvalidInput):
    """The person belongs to another organization than the one named."""

    code = "organization_mismatch"


class InvalidTerm(InvalidInput):
    """The requested validity is not one the profile allows."""

    code = "invalid_term"


class ChainUnknown(NotFound):
    """No issuer certificates are known for this certificate."""

    code = "chain_unknown"


def enroll_csr(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    *,
    csr_pem_or_der: bytes,
    profile: str,
    email: str,
    person_id: int | None = None,
    organization_id: int | None = None,
    common_name: str | None = None,
    first_name: str | None = None,
    last_name: str | None = None,
    extra_emails: Sequence[str] = (),
    validity_days: int | None = None,
    new_person: persons.PersonFields | None = None,
    comment: str | None = None,
    channel: str = "api",
    issuer: CertificateIssuer | None = None,
) -> Certificate:
    """Issue a certificate of ``profile`` over the CSR's public key for ``email``'s owner.

    The owner is ``person_id``, or the person with ``email`` (created in ``organization_id``,
    or the default organization, with ``new_person``'s fields when there is none). The CSR's
    names and extensions are ignored: the profile and the enrollment decide them. ``first_name``
    and ``last_name`` fill the person's empty names and, without ``common_name``, make the CN
    ("First Last", names already on the person's record winning). Issuing and recording happen
    in one transaction; every refusal is audited.
    """
    account_id: int | None = None
    chosen_issuer = issuer or BuiltinIssuer(ports)

    def work(session: Session) -> Certificate:
        nonlocal account_id
        account = get_account(session, account_slug)
        account_id = account.id
        actor.require_visible(account.id, None, "Account")
        person, org = _subscriber(session, actor, account, email, person_id, organization_id)
        actor.require(Privilege.CERTIFICATES_MANAGE, account.id, org.id)
        actor.require_scope(Scope.MANAGE)
        names = (
            persons.given_name(first_name, "first name"),
            persons.given_name(last_name, "last name"),
        )
        persons.name_as_common_name(*names)  # both fit one CN
        chosen_cn = (
            common_name if common_name is not None else persons.common_name_for(person, *names)
        )
        request = _issue_request(csr_pem_or_der, profile, email, chosen_cn, extra_emails)
        request = dataclasses.replace(request, profile=_with_term(request.profile, validity_days))
        if comment is not None and len(comment) > MAX_COMMENT:
            raise InvalidInput(f"A comment may have at most {MAX_COMMENT} characters.")
        if person is None:
            person = _create_subscriber(session, account, org, request, new_person)
        else:
            _check_addresses(person, request)
        persons.fill_empty_names(person, *names)
        issued = chosen_issuer.issue(session, account, request)
        row = add_certificate(
            session,
            account,
            issued.certificate,
            issued.chain,
            person=person,
            organization_id=org.id,
            source=SOURCE,
            profile=request.profile.name,
            ca_id=issued.ca_id,
        )
        for address in row.emails.split():
            notify.queue_mail(
                session, account, address, "A certificate was issued for you", _notice(account, row)
            )
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action=ENROLL,
            target_type="certificate",
            target_id=row.id,
            details={
                "certificate_sha256": row.sha256.hex(),
                "spki_sha256": row.spki_sha256.hex(),
                "serial": row.serial,
                "profile": request.profile.name,
                "validity_days": request.profile.validity_days,
                "person_id": person.id,
                "ca_id": issued.ca_id,
                "source": SOURCE,
                "channel": channel,
            }
            | ({"comment": comment} if comment else {}),
        )
        return row

    try:
        return ports.db.run(work)
    except CertvaultError as exc:
        audit.record_refusal(
            ports,
            account_id=account_id,
            actor=actor,
            action=ENROLL,
            reason_code=exc.code,
            target_type="certificate",
            # Only a known profile's name: the field is the caller's free text, and a refusal
            # must not keep what was typed into it (DESIGN.md §5.7).
            details={"channel": channel, "profile": profile if profile in PROFILES else "?"},
        )
        raise


def csr_from_text(text: str) -> bytes:
    """A CSR as JSON bodies carry it: PEM, or the DER in base64 (line breaks allowed).

    Text that is neither comes back as it is, for :func:`enroll_csr` to refuse (and audit)."""
    data = text.encode("utf-8", "replace")
    if text.lstrip().startswith("-----BEGIN"):
        return data
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return data


def _issue_request(
    data: bytes,
    profile_name: str,
    email: str,
    common_name: str | None,
    extra_emails: Sequence[str],
) -> IssueRequest:
    """What to issue, once the CSR proves possession of a key the profile takes."""
    csr = load_csr(data)
    check_csr(csr)
    profile = get_profile(profile_name)
    public_key = csr.public_key()
    kind = key_type_of(public_key)
    if kind is None or kind not in profile.allowed_key_types:
        allowed = ", ".join(sorted(profile.allowed_key_types))
        raise KeyTypeNotAllowed(f"The profile {profile.name} allows these key types: {allowed}.")
    if len(extra_emails) > MAX_EXTRA_EMAILS:
        raise InvalidInput(f"A certificate may name at most {MAX_EXTRA_EMAILS} more addresses.")
    address = persons.normalize_email(email)
    extra = tuple(dict.fromkeys(map(persons.normalize_email, extra_emails)))
    return IssueRequest(
        public_key=public_key,
        profile=profile,
        email=address,
        common_name=common_name,
        extra_emails=tuple(a for a in extra if a != address),
    )


def _with_term(profile: Profile, validity_days: int | None) -> Profile:
    if validity_days is None:
        return profile
    if not 1 <= validity_days <= profile.validity_days:
        raise InvalidTerm(
            f"The profile {profile.name} issues certificates for 1 to {profile.validity_days} days."
        )
    return dataclasses.replace(profile, validity_days=validity_days)


def _subscriber(
    session: Session,
    actor: Actor,
    account: Account,
    email: str,
    person_id: int | None,
    organization_id: int | None,
) -> tuple[Person | None, Organization]:
    """The person the certificate is for (None: to be created) and its organization."""
    org: Organization | None = None
    if organization_id is not None:
        org = session.get(Organization, organization_id)
        if org is None or org.account_id != account.id:
            raise NotFound("Organization not found.")
        actor.require_visible(account.id, org.id, "Organization")
    if person_id is not None:
        person = session.get(Person, person_id)
        if person is None or person.account_id != account.id:
            raise NotFound("Person not found.")
    else:
        person = persons.find_by_email(session, account, email)
    if person is None:
        return None, org or default_organization(session, account)
    actor.require_visible(account.id, person.organization_id, "Person")
    if org is not None and org.id != person.organization_id:
        raise OrganizationMismatch()
    return person, org or session.get_one(Organization, person.organization_id)


def _check_addresses(person: Person, request: IssueRequest) -> None:
    own = {person.email, *person.secondary_emails.split()}
    if any(a not in own for a in (request.email, *request.extra_emails)):
        raise PersonMismatch()


def _create_subscriber(
    session: Session,
    account: Account,
    org: Organization,
    request: IssueRequest,
    details: persons.PersonFields | None,
) -> Person:
    """A new person for the request's address, its other addresses as secondary ones."""
    for address in request.extra_emails:
        if persons.find_by_email(session, account, address) is not None:
            raise PersonMismatch("An address to certify belongs to another person.")
    details = dataclasses.replace(
        details or persons.PersonFields(), secondary_emails=list(request.extra_emails)
    )
    person, _ = persons.find_or_create(session, account, request.email, org, details)
    return person


def _notice(account: Account, cert: Certificate) -> str:
    # Whoever sent the CSR holds the key: the person should learn that a certificate naming
    # their address exists, even when they did not ask for it themselves.
    return (
        f"A certificate naming your email address was issued by {account.name} at the request "
        f"of an administrator. Its private key stays with whoever sent the request; no copy of "
        f"it is kept in the key vault.\n\n"
        f"Certificate subject: {subject_name(cert.subject).dn}\n"
        f"Issuer: {subject_name(cert.issuer).dn}\n"
        f"Serial number: {cert.serial}\n"
        f"Valid until: {cert.not_after:%Y-%m-%d}\n\n"
        "If you did not expect this certificate, tell your administrators.\n"
    )


# --- collecting a certificate -------------------------------------------------------------------


class BundleEncoding(StrEnum):
    PEM = "pem"  # concatenated PEM certificates
    DER = "der"  # one DER certificate
    PKCS7_PEM = "pkcs7-pem"  # a certs-only PKCS#7, PEM armoured
    PKCS7_DER = "pkcs7-der"  # a certs-only PKCS#7, DER


@dataclass(frozen=True)
class BundleFormat:
    """Which certificates a bundle holds, in which order and encoding."""

    certificate: bool = True  # the end-entity certificate
    intermediates: bool = True  # CA certificates between it and the root
    root: bool = True  # the self-signed root, when known
    root_first: bool = False  # False: the certificate first, then its issuer, up to the root
    encoding: BundleEncoding = BundleEncoding.PEM

    def __post_init__(self) -> None:
        if self.encoding is BundleEncoding.DER and not (
            self.certificate and not self.intermediates and not self.root
        ):
            raise ValueError("DER holds exactly one certificate")


@dataclass(frozen=True)
class Bundle:
    data: bytes
    media_type: str
    extension: str  # of a file name, without the dot


_MEDIA = {
    BundleEncoding.PEM: ("application/pem-certificate-chain", "pem"),  # RFC 8555 9.1
    BundleEncoding.DER: ("application/pkix-cert", "cer"),  # RFC 2585
    BundleEncoding.PKCS7_PEM: ("application/x-pem-file", "p7b"),
    BundleEncoding.PKCS7_DER: ("application/pkcs7-mime", "p7c"),  # RFC 8551 3.2.2 certs-only
}


def bundle(cert: x509.Certificate, chain: Sequence[x509.Certificate], fmt: BundleFormat) -> Bundle:
    """``cert`` and ``chain`` (its issuer up to the root) as ``fmt`` says."""
    roots = [c for c in chain if _self_issued(c)]
    intermediates = [c for c in chain if not _self_issued(c)]
    chosen = (
        ([cert] if fmt.certificate else [])
        + (intermediates if fmt.intermediates else [])
        + (roots if fmt.root else [])
    )
    if not chosen:
        raise ChainUnknown()
    if fmt.root_first:
        chosen.reverse()
    if fmt.encoding is BundleEncoding.PEM:
        data = b"".join(c.public_bytes(Encoding.PEM) for c in chosen)
    elif fmt.encoding is BundleEncoding.DER:
        data = cert.public_bytes(Encoding.DER)
    else:
        encoding = Encoding.PEM if fmt.encoding is BundleEncoding.PKCS7_PEM else Encoding.DER
        data = pkcs7.serialize_certificates(chosen, encoding)
    media_type, extension = _MEDIA[fmt.encoding]
    return Bundle(data, media_type, extension)


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def collect_certificate(
    ports: Ports, actor: Actor, account_slug: str, certificate_id: int, fmt: BundleFormat
) -> Bundle:
    """A stored certificate (any, not only enrolled ones) with its chain, as ``fmt`` says."""
    row = get_certificate(ports, actor, account_slug, certificate_id)
    cert = x509.load_der_x509_certificate(row.der)
    chain = x509.load_pem_x509_certificates(row.chain_pem.encode()) if row.chain_pem else []
    # A chain stored by an import is whatever the file carried: keep only the path upwards.
    return bundle(cert, _path(cert, chain), fmt)


def _path(cert: x509.Certificate, chain: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    path: list[x509.Certificate] = []
    current = cert
    while not _self_issued(current) and len(path) < len(chain):
        parent = next((c for c in chain if c.subject == current.issuer and c not in path), None)
        if parent is None:
            break
        path.append(parent)
        current = parent
    return path
