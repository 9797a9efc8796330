"""FastAPI dependencies: the ports, the client address, and who is calling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from certvault.services.access import credentials, tokens
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import RateLimiter

bearer = HTTPBearer(auto_error=False, description="An API token: `certvault token create`.")


@dataclass(frozen=True)
class Caller:
    actor: Actor
    account_slug: str


def get_ports(request: Request) -> Ports:
    ports: Ports = request.app.state.ports
    return ports


def get_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


def client_ip(request: Request) -> str:
    # uvicorn rewrites the client from X-Forwarded-For only for CERTVAULT_TRUSTED_PROXIES.
    return request.client.host if request.client else ""


def _remember(request: Request, caller: Caller) -> Caller:
    request.state.actor_name = caller.actor.name
    return caller


BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def bearer_present(credentials_: BearerCredentials) -> HTTPAuthorizationCredentials:
    """A bearer token, not yet checked: for routes that check it in their own transaction
    (token_caller_in). A request without one is refused before anything else."""
    if credentials_ is None or credentials_.scheme.lower() != "bearer":
        raise tokens.Unauthenticated()
    return credentials_


def token_caller(request: Request, credentials_: BearerCredentials) -> Caller:
    """The own API: bearer tokens only."""
    return token_caller_in(request, credentials_, None)


def token_caller_in(
    request: Request, credentials_: HTTPAuthorizationCredentials | None, session: Session | None
) -> Caller:
    """The bearer token's caller, checked in ``session`` when given: a route that does all its
    work in one transaction (Database.run_request) checks the token there too, first."""
    if credentials_ is None or credentials_.scheme.lower() != "bearer":
        raise tokens.Unauthenticated()
    actor, slug = tokens.authenticate(
        get_ports(request), credentials_.credentials, client_ip(request), session=session
    )
    return _remember(request, Caller(actor, slug))


def scm_caller(request: Request, credentials_: BearerCredentials) -> Caller:
    """The SCM-compatible API: a bearer token, or its `login`/`password`/`customerUri` headers."""
    if credentials_ is not None:
        return token_caller(request, credentials_)
    login = request.headers.get("login")
    password = request.headers.get("password")
    customer = request.headers.get("customerUri")
    if not (login and password and customer):
        raise tokens.Unauthenticated()
    actor = credentials.authenticate_password(
        get_ports(request),
        get_limiter(request),
        request.app.state.credential_cache,
        account_slug=customer,
        login=login,
        password=password,
        ip=client_ip(request),
    )
    return _remember(request, Caller(actor, customer))


def scm_login_or_bearer(
    request: Request, credentials_: BearerCredentials
) -> Caller | HTTPAuthorizationCredentials:
    """The SCM-compatible API's caller when it signs in with the login headers, or its bearer
    token not yet checked, for a route that checks it in its own transaction (scm_caller_in)."""
    if credentials_ is not None:
        return credentials_
    return scm_caller(request, None)


def scm_caller_in(
    request: Request, found: Caller | HTTPAuthorizationCredentials, session: Session
) -> Caller:
    """scm_caller, with a bearer token checked in ``session`` (a request's one transaction)."""
    if isinstance(found, Caller):
        return found
    return token_caller_in(request, found, session)


TokenCaller = Annotated[Caller, Depends(token_caller)]
ScmCaller = Annotated[Caller, Depends(scm_caller)]
BearerToken = Annotated[HTTPAuthorizationCredentials, Depends(bearer_present)]
ScmLoginOrBearer = Annotated[Caller | HTTPAuthorizationCredentials, Depends(scm_login_or_bearer)]
PortsDep = Annotated[Ports, Depends(get_ports)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
