"""FastAPI dependencies: the ports, the client address, and who is calling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from certvault.db.models import Account
from certvault.services.access import credentials, tokens
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import RateLimiter
from certvault.services.kernel.tenancy import adopt_account

bearer = HTTPBearer(auto_error=False, description="An API token: `certvault token create`.")


@dataclass(frozen=True)
class Caller:
    actor: Actor
    account_slug: str
    # The account row, when the authentication read it (a token): a request's transaction
    # adopts it rather than reading it again (tenancy.adopt_account).
    account: Account | None = None

    def adopt(self, session: Session) -> None:
        adopt_account(session, self.account)


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


def token_caller(
    request: Request,
    credentials_: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The own API: bearer tokens only."""
    if credentials_ is None or credentials_.scheme.lower() != "bearer":
        raise tokens.Unauthenticated()
    actor, account = tokens.authenticate(
        get_ports(request), credentials_.credentials, client_ip(request)
    )
    return _remember(request, Caller(actor, account.slug, account))


def scm_caller(
    request: Request,
    credentials_: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
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


TokenCaller = Annotated[Caller, Depends(token_caller)]
ScmCaller = Annotated[Caller, Depends(scm_caller)]


# Dependencies that only look something up are coroutines: FastAPI runs a plain function
# dependency on its thread pool, a hop between threads for nothing.
async def _ports(request: Request) -> Ports:
    return get_ports(request)


async def _limiter(request: Request) -> RateLimiter:
    return get_limiter(request)


PortsDep = Annotated[Ports, Depends(_ports)]
LimiterDep = Annotated[RateLimiter, Depends(_limiter)]
