"""Client Certificates page: list with filters, a certificate's details."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from certvault.db.models import Certificate
from certvault.errors import CertvaultError, InvalidInput, NotFound
from certvault.services.directory import accounts, certificates, persons
from certvault.services.directory.certificates import CertificateFilter
from certvault.services.kernel.paging import MAX_ID, SortedPage
from certvault.services.vault import holds, retention
from certvault.services.vault.holds import HoldView
from certvault.services.vault.retention import DestructionView
from certvault.web.admin.console import Console, open_console

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
MAX_QUERY = 200  # longer query values than any filter or cursor needs are refused
STATUS_CHOICES = ("any", *certificates.STATUSES)
KEY_CHOICES = {"any": None, "yes": True, "no": False}


class BadQuery(InvalidInput):
    """A filter or paging value of a console page that is not one it offers."""

    code = "bad_query"
    status = 400


def _id(text: str) -> int | None:
    """``text`` as a database id, or None when it cannot be one."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_ID:
        return None
    return int(text)


def object_id(text: str, what: str) -> int:
    """The id in a console path; anything else answers like a missing object."""
    found = _id(text)
    if found is None:
        raise NotFound(f"{what} not found.")
    return found


def query_value(request: Request, name: str, default: str = "") -> str:
    value = request.query_params.get(name, default)
    if len(value) > MAX_QUERY:
        raise BadQuery(f"The value of {name} is too long.")
    return value


def bad_query_page(console: Console, exc: CertvaultError, section: str) -> Response:
    """A filter or cursor the page did not offer is the request's fault: 400, not 422."""
    if isinstance(exc, InvalidInput):
        return console.render("error.html", 400, section=section, message=exc.message)
    return console.error(exc, section=section)


def organization_names(console: Console) -> dict[int, str]:
    """The organizations the administrator sees, by id."""
    orgs = accounts.list_organizations(console.ports, console.actor, console.account_slug)
    return {o.id: o.name for o in orgs}


@dataclass(frozen=True)
class CertificateRow:
    """What the lists show of a certificate."""

    id: int
    subject: str
    emails: str
    serial: str
    status: str
    not_after: datetime
    organization_id: int
    organization: str
    person_id: int | None
    key_in_vault: bool
    # Escrowed once, destroyed since (key rows are never deleted).
    key_destroyed: bool = False

    @classmethod
    def of(cls, cert: Certificate, now: datetime, orgs: dict[int, str]) -> CertificateRow:
        return cls(
            id=cert.id,
            subject=cert.subject,
            emails=cert.emails,
            serial=cert.serial,
            status=certificates.status_of(cert, now),
            not_after=cert.not_after,
            organization_id=cert.organization_id,
            organization=orgs.get(cert.organization_id, ""),
            person_id=cert.person_id,
            key_in_vault=cert.key_in_vault,
            key_destroyed=cert.escrowed_key_id is not None and not cert.key_in_vault,
        )


@dataclass(frozen=True)
class RetentionFacts:
    """What retention did or holds back for some certificates: by certificate id, the record
    of their destroyed key; and the active holds covering them or their person."""

    destroyed: dict[int, DestructionView]
    holds: list[HoldView]


def retention_facts(
    console: Console, certs: list[Certificate], person_id: int | None
) -> RetentionFacts:
    gone = {c.id: c.escrowed_key_id for c in certs if c.escrowed_key_id and not c.key_in_vault}
    records = retention.destructions_of(
        console.ports, console.actor, console.account_slug, list(set(gone.values()))
    )
    covering = holds.holds_covering(
        console.ports,
        console.actor,
        console.account_slug,
        person_id=person_id,
        certificate_ids=[c.id for c in certs],
    )
    return RetentionFacts(
        {cid: records[kid] for cid, kid in gone.items() if kid in records}, covering
    )


def fingerprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


@dataclass(frozen=True)
class _Filters:
    organization: str
    status: str
    key: str
    person: str
    search: str = ""
    sort: str = "added"

    def as_filter(self, orgs: dict[int, str]) -> CertificateFilter:
        if self.status not in STATUS_CHOICES:
            raise BadQuery("Choose a status from the list.")
        if self.key not in KEY_CHOICES:
            raise BadQuery("Choose whether the key is in the vault from the list.")
        org_id = _id(self.organization) if self.organization else None
        if self.organization and org_id not in orgs:
            raise BadQuery("Choose an organization from the list.")
        person_id = _id(self.person) if self.person else None
        if self.person and person_id is None:
            raise BadQuery("The person filter must be a person's id.")
        if self.sort not in certificates.SORTS:
            raise BadQuery("Sort by a column the list offers.")
        return CertificateFilter(
            key_vault=KEY_CHOICES[self.key],
            person_id=person_id,
            status=None if self.status == "any" else self.status,
            organization_id=org_id,
            search=self.search or None,
        )

    def query(self, cursor: str | None = None, sort: str | None = None) -> dict[str, str]:
        """The query string of this filter (and a page, or another sort), without defaults."""
        values = {
            "q": self.search,
            "organization": self.organization,
            "status": self.status,
            "key": self.key,
            "person": self.person,
            "sort": "" if (sort or self.sort) == "added" else (sort or self.sort),
            "cursor": cursor or "",
        }
        return {k: v for k, v in values.items() if v and v != "any"}

    def sort_query(self, column: str) -> dict[str, str]:
        """The first page sorted by ``column``; the other way round when already sorted so."""
        return self.query(sort="-" + column if self.sort == column else column)


@router.get("/admin/certificates")
def certificates_page(request: Request) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    try:
        filters = _Filters(
            organization=query_value(request, "organization"),
            status=query_value(request, "status", "any"),
            key=query_value(request, "key", "any"),
            person=query_value(request, "person"),
            search=query_value(request, "q").strip(),
            sort=query_value(request, "sort", "added"),
        )
        cursor = query_value(request, "cursor") or None
        orgs = organization_names(console)
        wanted = filters.as_filter(orgs)
        found: SortedPage[Certificate] = certificates.sorted_certificates(
            console.ports,
            console.actor,
            console.account_slug,
            wanted,
            filters.sort,
            limit=PAGE_SIZE,
            cursor=cursor,
        )
        total = certificates.count_certificates(
            console.ports, console.actor, console.account_slug, wanted
        )
    except CertvaultError as exc:
        return bad_query_page(console, exc, "certificates")
    now = console.ports.clock()
    return console.render(
        "certificates.html",
        section="certificates",
        rows=[CertificateRow.of(c, now, orgs) for c in found.items],
        total=total,
        filters=filters,
        organizations=orgs,
        statuses=STATUS_CHOICES,
        key_choices=list(KEY_CHOICES),
        next_query=filters.query(found.next_cursor) if found.next_cursor else None,
        previous_query=filters.query(found.previous_cursor) if found.previous_cursor else None,
        first_query=filters.query() if cursor else None,
    )


@router.get("/admin/certificates/{certificate_id}")
def certificate_page(request: Request, certificate_id: str) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    try:
        cert_id = object_id(certificate_id, "Certificate")
        cert = certificates.get_certificate(
            console.ports, console.actor, console.account_slug, cert_id
        )
        orgs = organization_names(console)
        owner = None
        if cert.person_id is not None:
            try:
                owner = persons.get_person(
                    console.ports, console.actor, console.account_slug, cert.person_id
                )
            except NotFound:  # the owner sits in an organization this administrator cannot see
                owner = None
    except CertvaultError as exc:
        return console.error(exc, section="certificates")
    try:
        keep = retention_facts(console, [cert], cert.person_id)
    except CertvaultError as exc:
        return console.error(exc, section="certificates")
    return console.render(
        "certificate.html",
        section="certificates",
        destroyed_key=keep.destroyed.get(cert.id),
        holds=keep.holds,
        cert=cert,
        row=CertificateRow.of(cert, console.ports.clock(), orgs),
        owner=owner,
        fingerprint=fingerprint(cert.sha256),
    )
