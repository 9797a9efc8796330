"""Administrators of an account: role, organizations, privileges, password (argon2)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db.models import Account, Admin, ApiToken, PasswordReset, WebSession
from certvault.errors import Conflict, Forbidden, InvalidInput, NotFound
from certvault.services.audit import log as audit
from certvault.services.kernel import notify, seals
from certvault.services.kernel.actors import Actor, Privilege, Role
from certvault.services.kernel.paging import MAX_ID
from certvault.services.kernel.passwords import hash_password
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import find_organization, get_account

MIN_PASSWORD = 12


class ReauthenticationRequired(Forbidden):
    """Confirm your password and a code from your authenticator to grant a privilege that
    releases keys."""

    code = "reauthentication_required"


class SelfLockout(Conflict):
    """An administrator cannot deactivate themselves or give up their own account role."""

    code = "self_lockout"


@dataclass(frozen=True)
class CreatedAdmin:
    admin_id: int
    login: str
    generated_password: str | None


PRIVILEGE_LABELS: dict[Privilege, str] = {
    Privilege.KEY_VAULT_DOWNLOAD: "Allow download keys from Key Vault",
    Privilege.CERTIFICATES_MANAGE: "Manage client certificates",
    Privilege.PERSONS_MANAGE: "Manage persons",
    Privilege.SETTINGS_MANAGE: "Manage settings and enrollment forms",
    Privilege.RECOVERY_APPROVE: "Approve key recovery requests",
}
MAX_EMAIL = 320
# Privileges that release keys (recovery approval will hand keys to their owners too). Granting
# one, or widening where its holder may use it, takes a fresh re-authentication in the console:
# a session taken over must not mint an administrator who downloads keys. settings_manage is not
# among them: it changes policy, which its holder may do without re-authenticating anyway.
RELEASE_PRIVILEGES = frozenset({Privilege.KEY_VAULT_DOWNLOAD, Privilege.RECOVERY_APPROVE})


def _check_login(login: str) -> str:
    login = login.strip()
    if not login or len(login) > 200 or any(c.isspace() for c in login) or not login.isprintable():
        raise InvalidInput("A login has 1 to 200 characters and no spaces.")
    return login


def check_email(email: str | None) -> str | None:
    if email is None or not email.strip():
        return None
    email = email.strip()
    local, at, domain = email.rpartition("@")
    if (
        len(email) > MAX_EMAIL
        or not at
        or not local
        or "." not in domain.strip(".")
        or not email.isprintable()
        or any(c.isspace() or c in '<>"(),;:[]\\' for c in email)
    ):
        raise InvalidInput("An email address looks like name@example.org.")
    return email


def _parse_role_and_privileges(
    role: str, privileges: Sequence[str]
) -> tuple[Role, frozenset[Privilege]]:
    try:
        return Role(role), frozenset(Privilege(p) for p in privileges)
    except ValueError:
        raise InvalidInput(
            "Unknown role or privilege. Roles: account, organization. Privileges: "
            + ", ".join(p.value for p in Privilege)
            + "."
        ) from None


def require_manager(actor: Actor, account: Account) -> None:
    """Only the account's own account administrators (and operators) manage administrators."""
    actor.require_visible(account.id, None, "Account")
    if not actor.is_operator and actor.role != Role.ACCOUNT:
        raise Forbidden("Only account administrators manage administrators.")


def _require_grantable(actor: Actor, granted: frozenset[Privilege]) -> None:
    # No escalation: an administrator hands on only privileges they hold themselves.
    missing = granted - actor.privileges
    if not actor.is_operator and missing:
        names = ", ".join(sorted(PRIVILEGE_LABELS[p] for p in missing))
        raise Forbidden(f"You cannot grant a privilege you do not hold: {names}.")


def require_covers(actor: Actor, held: frozenset[Privilege]) -> None:
    """No one changes, deactivates or resets an administrator who holds (``held``) a privilege
    they do not hold themselves: taking a privilege away, or locking its holder out, is as strong
    as giving it."""
    if not actor.is_operator and held - actor.privileges:
        raise Forbidden(
            "You cannot change an administrator who holds privileges you do not hold yourself."
        )


def _widens_release(before: AdminView | None, after: AdminView) -> bool:
    """Whether the change lets the administrator release keys they could not release before: a
    privilege of RELEASE_PRIVILEGES newly held, or one held over more organizations."""
    held = after.privileges & RELEASE_PRIVILEGES
    if not held:
        return False
    if before is None or held - before.privileges:
        return True
    if before.role == Role.ACCOUNT:
        return False
    return after.role == Role.ACCOUNT or bool(after.organization_ids - before.organization_ids)


def _require_reauthenticated(actor: Actor, reauthenticated: bool) -> None:
    if not actor.is_operator and not reauthenticated:
        raise ReauthenticationRequired()


def _privileges_text(privileges: frozenset[Privilege]) -> str:
    return " ".join(sorted(p.value for p in privileges))


def _notify_key_download_grant(
    session: Session, actor: Actor, account: Account, admin: Admin
) -> None:
    """Tell every account administrator that someone may now download keys (same transaction).
    Operators are told nothing: they grant from the CLI when they set an account up."""
    if actor.is_operator:
        return
    session.flush()
    notify.queue_for_admins(
        session,
        account,
        "An administrator may now download keys from Key Vault",
        f"{actor.name} gave the administrator {admin.login} of {account.name} the privilege "
        '"Allow download keys from Key Vault": they can now download escrowed private keys.\n\n'
        "If this was not intended, remove the privilege on the Admins page.",
    )


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
    reauthenticated: bool = False,
) -> CreatedAdmin:
    """Create an administrator. Granting a privilege of RELEASE_PRIVILEGES needs
    ``reauthenticated``: the console session confirmed its password and a code just now."""
    login = _check_login(login)
    email = check_email(email)
    role_value, granted = _parse_role_and_privileges(role, privileges)
    privs = sorted(p.value for p in granted)
    if role_value == Role.ORGANIZATION and not organizations:
        raise InvalidInput("An organization administrator needs at least one --organization.")
    generated = None
    if password is None:
        generated = password = secrets.token_urlsafe(18)
    elif len(password) < MIN_PASSWORD:
        raise InvalidInput(f"A password needs at least {MIN_PASSWORD} characters.")
    password_hash = hash_password(ports, password)

    def work(session: Session) -> CreatedAdmin:
        account = get_account(session, account_slug)
        require_manager(actor, account)
        _require_grantable(actor, granted)
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
        if _widens_release(None, _view(admin)):
            _require_reauthenticated(actor, reauthenticated)
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
        if Privilege.KEY_VAULT_DOWNLOAD in granted:
            _notify_key_download_grant(session, actor, account, admin)
        return CreatedAdmin(admin.id, login, generated)

    with refusals_audited(ports, actor, "admin.create"):
        return ports.db.run(work)


@contextmanager
def refusals_audited(
    ports: Ports, actor: Actor, action: str, admin_id: int | str = ""
) -> Iterator[None]:
    """An administrator's refused change is audited on their own account's chain."""
    if actor.is_operator:  # the CLI reports its own errors; the operator has no account
        yield
        return
    with audit.refusals_audited(
        ports,
        account_id=actor.account_id,
        actor=actor,
        action=action,
        target_type="admin",
        target_id=admin_id,
    ):
        yield


# --- the Admins page ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AdminView:
    """An administrator as the Admins page shows it (never the password or TOTP secret)."""

    id: int
    login: str
    email: str | None
    role: Role
    organizations: tuple[tuple[int, str], ...]  # (id, name)
    privileges: frozenset[Privilege]
    api_only: bool
    totp_set_up: bool
    active: bool

    @property
    def organization_ids(self) -> frozenset[int]:
        return frozenset(org_id for org_id, _ in self.organizations)


def _view(admin: Admin) -> AdminView:
    sealed = seals.admin_organization_ids(admin)
    return AdminView(
        id=admin.id,
        login=admin.login,
        email=admin.email,
        role=Role(admin.role),
        organizations=tuple(sorted((o.id, o.name) for o in admin.organizations if o.id in sealed)),
        privileges=frozenset(Privilege(p) for p in admin.privileges.split() if p),
        api_only=admin.api_only,
        totp_set_up=admin.totp_secret is not None,
        active=admin.active,
    )


def find_admin(session: Session, account: Account, admin_id: int) -> Admin:
    admin = session.get(Admin, admin_id) if 0 < admin_id <= MAX_ID else None
    if admin is None or admin.account_id != account.id:
        # Another account's administrator answers exactly like a missing one.
        raise NotFound("Administrator not found.")
    return admin


def list_admins(ports: Ports, actor: Actor, account_slug: str) -> list[AdminView]:
    """The account's administrators, by login."""
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        require_manager(actor, account)
        rows = session.scalars(
            select(Admin).where(Admin.account_id == account.id).order_by(Admin.login)
        )
        return [_view(a) for a in rows]


def get_admin(ports: Ports, actor: Actor, account_slug: str, admin_id: int) -> AdminView:
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        require_manager(actor, account)
        return _view(find_admin(session, account, admin_id))


def _audit_state(view: AdminView) -> dict[str, object]:
    return {
        "email": view.email,
        "role": view.role.value,
        "organizations": sorted(view.organization_ids),
        "privileges": sorted(p.value for p in view.privileges),
    }


def update_admin(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    admin_id: int,
    *,
    role: str,
    organizations: Sequence[str],
    privileges: Sequence[str],
    email: str | None,
    reauthenticated: bool = False,
) -> AdminView:
    """Set an administrator's role, organizations, privileges and address; audited with the old
    and the new values. An account administrator's organizations are not kept (they see all).
    A change that widens what they may release needs ``reauthenticated``, as create_admin."""
    role_value, wanted = _parse_role_and_privileges(role, privileges)
    email = check_email(email)
    if role_value == Role.ORGANIZATION and not organizations:
        raise InvalidInput("An organization administrator needs at least one organization.")

    def work(session: Session) -> AdminView:
        account = get_account(session, account_slug)
        require_manager(actor, account)
        admin = find_admin(session, account, admin_id)
        before = _view(admin)
        require_covers(actor, before.privileges)
        granted = wanted - before.privileges
        _require_grantable(actor, granted)
        if admin.id == actor.admin_id and role_value != Role.ACCOUNT:
            raise SelfLockout("You cannot remove your own account administrator role.")
        orgs = (
            [find_organization(session, account, o) for o in organizations]
            if role_value == Role.ORGANIZATION
            else []
        )
        admin.role = role_value.value
        admin.organizations = orgs
        admin.privileges = _privileges_text(wanted)
        if admin.email != email:
            # A set-password link went to the old address: it no longer works.
            end_password_links(session, ports, admin)
        admin.email = email
        session.flush()
        after = _view(admin)
        if _widens_release(before, after):
            _require_reauthenticated(actor, reauthenticated)
        old, new = _audit_state(before), _audit_state(after)
        if old != new:
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action="admin.update",
                target_type="admin",
                target_id=admin.id,
                details={
                    "login": admin.login,
                    "old": {k: v for k, v in old.items() if v != new[k]},
                    "new": {k: v for k, v in new.items() if v != old[k]},
                },
            )
        if Privilege.KEY_VAULT_DOWNLOAD in granted and admin.active:
            _notify_key_download_grant(session, actor, account, admin)
        return after

    with refusals_audited(ports, actor, "admin.update", admin_id):
        return ports.db.run(work)


def deactivate_admin(ports: Ports, actor: Actor, account_slug: str, admin_id: int) -> AdminView:
    """Deactivate an administrator: their sessions end and their API tokens are revoked."""

    def work(session: Session) -> AdminView:
        account = get_account(session, account_slug)
        require_manager(actor, account)
        admin = find_admin(session, account, admin_id)
        if admin.id == actor.admin_id:
            raise SelfLockout("You cannot deactivate yourself.")
        require_covers(actor, _view(admin).privileges)
        if not admin.active:
            return _view(admin)
        admin.active = False
        end_password_links(session, ports, admin)
        sessions = revoke_live(session, ports, WebSession, admin)
        # Tokens stop working with an inactive administrator anyway; revoked, they stay dead
        # should the administrator come back.
        tokens = revoke_live(session, ports, ApiToken, admin)
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="admin.deactivate",
            target_type="admin",
            target_id=admin.id,
            details={
                "login": admin.login,
                "old": {"active": True},
                "new": {"active": False},
                "sessions_ended": sessions,
                "tokens_revoked": tokens,
            },
        )
        return _view(admin)

    with refusals_audited(ports, actor, "admin.deactivate", admin_id):
        return ports.db.run(work)


def reset_totp(ports: Ports, actor: Actor, account_slug: str, login: str) -> None:
    """Forget an administrator's TOTP secret and end their sessions: the next sign-in enrolls."""

    def work(session: Session) -> None:
        account = get_account(session, account_slug)
        admin = session.scalars(
            select(Admin).where(Admin.account_id == account.id, Admin.login == login)
        ).first()
        if admin is None:
            raise NotFound("No such administrator in this account.")
        admin.totp_secret = None
        admin.totp_last_step = None
        # A link mailed while TOTP was set up would now set a password without a code.
        end_password_links(session, ports, admin)
        revoke_live(session, ports, WebSession, admin)
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="admin.totp_reset",
            target_type="admin",
            target_id=admin.id,
        )

    ports.db.run(work)


def revoke_live(
    session: Session, ports: Ports, kind: type[WebSession] | type[ApiToken], admin: Admin
) -> int:
    """Revoke the administrator's live sessions or tokens; how many. Row by row, through the
    ORM: each row is sealed again (a bulk UPDATE would leave it failing its seal)."""
    query = select(kind).where(kind.admin_id == admin.id, kind.revoked_at.is_(None))
    rows = cast(Sequence[WebSession | ApiToken], session.scalars(query).all())
    now = ports.clock()
    for row in rows:
        row.revoked_at = now
    return len(rows)


def reset_admin_totp(ports: Ports, actor: Actor, account_slug: str, admin_id: int) -> AdminView:
    """Forget an administrator's TOTP secret (:func:`reset_totp`): their sessions end and
    their next sign-in sets TOTP up again."""

    with refusals_audited(ports, actor, "admin.totp_reset", admin_id):
        found = get_admin(ports, actor, account_slug, admin_id)
        require_covers(actor, found.privileges)
        reset_totp(ports, actor, account_slug, found.login)
    return get_admin(ports, actor, account_slug, admin_id)


def end_password_links(session: Session, ports: Ports, admin: Admin) -> int:
    """End the administrator's open set-password links (services/access/password_resets.py),
    row by row so that each is sealed again; how many."""
    rows = session.scalars(
        select(PasswordReset).where(
            PasswordReset.admin_id == admin.id,
            PasswordReset.used_at.is_(None),
            PasswordReset.superseded_at.is_(None),
        )
    ).all()
    now = ports.clock()
    for row in rows:
        row.superseded_at = now
    return len(rows)


def signing_in(
    session: Session, account_slug: str, login: str
) -> tuple[Account | None, Admin | None]:
    """The account and the administrator a sign-in names, either None when unknown (the caller
    still spends one password check, so that an unknown name costs what a known one does)."""
    account = session.scalars(select(Account).where(Account.slug == account_slug)).first()
    if account is None:
        return None, None
    admin = session.scalars(
        select(Admin).where(Admin.account_id == account.id, Admin.login == login)
    ).first()
    return account, admin


def actor_for(admin: Admin, ip: str = "") -> Actor:
    return Actor(
        name=f"admin:{admin.login}",
        kind="admin",
        account_id=admin.account_id,
        admin_id=admin.id,
        role=Role(admin.role),
        privileges=frozenset(Privilege(p) for p in admin.privileges.split() if p),
        organization_ids=seals.admin_organization_ids(admin),
        ip=ip,
    )
