"""SCM client certificates (`/api/smime/v1`, `/api/smime/v2`): the list with its `keyVault`
filter, the Key Vault download `keystore`, and revocation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from certvault.db.models import Certificate
from certvault.services import certificates, release
from certvault.services.certificates import REVOCATION_REASONS, CertificateFilter
from certvault.web.compat.schemas import (
    CONFLICT,
    MAX_ID,
    SCM_ERRORS,
    CertId,
    CertificateDetails,
    EmailPath,
    KeystoreRequest,
    Position,
    Responses,
    RevokeRequest,
    ScmCertificate,
    Size,
    Text,
    on_versions,
)
from certvault.web.deps import PortsDep, ScmCaller
from certvault.web.limits import enforce_download_limits

router = APIRouter(tags=["SCM-compatible: client certificates"], responses=SCM_ERRORS)


def certificate_filter(
    key_vault: Annotated[
        bool | None,
        Query(alias="keyVault", description="true: only certificates whose key is in the vault"),
    ] = None,
    person_id: Annotated[int | None, Query(alias="personId", ge=1, le=MAX_ID)] = None,
    email: Annotated[Text | None, Query(max_length=320)] = None,
    state: Annotated[
        Text | None, Query(max_length=32, description="issued, expired or revoked")
    ] = None,
) -> CertificateFilter:
    return CertificateFilter(
        key_vault=key_vault,
        person_id=person_id,
        email=email,
        status=state.lower() if state else None,
    )


Filter = Annotated[CertificateFilter, Depends(certificate_filter)]


def _scm_certificate(c: Certificate, state: str) -> ScmCertificate:
    serial = c.serial.upper()
    return ScmCertificate(
        id=c.id,
        state=state,
        certificate_details=CertificateDetails(
            issuer=c.issuer,
            subject=c.subject,
            subject_alt_names=", ".join(f"rfc822Name={e}" for e in c.emails.split()),
            md5_hash=c.md5_hex,
            sha1_hash=c.sha1_hex,
        ),
        order_number=c.id,
        serial_number="0" * (len(serial) % 2) + serial,
        backend_cert_id=str(c.id),
        expires=c.not_after.date().isoformat(),
        comments="",
    )


def _listing(
    ports: PortsDep, caller: ScmCaller, f: CertificateFilter, size: int, position: int
) -> list[ScmCertificate]:
    page = certificates.list_certificates(
        ports, caller.actor, caller.account_slug, f, limit=size, offset=position
    )
    now = ports.clock()
    return [_scm_certificate(c, certificates.status_of(c, now)) for c in page.items]


@on_versions(
    router,
    "GET",
    "/smime/{v}",
    response_model=list[ScmCertificate],
    summary="List client certificates",
)
def list_certificates(
    caller: ScmCaller, ports: PortsDep, f: Filter, size: Size = 200, position: Position = 0
) -> list[ScmCertificate]:
    return _listing(ports, caller, f, size, position)


_COUNT: Responses = {
    200: {
        "description": "The number of matching certificates is in X-Total-Count",
        "headers": {"X-Total-Count": {"schema": {"type": "integer"}}},
    }
}


@on_versions(
    router,
    "HEAD",
    "/smime/{v}",
    response_class=Response,
    responses=_COUNT,
    summary="Count client certificates",
)
def count_certificates(caller: ScmCaller, ports: PortsDep, f: Filter) -> Response:
    total = certificates.count_certificates(ports, caller.actor, caller.account_slug, f)
    return Response(status_code=200, headers={"X-Total-Count": str(total)})


@on_versions(
    router,
    "GET",
    "/smime/{v}/byPersonEmail/{email}",
    response_model=list[ScmCertificate],
    summary="List a person's client certificates",
)
def certificates_by_email(
    email: EmailPath,
    caller: ScmCaller,
    ports: PortsDep,
    size: Size = 200,
    position: Position = 0,
) -> list[ScmCertificate]:
    return _listing(ports, caller, CertificateFilter(email=email), size, position)


_P12: Responses = {
    200: {
        "description": "The PKCS#12 file `key_vault.p12`",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    429: SCM_ERRORS[429],
}


@on_versions(
    router,
    "POST",
    "/smime/{v}/keystore/{certId}",
    response_class=Response,
    responses=_P12,
    summary="Download a certificate's private key from the Key Vault as PKCS#12",
)
def download_key(
    request: Request, cert_id: CertId, body: KeystoreRequest, caller: ScmCaller, ports: PortsDep
) -> Response:
    """Needs the privilege key_vault_download. Every download is audited and told to the
    certificate's owner; downloads are rate-limited per administrator, token and address."""
    enforce_download_limits(request, caller, target_type="certificate", target_id=cert_id)
    batch = release.release_key(
        ports,
        caller.actor,
        caller.account_slug,
        cert_id,
        passphrase=body.passphrase,
        encryption=body.encryption_type,
        reason=body.reason,
        channel="scm",
    )
    [released] = batch.releases
    return Response(
        released.data,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": 'attachment; filename="key_vault.p12"',
            "Cache-Control": "no-store",
        },
    )


def revocation_reason(text: str | None) -> tuple[str, str | None]:
    """The RFC 5280 reason an SCM free-text reason names, and the text to keep beside it."""
    if not text or not text.strip():
        return "unspecified", None
    wanted = text.strip().replace(" ", "").replace("_", "").lower()
    for name in REVOCATION_REASONS:
        if name.lower() == wanted:
            return name, None
    return "unspecified", text.strip()


_REVOKED: Responses = {204: {"description": "Revoked"}}


@on_versions(
    router,
    "POST",
    "/smime/{v}/revoke/{certId}",
    status_code=204,
    response_class=Response,
    responses=_REVOKED | CONFLICT,
    summary="Revoke a client certificate",
)
@on_versions(
    router,
    "POST",
    "/smime/{v}/revoke/order/{certId}",
    status_code=204,
    response_class=Response,
    responses=_REVOKED | CONFLICT,
    summary="Revoke a client certificate by order number (the same as its id)",
)
def revoke_certificate(
    cert_id: CertId, caller: ScmCaller, ports: PortsDep, body: RevokeRequest | None = None
) -> Response:
    """The escrowed key stays in the vault: old mail still needs it."""
    reason, comment = revocation_reason(body.reason if body else None)
    certificates.revoke_certificate(
        ports, caller.actor, caller.account_slug, cert_id, reason, comment=comment
    )
    return Response(status_code=204)
