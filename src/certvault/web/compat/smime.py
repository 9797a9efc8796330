"""SCM client certificates (`/api/smime/v1`, `/api/smime/v2`): the list with its `keyVault`
filter, the Key Vault download `keystore`, revocation, and enrollment with a client CSR
(`enroll`, `collect`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field
from sqlalchemy.orm import Session

from certvault.db.models import Certificate
from certvault.errors import InvalidInput
from certvault.services.directory import certificates
from certvault.services.directory.certificates import CertificateFilter
from certvault.services.directory.persons import PersonFields
from certvault.services.pki import crl, csr_enrollment
from certvault.services.pki.crl import REVOCATION_REASONS
from certvault.services.pki.csr_enrollment import BundleEncoding, BundleFormat
from certvault.services.vault import release
from certvault.web.compat.schemas import (
    CONFLICT,
    MAX_ID,
    SCM_ERRORS,
    TOO_LARGE,
    CertId,
    CertificateDetails,
    CustomField,
    EmailPath,
    KeystoreRequest,
    Position,
    Responses,
    RevokeRequest,
    ScmCertificate,
    ScmModel,
    ScmRequest,
    Size,
    on_versions,
)
from certvault.web.control_characters import MULTI_LINE
from certvault.web.deps import PortsDep, ScmCaller
from certvault.web.limits import download_counter
from certvault.web.patterns import EmailText, SchemaOnly

router = APIRouter(tags=["SCM-compatible: client certificates"], responses=SCM_ERRORS)


def certificate_filter(
    key_vault: Annotated[
        bool | None,
        Query(alias="keyVault", description="true: only certificates whose key is in the vault"),
    ] = None,
    person_id: Annotated[int | None, Query(alias="personId", ge=1, le=MAX_ID)] = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
    state: Annotated[
        str | None,
        Query(
            max_length=32,
            description="issued, expired or revoked (any case)",
            json_schema_extra={"enum": list(certificates.STATUSES)},
        ),
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
    request: Request,
    cert_id: CertId,
    body: KeystoreRequest,
    caller: ScmCaller,
    ports: PortsDep,
) -> Response:
    """Needs the privilege key_vault_download. Every download is audited and told to the
    certificate's owner; downloads are rate-limited per administrator, token and address."""

    def work(session: Session) -> release.ReleaseBatch:
        # The quota and the release in one transaction (DESIGN.md §10).
        caller.adopt(session)
        return release.release_key(
            ports,
            caller.actor,
            caller.account_slug,
            cert_id,
            passphrase=body.passphrase,
            encryption=body.encryption_type,
            reason=body.reason,
            channel="scm",
            admit=download_counter(request, caller),
            session=session,
        )

    batch = ports.db.run_request(work)
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
    crl.revoke_certificate(
        ports, caller.actor, caller.account_slug, cert_id, reason, comment=comment
    )
    return Response(status_code=204)


# --- enrollment with a client CSR, and collecting the certificate ------------------------------

# certType as an integer: the ids certvault gives its profiles (the commercial product numbers
# its own certificate types per customer; scripts that send a profile name need no table).
CERT_TYPES = {1: "smime", 2: "smime-encryption", 3: "smime-signing", 4: "client-auth"}


class ClientEnrollRequest(ScmRequest):
    """`ClientEnrollRequest`: a CSR the client made (it keeps the key; nothing is escrowed)."""

    org_id: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ID,
        description="Where a person certvault creates goes (null: the default organization); "
        "for an existing person it must be theirs",
    )
    csr: Annotated[str, MULTI_LINE] = Field(
        min_length=1, max_length=32 * 1024, description="The PKCS#10 request, PEM or base64 DER"
    )
    cert_type: Annotated[int | str, SchemaOnly(enum=[*CERT_TYPES, *CERT_TYPES.values()])] = Field(
        description="A profile: its name ("
        + ", ".join(CERT_TYPES.values())
        + ") or its id ("
        + ", ".join(f"{i} = {name}" for i, name in CERT_TYPES.items())
        + ")"
    )
    term: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ID,
        description="Validity in days, at most the profile's (null: the profile's)",
    )
    email: EmailText = Field(max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    secondary_emails: list[Annotated[EmailText, Field(max_length=320)]] | None = Field(
        default=None, max_length=20, description="Also certified; they must be the person's"
    )
    first_name: str | None = Field(default=None, max_length=200)
    middle_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    common_name: str | None = Field(
        default=None, min_length=1, max_length=64, description="The subject CN"
    )
    eppn: str | None = Field(default=None, max_length=320)
    upn: str | None = Field(default=None, max_length=320)
    custom_fields: list[CustomField] | None = Field(
        default=None, max_length=50, description="Accepted and ignored (certvault has none)"
    )
    comments: Annotated[str | None, MULTI_LINE] = Field(
        default=None, max_length=500, description="Kept in the audit log"
    )


class ClientEnrollResponse(ScmModel):
    order_number: int = Field(description="The same as backendCertId (obsolete in SCM)")
    backend_cert_id: str = Field(description="The certificate's id, for collect")


def profile_of(cert_type: int | str) -> str:
    """The profile a certType names: an id of CERT_TYPES or a profile name."""
    if isinstance(cert_type, str) and cert_type.strip().isdigit():
        cert_type = int(cert_type.strip())
    if isinstance(cert_type, int):
        if cert_type not in CERT_TYPES:
            known = ", ".join(f"{i} ({name})" for i, name in CERT_TYPES.items())
            raise InvalidInput(f"Unknown certType. Known certTypes: {known}.")
        return CERT_TYPES[cert_type]
    return cert_type.strip()


@on_versions(
    router,
    "POST",
    "/smime/{v}/enroll",
    response_model=ClientEnrollResponse,
    responses=CONFLICT | TOO_LARGE,
    summary="Enroll a client certificate with a CSR",
)
def enroll(body: ClientEnrollRequest, caller: ScmCaller, ports: PortsDep) -> ClientEnrollResponse:
    """Issued at once (collect it right away). The person with `email` is created, with the
    name fields, when there is none. Needs the privilege certificates_manage."""
    cert = csr_enrollment.enroll_csr(
        ports,
        caller.actor,
        caller.account_slug,
        csr_pem_or_der=csr_enrollment.csr_from_text(body.csr),
        profile=profile_of(body.cert_type),
        email=body.email,
        organization_id=body.org_id,
        common_name=body.common_name,
        extra_emails=body.secondary_emails or (),
        validity_days=body.term,
        new_person=PersonFields(
            first_name=body.first_name,
            middle_name=body.middle_name,
            last_name=body.last_name,
            phone=body.phone,
            eppn=body.eppn,
            upn=body.upn,
        ),
        comment=body.comments,
        channel="scm",
    )
    return ClientEnrollResponse(order_number=cert.id, backend_cert_id=str(cert.id))


_PKCS7_PEM = BundleFormat(encoding=BundleEncoding.PKCS7_PEM)
# The commercial product's collect formats. Its "with chain" PEM puts the root first and the
# certificate last; "R" reverses an order.
COLLECT_FORMATS = {
    "x509": BundleFormat(root_first=True),  # root, intermediates, certificate
    "pem": BundleFormat(root_first=True),
    "x509R": BundleFormat(),  # certificate, intermediates, root
    "x509CO": BundleFormat(intermediates=False, root=False),  # the certificate only
    "pemco": BundleFormat(intermediates=False, root=False),
    "pemia": BundleFormat(root=False),  # the certificate, then its issuing CA(s)
    "x509IO": BundleFormat(certificate=False, root_first=True),  # root, intermediates
    "x509IOR": BundleFormat(certificate=False),  # intermediates, root
    "base64": _PKCS7_PEM,  # PKCS#7 (certificate and chain), PEM
    "bin": BundleFormat(encoding=BundleEncoding.PKCS7_DER),  # the same, DER
}
CollectFormat = Literal[
    "x509", "pem", "x509R", "x509CO", "pemco", "pemia", "x509IO", "x509IOR", "base64", "bin"
]

_COLLECTED: Responses = {
    200: {
        "description": "PEM formats as application/pem-certificate-chain, `base64` as "
        "application/x-pem-file, `bin` as application/pkcs7-mime",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in (
                "application/pem-certificate-chain",
                "application/x-pem-file",
                "application/pkcs7-mime",
            )
        },
    }
}


@on_versions(
    router,
    "GET",
    "/smime/{v}/collect/{certId}",
    response_class=Response,
    responses=_COLLECTED,
    summary="Collect a client certificate",
)
def collect(
    cert_id: CertId,
    caller: ScmCaller,
    ports: PortsDep,
    format: Annotated[
        CollectFormat,
        Query(
            description="`x509`/`pem`: root, intermediates, certificate (PEM); `x509R`: the "
            "certificate first; `x509CO`/`pemco`: the certificate only; `pemia`: the certificate "
            "and its issuing CA(s), no root; `x509IO`: root, intermediates; `x509IOR`: "
            "intermediates, root; `base64`: PKCS#7 PEM; `bin`: PKCS#7 DER"
        ),
    ] = "base64",
) -> Response:
    """The path's certId is the enrollment's backendCertId; any stored certificate can be
    collected. 404 when a format without the certificate is asked for and no chain is known."""
    found = csr_enrollment.collect_certificate(
        ports, caller.actor, caller.account_slug, cert_id, COLLECT_FORMATS[format]
    )
    return Response(found.data, media_type=found.media_type)
