"""The caller's account: its organizations and its Key Vault status."""

from __future__ import annotations

from fastapi import APIRouter

from certvault.services.directory import accounts
from certvault.web.api.schemas import ERRORS, KeyVaultStatus, OrganizationOut
from certvault.web.deps import PortsDep, TokenCaller

router = APIRouter(tags=["account"], responses=ERRORS)  # type: ignore[arg-type]


@router.get("/organizations", response_model=list[OrganizationOut])
def list_organizations(caller: TokenCaller, ports: PortsDep) -> list[OrganizationOut]:
    orgs = accounts.list_organizations(ports, caller.actor, caller.account_slug)
    return [OrganizationOut(id=o.id, name=o.name, is_default=o.is_default) for o in orgs]


@router.get("/key-vault", response_model=KeyVaultStatus)
def key_vault_status(caller: TokenCaller, ports: PortsDep) -> KeyVaultStatus:
    a = accounts.account_status(ports, caller.actor, caller.account_slug)
    return KeyVaultStatus(
        account=a.slug,
        name=a.name,
        key_vault_enabled=a.key_vault_enabled,
        reason_required=a.reason_required,
        min_passphrase_length=a.min_passphrase_length,
        require_trusted_issuer=a.require_trusted_issuer,
    )
