"""Password resets of administrators: a single-use, short-lived set-password link, mailed
(password_links.py is its use).

The resetter (an operator, or an account administrator who may manage the target) never sets or
sees the new password, nor the link: it goes only to the administrator's own address, its mail
sealed at rest (notify.seal_body); the database keeps only the SHA-256 of its token. The old
password keeps working until the link is used, so a reset made in bad faith locks nobody out; a
newer reset replaces every older link. Every reset, and every refused one, is audited.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db.models import Account, Admin, PasswordReset
from certvault.errors import Conflict, NotFound
from certvault.services.access.admins import (
    ReauthenticationRequired,
    actor_for,
    end_password_links,
    find_admin,
    refusals_audited,
    require_covers,
    require_manager,
)
from certvault.services.access.tokens import token_digest
from certvault.services.audit import log as audit
from certvault.services.kernel import notify
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.passwords import is_text
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account

REQUEST = "admin.password_reset"
PAGE_PATH = "/admin/set-password"
SUBJECT = "Set your certvault password"


class ReauthenticationNeeded(ReauthenticationRequired):
    """Confirm your password and a code from your authenticator to reset a password."""


class NoAddress(Conflict):
    """This administrator has no email address to mail a link to; set one first."""

    code = "admin_without_address"


class AdminInactive(Conflict):
    """This administrator is deactivated or signs in with API tokens only: there is no password
    to reset."""

    code = "admin_not_resettable"


@dataclass(frozen=True)
class ResetMailed:
    """What the resetter is told: where the link went and until when it works (never the link)."""

    login: str
    email: str
    expires_at: datetime


def _lifetime(ports: Ports) -> timedelta:
    return timedelta(minutes=ports.settings.password_reset_minutes)


# --- 1. the reset -------------------------------------------------------------------------------


def _target(
    session: Session, actor: Actor, account_slug: str, admin_id: int
) -> tuple[Account, Admin]:
    account = get_account(session, account_slug)
    require_manager(actor, account)
    admin = find_admin(session, account, admin_id)
    # Locking an administrator out, or taking their sign-in, is as strong as their privileges.
    require_covers(actor, actor_for(admin).privileges)
    if not admin.active or admin.api_only:
        raise AdminInactive()
    if not admin.email:
        raise NoAddress()
    return account, admin


def _mail(account: Account, admin: Admin, actor: Actor, link: str, minutes: int) -> str:
    return (
        f"{actor.name} started a reset of the password of your administrator login "
        f"{admin.login} at {account.name} ({account.slug}).\n\n"
        f"Open this link to choose a new password (it works once, for {minutes} minutes):\n\n"
        f"    {link}\n\n"
        "Your current password keeps working until you use the link, and your authenticator "
        "stays as it is: the page asks for a code from it.\n\n"
        "If you did not expect this, do not open the link and tell your account administrators.\n"
    )


def request_reset(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    admin_id: int,
    *,
    reauthenticated: bool = False,
) -> ResetMailed:
    """Mail a set-password link to the administrator; older links stop working. An
    administrator's request needs ``reauthenticated`` (the console confirmed their password and
    a code just now); an operator's does not."""
    token = secrets.token_urlsafe(32)
    link = ports.settings.public_url_for(f"{PAGE_PATH}?token={token}")
    lifetime = _lifetime(ports)
    with refusals_audited(ports, actor, REQUEST, admin_id):
        with ports.db.read() as session:
            account, admin = _target(session, actor, account_slug, admin_id)
        if not actor.is_operator and not reauthenticated:
            raise ReauthenticationNeeded()
        # Sealed before the transaction: opening the mail key may take a transaction of its own.
        sealed = notify.seal_body(ports, _mail(account, admin, actor, link, lifetime.seconds // 60))

        def work(session: Session) -> ResetMailed:
            account, admin = _target(session, actor, account_slug, admin_id)
            now = ports.clock()
            superseded = end_password_links(session, ports, admin)
            row = PasswordReset(
                account_id=account.id,
                admin_id=admin.id,
                token_sha256=token_digest(token),
                requested_by=actor.name[:320],
                created_at=now,
                expires_at=now + lifetime,
            )
            session.add(row)
            session.flush()
            email = admin.email or ""
            notify.queue_mail(session, account, email, SUBJECT, sealed, expires_at=row.expires_at)
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action=REQUEST,
                target_type="admin",
                target_id=admin.id,
                details={
                    "login": admin.login,
                    "email": email,
                    "reset": row.uuid,
                    "expires_at": row.expires_at.isoformat(),
                    "links_replaced": superseded,
                },
            )
            return ResetMailed(admin.login, email, row.expires_at)

        return ports.db.run(work)


def request_reset_by_login(
    ports: Ports, actor: Actor, account_slug: str, login: str
) -> ResetMailed:
    """:func:`request_reset` for the administrator named by ``login`` (the CLI's way)."""
    if not _plain(account_slug, 63):
        raise NotFound("Account not found.")
    if not _plain(login, 200):
        raise NotFound("Administrator not found.")
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        found = session.scalars(
            select(Admin.id).where(Admin.account_id == account.id, Admin.login == login)
        ).first()
    # An unknown login answers like an unknown id: "Administrator not found."
    return request_reset(ports, actor, account_slug, found if found is not None else 0)


def _plain(name: str, longest: int) -> bool:
    # A name with control characters is nobody's (and PostgreSQL refuses NUL in a query).
    return 0 < len(name) <= longest and is_text(name)
