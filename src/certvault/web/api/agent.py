"""The endpoints of MS agents: the CA exchange certificate, and AD CS archival requests.

An agent token (``cva_…``, `certvault agent create`) opens these and nothing else; an
administrator's token does not open them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import Field

from certvault.services.access.agent_credentials import AgentIdentity, authenticate_agent
from certvault.services.access.tokens import Unauthenticated
from certvault.services.pki import agent_requests, exchange
from certvault.web.api.schemas import ERRORS, RATE_LIMITED, TOO_LARGE, Error, StrictBody, optional
from certvault.web.control_characters import MULTI_LINE
from certvault.web.deps import LimiterDep, PortsDep, bearer, client_ip

MAX_REQUEST_TEXT = 48 * 1024  # an RSA-4096 archival request is about 8 KB in base64
PEM_MEDIA = "application/x-pem-file"
CMC_MEDIA = "application/pkcs7-mime"

router = APIRouter(prefix="/agent", tags=["agents"], responses=ERRORS)  # type: ignore[arg-type]


def agent_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> AgentIdentity:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated()
    agent = authenticate_agent(request.app.state.ports, credentials.credentials, client_ip(request))
    request.state.actor_name = agent.actor.name
    return agent


AgentCaller = Annotated[AgentIdentity, Depends(agent_caller)]


@router.get(
    "/exchange-certificate",
    response_class=Response,
    summary="The CA exchange certificate",
    responses={
        200: {
            "description": "DER (application/pkix-cert), or PEM with `format=pem` or "
            "`Accept: application/x-pem-file`",
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in ("application/pkix-cert", PEM_MEDIA)
            },
        }
    },
)
def exchange_certificate(
    request: Request,
    agent: AgentCaller,
    ports: PortsDep,
    format: Literal["der", "pem"] | None = None,
) -> Response:
    """The certificate Windows clients encrypt the key they archive to (GETCERT_CAXCHGCERT),
    issued by the account's issuing CA. It is replaced within the last third of its 30 days;
    the one replaced still decrypts for 7 days. Fetch it for every enrollment, as Windows does."""
    cert = exchange.current_exchange(ports, agent.account_id)
    pem = format == "pem" or (format is None and PEM_MEDIA in request.headers.get("accept", ""))
    media = PEM_MEDIA if pem else "application/pkix-cert"
    return Response(
        exchange.certificate_bytes(cert, pem),
        media_type=media,
        headers={"Cache-Control": "no-store"},
    )


class RequesterIn(StrictBody):
    upn: str = optional(max_length=320, description="The requester's user principal name")
    email: str = optional(
        max_length=320,
        description="The address to certify (default: the one the request names)",
    )


class ArchivalRequest(StrictBody):
    request: Annotated[str, MULTI_LINE] = Field(
        min_length=1,
        max_length=MAX_REQUEST_TEXT,
        description="The CMC request as the Windows client made it: DER in base64, or PEM "
        "(as `certreq -new` writes it)",
    )
    template: str = Field(min_length=1, max_length=200, description="The Windows template name")
    requester: RequesterIn = optional(description="Who asked, as the agent authenticated them")


class AgentRefusal(Error):
    windows_status: int | None = Field(
        default=None, description="The HRESULT for the Windows client (absent on a malformed body)"
    )
    cmc_response: str | None = Field(
        default=None, description="A CMC failure response (base64 DER) when the request was read"
    )


REQUESTS_DESCRIPTION = """Issue the certificate an AD CS request asks for and, when its template
archives keys, escrow the archived private key with it: all or nothing. The answer is the CMC Full
PKI Response (`application/pkcs7-mime`, DER) signed by the issuing CA, carrying the certificate
with its chain and the request's encrypted-key hash back. The same request again gets the same
answer (header `X-Replayed: true`) and no second certificate.

A refusal answers JSON with a `code`, a `windows_status` (the HRESULT to hand to the client, e.g.
2148812804 = 0x80094804 CERTSRV_E_ARCHIVED_KEY_REQUIRED, 2148812816 = 0x80094810
CERTSRV_E_ARCHIVED_KEY_UNEXPECTED) and, once the request could be read, `cmc_response`: a CMC
failure response in base64. Every key that cannot be decrypted, whatever the reason, answers 422
`archived_key_invalid`, and counts against the agent's failure limit."""


@router.post(
    "/requests",
    response_class=Response,
    summary="Submit an AD CS archival request",
    description=REQUESTS_DESCRIPTION,
    responses={
        200: {
            "description": "The CMC Full PKI Response",
            "content": {CMC_MEDIA: {"schema": {"type": "string", "format": "binary"}}},
        },
        404: {"model": AgentRefusal, "description": "Unknown template"},
        422: {"model": AgentRefusal, "description": "Refused, with the Windows status"},
        **TOO_LARGE,
        **RATE_LIMITED,
    },
)
def submit(
    body: ArchivalRequest, agent: AgentCaller, ports: PortsDep, limiter: LimiterDep
) -> Response:
    requester = body.requester or RequesterIn()
    done = agent_requests.submit_request(
        ports,
        limiter,
        agent,
        body.request.encode(),
        body.template,
        agent_requests.Requester(upn=requester.upn or "", email=requester.email or ""),
    )
    headers = {"X-Certificate-Id": str(done.certificate_id), "Cache-Control": "no-store"}
    if done.replayed:
        headers["X-Replayed"] = "true"
    return Response(done.response, media_type=CMC_MEDIA, headers=headers)
