"""SCM organizations (`/api/organization/v1`): so a script can find an `organizationId`."""

from __future__ import annotations

from fastapi import APIRouter

from certvault.services.directory import accounts
from certvault.web.compat.schemas import SCM_ERRORS, ScmOrganization
from certvault.web.deps import PortsDep, ScmCaller

router = APIRouter(tags=["SCM-compatible: organizations"], responses=SCM_ERRORS)


@router.get("/organization/v1", response_model=list[ScmOrganization], summary="List organizations")
def list_organizations(caller: ScmCaller, ports: PortsDep) -> list[ScmOrganization]:
    orgs = accounts.list_organizations(ports, caller.actor, caller.account_slug)
    return [ScmOrganization(id=o.id, name=o.name) for o in orgs]
