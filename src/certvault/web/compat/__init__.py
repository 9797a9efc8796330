"""Endpoints with the paths and JSON shapes of the commercial product's REST API, so existing
scripts work unchanged: thin adapters over the same services."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header

from certvault.web.compat import organizations, persons, smime

_WITH = "Send `login`, `password` and `customerUri` together, or a bearer token instead. "


async def header_credentials(
    login: Annotated[
        str | None,
        Header(
            alias="login",
            description=_WITH + "The login of an administrator created `--api-only`.",
        ),
    ] = None,
    password: Annotated[
        str | None,
        Header(alias="password", description=_WITH + "That administrator's password."),
    ] = None,
    customer_uri: Annotated[
        str | None,
        Header(alias="customerUri", description=_WITH + "The account's slug."),
    ] = None,
) -> None:
    """Documents the SCM API's header credentials in OpenAPI; deps.scm_caller checks them."""


router = APIRouter(prefix="/api", dependencies=[Depends(header_credentials)])
router.include_router(persons.router)
router.include_router(smime.router)
router.include_router(organizations.router)
