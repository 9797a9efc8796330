"""Who is acting, and what they may see and do (authorization lives here, not in routes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from certvault.errors import Forbidden, NotFound


class Privilege(StrEnum):
    KEY_VAULT_DOWNLOAD = "key_vault_download"  # "Allow download keys from Key Vault"
    CERTIFICATES_MANAGE = "certificates_manage"
    PERSONS_MANAGE = "persons_manage"
    SETTINGS_MANAGE = "settings_manage"
    RECOVERY_APPROVE = "recovery_approve"


class Scope(StrEnum):
    """What an API token may be used for, on top of its administrator's privileges."""

    READ = "read"
    KEYS_UPLOAD = "keys:upload"
    KEYS_DOWNLOAD = "keys:download"
    MANAGE = "manage"


class InsufficientScope(Forbidden):
    """The token was not issued for this kind of request."""

    code = "insufficient_scope"


class Role(StrEnum):
    ACCOUNT = "account"
    ORGANIZATION = "organization"


@dataclass(frozen=True)
class Actor:
    """An operator (CLI), an administrator, certvault itself, or a person recovering their own
    keys at the Private Key Recovery Form."""

    name: str
    kind: str  # "operator" | "admin" | "system" | "person"
    account_id: int | None = None
    admin_id: int | None = None
    role: Role | None = None
    privileges: frozenset[Privilege] = field(default_factory=frozenset)
    organization_ids: frozenset[int] = field(default_factory=frozenset)
    ip: str = ""
    scopes: frozenset[Scope] | None = None  # None: not limited (console sessions, operators)
    token_id: int | None = None  # the API token the request came with, if any
    # A person: the certificates whose keys they proved they may recover, and the address they
    # proved they hold. Nothing else.
    certificate_ids: frozenset[int] = field(default_factory=frozenset)
    address: str = ""

    @property
    def is_person(self) -> bool:
        return self.kind == "person"

    @classmethod
    def operator(cls, name: str) -> Actor:
        return cls(name=name, kind="operator")

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    def can_see(self, account_id: int, organization_id: int | None = None) -> bool:
        if self.is_operator:
            return True
        if self.account_id != account_id:
            return False
        if self.role == Role.ACCOUNT or organization_id is None:
            return True
        return organization_id in self.organization_ids

    def require_visible(self, account_id: int, organization_id: int | None, what: str) -> None:
        # A foreign or out-of-scope object answers exactly like a missing one.
        if not self.can_see(account_id, organization_id):
            raise NotFound(f"{what} not found.")

    def require(self, privilege: Privilege, account_id: int, organization_id: int | None) -> None:
        self.require_visible(account_id, organization_id, "Object")
        if self.is_operator:
            return
        if privilege not in self.privileges:
            raise Forbidden(f"This needs the privilege {privilege.value}.")

    def require_scope(self, scope: Scope) -> None:
        if self.scopes is not None and scope not in self.scopes:
            raise InsufficientScope(f"This token lacks the scope {scope.value}.")

    def visible_organizations(self) -> frozenset[int] | None:
        """Organizations an organization administrator sees; None when not limited."""
        if self.is_operator or self.role == Role.ACCOUNT:
            return None
        return self.organization_ids

    def allowed_scopes(self) -> frozenset[Scope]:
        """Every scope this actor's privileges can back."""
        scopes = {Scope.READ}
        if self.is_operator or Privilege.CERTIFICATES_MANAGE in self.privileges:
            scopes |= {Scope.KEYS_UPLOAD, Scope.MANAGE}
        if self.is_operator or self.privileges & {
            Privilege.PERSONS_MANAGE,
            Privilege.SETTINGS_MANAGE,
        }:
            scopes.add(Scope.MANAGE)
        if self.is_operator or Privilege.KEY_VAULT_DOWNLOAD in self.privileges:
            scopes.add(Scope.KEYS_DOWNLOAD)
        return frozenset(scopes)
