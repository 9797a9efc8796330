"""Client certificates: list (with the Key Vault filter), count, get."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from certvault.crypto.names import subject_name
from certvault.db.models import Certificate
from certvault.services.directory import certificates
from certvault.services.directory.certificates import CertificateFilter
from certvault.web.api.schemas import (
    ERRORS,
    CertificateOut,
    CertificatePage,
    Count,
    Cursor,
    Id,
    IdFilter,
    Limit,
)
from certvault.web.deps import PortsDep, TokenCaller

router = APIRouter(tags=["certificates"], responses=ERRORS)  # type: ignore[arg-type]


def certificate_out(c: Certificate, status: str) -> CertificateOut:
    return CertificateOut(
        id=c.id,
        person_id=c.person_id,
        organization_id=c.organization_id,
        subject=subject_name(c.subject).dn,
        display_name=subject_name(c.subject).label,
        issuer=subject_name(c.issuer).dn,
        serial=c.serial,
        sha256=c.sha256.hex(),
        sha1=c.sha1_hex,
        md5=c.md5_hex,
        emails=c.emails.split(),
        not_before=c.not_before,
        not_after=c.not_after,
        status=status,  # type: ignore[arg-type]
        key_in_vault=c.key_in_vault,
        source=c.source,
        trusted_issuer=c.trusted_issuer,
    )


def certificate_filter(
    key_vault: Annotated[
        bool | None, Query(description="true: only certificates whose key is in the vault")
    ] = None,
    person_id: IdFilter = None,
    email: Annotated[str | None, Query(max_length=320, description="The owner's email")] = None,
    status: Literal["issued", "expired", "revoked"] | None = None,
    organization_id: IdFilter = None,
) -> CertificateFilter:
    return CertificateFilter(key_vault, person_id, email, status, organization_id)


Filter = Annotated[CertificateFilter, Depends(certificate_filter)]


@router.get("/certificates", response_model=CertificatePage)
def list_certificates(
    f: Filter, caller: TokenCaller, ports: PortsDep, limit: Limit = 50, cursor: Cursor = None
) -> CertificatePage:
    page = certificates.list_certificates(
        ports, caller.actor, caller.account_slug, f, limit=limit, cursor=cursor
    )
    now = ports.clock()
    return CertificatePage(
        items=[certificate_out(c, certificates.status_of(c, now)) for c in page.items],
        next_cursor=page.next_cursor,
    )


# Before /certificates/{certificate_id}, which would otherwise take "count" for an id.
@router.get("/certificates/count", response_model=Count)
def count_certificates(f: Filter, caller: TokenCaller, ports: PortsDep) -> Count:
    return Count(count=certificates.count_certificates(ports, caller.actor, caller.account_slug, f))


@router.get("/certificates/{certificate_id}", response_model=CertificateOut)
def get_certificate(certificate_id: Id, caller: TokenCaller, ports: PortsDep) -> CertificateOut:
    c = certificates.get_certificate(ports, caller.actor, caller.account_slug, certificate_id)
    return certificate_out(c, certificates.status_of(c, ports.clock()))
