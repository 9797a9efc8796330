"""Client certificates: recording, listing with the Key Vault filter, details, counting,
revocation."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import ColumnElement, Select, case, func, or_, select
from sqlalchemy.orm import Session

from certvault.crypto import keys as keylib
from certvault.db.models import Account, Certificate, Person
from certvault.errors import InvalidInput, NotFound
from certvault.services.kernel.actors import Actor, Scope
from certvault.services.kernel.paging import (
    Ordering,
    Page,
    SortedPage,
    check_limit,
    count_rows,
    decode_cursor,
    ordering_named,
    page_of,
    sorted_page,
)
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.kernel.text import column_text

STATUSES = ("issued", "expired", "revoked")
# RFC 5280 CRLReason names that make sense for a client certificate.


def status_of(cert: Certificate, now: datetime) -> str:
    if cert.status == "revoked":
        return "revoked"
    return "expired" if cert.not_after < now else "issued"


def add_certificate(
    session: Session,
    account: Account,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    *,
    person: Person | None,
    organization_id: int,
    source: str,
    profile: str | None = None,
    ca_id: int | None = None,
    escrowed_key_id: int | None = None,
    trusted_issuer: bool = False,
    friendly_name: str | None = None,
) -> Certificate:
    """Record a certificate certvault does not hold yet, inside the caller's transaction.

    The caller has checked who may add it and that no other certificate has its issuer and
    serial number; ``chain`` runs from the issuer up to the root. Names from the certificate and
    the file go in through :func:`column_text`; addresses that are not text are refused.
    """
    row = Certificate(
        **certificate_values(
            account,
            cert,
            chain,
            person_id=person.id if person is not None else None,
            organization_id=organization_id,
            source=source,
            profile=profile,
            ca_id=ca_id,
            escrowed_key_id=escrowed_key_id,
            trusted_issuer=trusted_issuer,
            friendly_name=friendly_name,
        )
    )
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class CertificateIdentity:
    """The columns that identify a certificate, worked out once from its DER: an archival
    checks them before it writes the row."""

    der: bytes
    sha256: bytes
    sha1_hex: str
    md5_hex: str
    serial: str
    issuer_sha256: bytes
    emails: list[str]


def identify(cert: x509.Certificate) -> CertificateIdentity:
    """Raises :class:`InvalidInput` for email addresses that cannot be stored."""
    der = cert.public_bytes(Encoding.DER)
    return CertificateIdentity(
        der=der,
        sha256=hashlib.sha256(der).digest(),
        sha1_hex=hashlib.sha1(der).hexdigest(),  # noqa: S324 - an identifier for the SCM API
        md5_hex=hashlib.md5(der).hexdigest(),  # noqa: S324
        serial=format(cert.serial_number, "x"),
        issuer_sha256=hashlib.sha256(cert.issuer.public_bytes()).digest(),
        emails=keylib.certificate_emails(cert),
    )


def certificate_values(
    account: Account,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    *,
    person_id: int | None,
    organization_id: int,
    source: str,
    profile: str | None = None,
    ca_id: int | None = None,
    escrowed_key_id: int | None = None,
    trusted_issuer: bool = False,
    friendly_name: str | None = None,
    identity: CertificateIdentity | None = None,
    spki_sha256: bytes | None = None,
) -> dict[str, Any]:
    """The column values of a new certificate row (see :func:`add_certificate`); ``identity``
    and ``spki_sha256`` (the certificate's public-key fingerprint), when the caller has them."""
    ids = identity if identity is not None else identify(cert)
    if spki_sha256 is None:
        spki_sha256 = keylib.spki_sha256(cert.public_key())
    return dict(
        account_id=account.id,
        organization_id=organization_id,
        person_id=person_id,
        escrowed_key_id=escrowed_key_id,
        der=ids.der,
        chain_pem="".join(c.public_bytes(Encoding.PEM).decode() for c in chain),
        sha256=ids.sha256,
        sha1_hex=ids.sha1_hex,
        md5_hex=ids.md5_hex,
        serial=ids.serial,
        issuer=column_text(cert.issuer.rfc4514_string()),
        issuer_sha256=ids.issuer_sha256,
        subject=column_text(cert.subject.rfc4514_string()),
        emails=" ".join(ids.emails),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        spki_sha256=spki_sha256,
        source=source,
        profile=profile,
        ca_id=ca_id,
        trusted_issuer=trusted_issuer,
        friendly_name=column_text(friendly_name or "", 200) or None,
    )


@dataclass(frozen=True)
class CertificateFilter:
    key_vault: bool | None = None
    person_id: int | None = None
    email: str | None = None
    status: str | None = None
    organization_id: int | None = None
    search: str | None = None  # part of an email address or the subject, or a serial's start


MAX_SEARCH = 200

# The sorts the console offers; "-" sorts the other way round.
SORTS: dict[str, Ordering] = {}
for _name, _column, _kind in (
    ("added", Certificate.id, int),
    ("expires", Certificate.not_after, datetime),
    ("subject", Certificate.subject, str),
):
    SORTS[_name] = Ordering(_name, _column, Certificate.id, _kind)
    SORTS["-" + _name] = Ordering("-" + _name, _column, Certificate.id, _kind, descending=True)


def _like(text: str) -> str:
    """``text`` as a LIKE operand that matches itself: its % and _ are not wildcards."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _search(search: str) -> ColumnElement[bool]:
    text = search.strip().lower()
    if len(text) > MAX_SEARCH:
        raise InvalidInput(f"A search may have at most {MAX_SEARCH} characters.")
    anywhere = f"%{_like(text)}%"
    conditions = [
        func.lower(Certificate.emails).like(anywhere, escape="\\"),
        func.lower(Certificate.subject).like(anywhere, escape="\\"),
    ]
    # Serials are stored as lower-case hexadecimal; people paste them with colons or spaces.
    serial = text.replace(":", "").replace(" ", "")
    if serial and all(c in "0123456789abcdef" for c in serial):
        conditions.append(
            Certificate.serial.like(_like(serial.lstrip("0") or "0") + "%", escape="\\")
        )
    return or_(*conditions)


def _query(
    actor: Actor, account: Account, f: CertificateFilter, now: datetime
) -> Select[Certificate]:
    query = select(Certificate).where(Certificate.account_id == account.id)
    orgs = actor.visible_organizations()
    if orgs is not None:
        query = query.where(Certificate.organization_id.in_(orgs))
    if f.key_vault is True:
        query = query.where(Certificate.key_in_vault)
    elif f.key_vault is False:
        query = query.where(~Certificate.key_in_vault)
    if f.person_id is not None:
        query = query.where(Certificate.person_id == f.person_id)
    if f.email:
        owner = select(Person.id).where(
            Person.account_id == account.id, Person.email == f.email.strip().lower()
        )
        query = query.where(Certificate.person_id.in_(owner.scalar_subquery()))
    if f.organization_id is not None:
        query = query.where(Certificate.organization_id == f.organization_id)
    if f.search and f.search.strip():
        query = query.where(_search(f.search))
    if f.status is not None:
        if f.status not in STATUSES:
            raise InvalidInput("status must be one of: " + ", ".join(STATUSES) + ".")
        if f.status == "revoked":
            query = query.where(Certificate.status == "revoked")
        elif f.status == "expired":
            query = query.where(Certificate.status != "revoked", Certificate.not_after < now)
        else:
            query = query.where(Certificate.status != "revoked", Certificate.not_after >= now)
    return query


def list_certificates(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    f: CertificateFilter,
    *,
    limit: int = 50,
    cursor: str | None = None,
    offset: int | None = None,
) -> Page[Certificate]:
    actor.require_scope(Scope.READ)
    limit = check_limit(limit)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        query = _query(actor, account, f, ports.clock())
        if offset is not None:  # the SCM API pages by position
            query = query.order_by(Certificate.id).offset(max(offset, 0))
        else:
            query = query.where(Certificate.id > decode_cursor(cursor)).order_by(Certificate.id)
        return page_of(list(session.scalars(query.limit(limit + 1))), limit)


def sorted_certificates(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    f: CertificateFilter,
    sort: str,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> SortedPage[Certificate]:
    """A page of certificates in one of SORTS, with Previous and Next (the console)."""
    actor.require_scope(Scope.READ)
    ordering = ordering_named(SORTS, sort)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        return sorted_page(
            session, _query(actor, account, f, ports.clock()), ordering, cursor, limit
        )


def count_certificates(ports: Ports, actor: Actor, account_slug: str, f: CertificateFilter) -> int:
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        query = _query(actor, account, f, ports.clock()).with_only_columns(Certificate.id)
        return count_rows(session, query)


@dataclass(frozen=True)
class Holdings:
    """What a person holds, as far as the administrator sees: certificates and escrowed keys."""

    certificates: int = 0
    keys: int = 0


def holdings_of(
    ports: Ports, actor: Actor, account_slug: str, person_ids: Sequence[int]
) -> dict[int, Holdings]:
    """Certificates and keys in the vault per person (for a page of persons)."""
    actor.require_scope(Scope.READ)
    if not person_ids:
        return {}
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        query = (
            select(
                Certificate.person_id,
                func.count(Certificate.id),
                func.count(
                    func.distinct(case((Certificate.key_in_vault, Certificate.escrowed_key_id)))
                ),
            )
            .where(Certificate.account_id == account.id, Certificate.person_id.in_(person_ids))
            .group_by(Certificate.person_id)
        )
        orgs = actor.visible_organizations()
        if orgs is not None:
            query = query.where(Certificate.organization_id.in_(orgs))
        return {
            person_id: Holdings(certs, keys)
            for person_id, certs, keys in session.execute(query)
            if person_id is not None
        }


def load_visible(
    session: Session, actor: Actor, account: Account, certificate_id: int
) -> Certificate:
    """The account's certificate if the actor may see it; a foreign id is a missing one."""
    cert = session.get(Certificate, certificate_id)
    if cert is None or cert.account_id != account.id:
        raise NotFound("Certificate not found.")
    actor.require_visible(account.id, cert.organization_id, "Certificate")
    return cert


def get_certificate(
    ports: Ports, actor: Actor, account_slug: str, certificate_id: int
) -> Certificate:
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        return load_visible(session, actor, account, certificate_id)
