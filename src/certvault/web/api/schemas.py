"""Response and request bodies of the own API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Error(BaseModel):
    code: str
    description: str


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


ERRORS = {
    401: {"model": Error, "description": "Missing or invalid token"},
    403: {"model": Error, "description": "Visible, but not allowed"},
    404: {"model": Error, "description": "Not found (or not visible)"},
    422: {"model": Error, "description": "Invalid input"},
}


class OrganizationOut(BaseModel):
    id: int
    name: str
    is_default: bool


class KeyVaultStatus(BaseModel):
    account: str
    name: str
    key_vault_enabled: bool
    reason_required: bool
    min_passphrase_length: int
    require_trusted_issuer: bool
