"""Enrollment with a client CSR, and collecting a certificate with its chain."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import Field
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from certvault.crypto.profiles import PROFILES
from certvault.services.directory import certificates, persons
from certvault.services.kernel.paging import MAX_ID
from certvault.services.pki import csr_enrollment
from certvault.services.pki.csr_enrollment import BundleEncoding, BundleFormat
from certvault.web.api.certificates import certificate_out
from certvault.web.api.schemas import (
    CONFLICT,
    ERRORS,
    TOO_LARGE,
    CertificateOut,
    Id,
    StrictBody,
    optional,
)
from certvault.web.control_characters import MULTI_LINE
from certvault.web.deps import PortsDep, TokenCaller
from certvault.web.errors import error_response
from certvault.web.patterns import EmailText, SchemaOnly

MAX_CSR_TEXT = 32 * 1024  # a CSR of the largest key certvault takes is 2 KB of PEM

router = APIRouter(tags=["certificates"], responses=ERRORS)  # type: ignore[arg-type]


class PathOfItsOwn(APIRoute):
    """A literal path beside `/certificates/{certificate_id}`: every method on it is answered
    here (405 for those it lacks) instead of GET taking "enroll" for a certificate id."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        return (Match.FULL if match is Match.PARTIAL else match), child

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = self.methods or set()
        if scope["method"] in methods:
            await super().handle(scope, receive, send)
            return
        allowed = {"Allow": ", ".join(sorted(methods))}
        response = error_response(
            Request(scope), 405, "method_not_allowed", "Method not allowed.", allowed
        )
        await response(scope, receive, send)


_own_path = APIRouter(route_class=PathOfItsOwn)


class EnrollRequest(StrictBody):
    csr: Annotated[str, MULTI_LINE] = Field(
        min_length=1,
        max_length=MAX_CSR_TEXT,
        description="The PKCS#10 request: PEM, or its DER in base64. Only its public key is "
        "used; the profile decides the extensions and `email` the names",
    )
    profile: Annotated[str, SchemaOnly(enum=sorted(PROFILES))] = Field(
        max_length=32, description="One of: " + ", ".join(sorted(PROFILES)), examples=["smime"]
    )
    email: EmailText = Field(max_length=320, description="The address to certify")
    person_id: int = optional(
        ge=1, le=MAX_ID, description="The owner; `email` must be one of their addresses"
    )
    organization_id: int = optional(
        ge=1,
        le=MAX_ID,
        description="Where a person certvault creates for `email` goes (default: the default "
        "organization); for an existing person it must be theirs",
    )
    common_name: str = optional(
        min_length=1,
        max_length=64,
        description="The subject CN (default: `first_name last_name` when given, else the address)",
    )
    first_name: str = optional(
        max_length=persons.MAX_GIVEN_NAME,
        description="Fills the person's first name when it is empty; with `last_name`, the CN",
    )
    last_name: str = optional(
        max_length=persons.MAX_GIVEN_NAME,
        description="Fills the person's last name when it is empty; with `first_name`, the CN",
    )


ENROLL_DESCRIPTION = """Issue a certificate over the public key of a CSR the client made; the
client keeps the private key and **nothing is escrowed**. The owner is `person_id`, or the person
with `email` (created when there is none). The person is told by mail that a certificate naming
their address was issued. Needs the privilege certificates_manage and the token scope `manage`;
audited as `certificate.enroll`, refusals too.

A CSR that does not parse or whose signature does not verify answers 422 `csr_invalid`. A key
no certificate may carry under the S/MIME Baseline Requirements (6.1.5, 6.1.6) answers 422 with
the rule it breaks: `rsa_modulus_not_allowed` (2048 to 8192 bits, a multiple of 8, no small
factors), `rsa_exponent_not_allowed` (odd, 2^16+1 to 2^256-1), `ec_curve_not_allowed` (P-256,
P-384, P-521) or `key_algorithm_not_allowed`. A first or last name with control or invisible
formatting characters, or the two longer together than a CN holds, answers 422 `name_invalid`.
A key type certvault does not certify answers 422
`csr_unsupported_key`, one the profile does not allow 422 `key_type_not_allowed`; an address of
another person 422 `person_mismatch`. An account without an issuing CA answers 409
`no_issuing_ca`."""


@_own_path.post(
    "/certificates/enroll",
    response_model=CertificateOut,
    status_code=201,
    summary="Enroll with a CSR",
    description=ENROLL_DESCRIPTION,
    responses={
        **CONFLICT,
        **TOO_LARGE,
        201: {"headers": {"Location": {"description": "The new certificate's URL"}}},
    },
)
def enroll(
    body: EnrollRequest, response: Response, caller: TokenCaller, ports: PortsDep
) -> CertificateOut:
    cert = csr_enrollment.enroll_csr(
        ports,
        caller.actor,
        caller.account_slug,
        csr_pem_or_der=csr_enrollment.csr_from_text(body.csr),
        profile=body.profile,
        email=body.email,
        person_id=body.person_id,
        organization_id=body.organization_id,
        common_name=body.common_name,
        first_name=body.first_name,
        last_name=body.last_name,
        channel="api",
    )
    response.headers["Location"] = f"/api/v1/certificates/{cert.id}"
    return certificate_out(cert, certificates.status_of(cert, ports.clock()))


router.include_router(_own_path)

COLLECT_FORMATS = {
    "pem": BundleFormat(),
    "der": BundleFormat(intermediates=False, root=False, encoding=BundleEncoding.DER),
    "pkcs7": BundleFormat(encoding=BundleEncoding.PKCS7_DER),
}


_COLLECT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`pem`: the certificate, then its issuer, up to the root "
        "(application/pem-certificate-chain); `der`: the certificate alone "
        "(application/pkix-cert); `pkcs7`: a certs-only PKCS#7 of the same, DER "
        "(application/pkcs7-mime)",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in (
                "application/pem-certificate-chain",
                "application/pkix-cert",
                "application/pkcs7-mime",
            )
        },
        "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/certificates/{certificate_id}/certificate",
    response_class=Response,
    summary="Download a certificate with its chain",
    responses=_COLLECT,
)
def collect(
    certificate_id: Id,
    caller: TokenCaller,
    ports: PortsDep,
    format: Literal["pem", "der", "pkcs7"] = "pem",
) -> Response:
    """Any stored certificate, enrolled or imported (never a key). Needs the scope `read`."""
    found = csr_enrollment.collect_certificate(
        ports, caller.actor, caller.account_slug, certificate_id, COLLECT_FORMATS[format]
    )
    return Response(
        found.data,
        media_type=found.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{certificate_id}.{found.extension}"'
        },
    )
