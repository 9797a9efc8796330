"""Administrators of an account: role, organizations, privileges, password (argon2)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db.models import Admin
from certvault.errors import Conflict, InvalidInput
from certvault.services import audit
from certvault.services.accounts import find_organization, get_account
from certvault.services.actors import Actor, Privilege, Role
from certvault.services.ports import Ports

MIN_PASSWORD = 12


def password_hasher(ports: Ports) -> PasswordHasher:
    return PasswordHasher(
        time_cost=ports.settings.argon2_time_cost,
        memory_cost=ports.settings.argon2_memory_kib,
        parallelism=1,
    )


@dataclass(frozen=True)
class CreatedAdmin:
    admin_id: int
    login: str
    generated_password: str | None


def create_admin(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    login: str,
    *,
    role: str = "account",
    organizations: Sequence[str] = (),
    privileges: Sequence[str] = (),
    api_only: bool = False,
    password: str | None = None,
    email: str | None = None,
) -> CreatedAdmin:
    login = login.strip()
    if not login or len(login) > 200 or any(c.isspace() for c in login):
        raise InvalidInput("A login has 1 to 200 characters and no spaces.")
    try:
        role_value = Role(role)
        privs = sorted({Privilege(p).value for p in privileges})
    except ValueError:
        raise InvalidInput(
            "Unknown role or privilege. Roles: account, organization. Privileges: "
            + ", ".join(p.value for p in Privilege)
            + "."
        ) from None
    if role_value == Role.ORGANIZATION and not organizations:
        raise InvalidInput("An organization administrator needs at least one --organization.")
    generated = None
    if password is None:
        generated = password = secrets.token_urlsafe(18)
    elif len(password) < MIN_PASSWORD:
        raise InvalidInput(f"A password needs at least {MIN_PASSWORD} characters.")
    password_hash = password_hasher(ports).hash(password)

    def work(session: Session) -> CreatedAdmin:
        account = get_account(session, account_slug)
        if session.scalars(
            select(Admin.id).where(Admin.account_id == account.id, Admin.login == login)
        ).first():
            raise Conflict("An administrator with this login exists in this account.")
        orgs = [find_organization(session, account, o) for o in organizations]
        admin = Admin(
            account_id=account.id,
            login=login,
            email=email,
            password_hash=password_hash,
            role=role_value.value,
            privileges=" ".join(privs),
            api_only=api_only,
            organizations=orgs,
        )
        session.add(admin)
        session.flush()
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="admin.create",
            target_type="admin",
            target_id=admin.id,
            details={
                "login": login,
                "role": role_value.value,
                "privileges": privs,
                "organizations": [o.id for o in orgs],
                "api_only": api_only,
            },
        )
        return CreatedAdmin(admin.id, login, generated)

    return ports.db.run(work)


def actor_for(admin: Admin, ip: str = "") -> Actor:
    return Actor(
        name=f"admin:{admin.login}",
        kind="admin",
        account_id=admin.account_id,
        admin_id=admin.id,
        role=Role(admin.role),
        privileges=frozenset(Privilege(p) for p in admin.privileges.split() if p),
        organization_ids=frozenset(o.id for o in admin.organizations),
        ip=ip,
    )
