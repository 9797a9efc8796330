"""Password resets of administrators: a single-use, short-lived set-password link, mailed.

The resetter (an operator, or an account administrator who may manage the target) never sets or
sees the new password, nor the link: it goes only to the administrator's own address, its mail
sealed at rest (notify.seal_body); the database keeps only the SHA-256 of its token. The old
password keeps working until the link is used, so a reset made in bad faith locks nobody out; a
newer reset replaces every older link. The link alone is not enough where TOTP is set up: the
set-password page asks for a current code, so a mailbox taken over does not take the account.
Setting the password ends the administrator's console sessions. Every step, and every refused
link, is audited (never the token, the password or the code).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db.models import Account, Admin, PasswordReset, WebSession
from certvault.errors import CertvaultError, Conflict, InvalidInput, NotFound
from certvault.services.access.admins import (
    MIN_PASSWORD,
    ReauthenticationRequired,
    actor_for,
    find_admin,
    refusals_audited,
    require_covers,
    require_manager,
    revoke_live,
)
from certvault.services.access.tokens import token_digest
from certvault.services.access.totp import matching_step, open_secret
from certvault.services.access.web_sessions import claim_step, login_limits
from certvault.services.audit import log as audit
from certvault.services.kernel import notify
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.passwords import hash_password, is_text
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import Limit, RateLimiter, enforce
from certvault.services.kernel.tenancy import get_account

REQUEST = "admin.password_reset"
SET = "admin.password_set"
LINK = "admin.password_link"  # a refused use of a link
PAGE_PATH = "/admin/set-password"
SUBJECT = "Set your certvault password"
CHANGED_SUBJECT = "Your certvault password was changed"
MAX_PASSWORD = 1024
HOUR = 3600
# secrets.token_urlsafe(32): 43 characters. Anything far from that is not looked up.
_TOKEN_LENGTHS = range(32, 65)


class ReauthenticationNeeded(ReauthenticationRequired):
    """Confirm your password and a code from your authenticator to reset a password."""


class NoAddress(Conflict):
    """This administrator has no email address to mail a link to; set one first."""

    code = "admin_without_address"


class AdminInactive(Conflict):
    """This administrator is deactivated or signs in with API tokens only: there is no password
    to reset."""

    code = "admin_not_resettable"


class LinkInvalid(Conflict):
    """This link does not work: it was used, has expired, or a newer link replaced it. Ask an
    account administrator for a new one."""

    code = "reset_link_invalid"


class LinkKept(InvalidInput):
    """The new password was not set; this link still works."""

    # The link as the page shows it, to show the form again with the error.
    link: LinkView | None = None


class PasswordsDiffer(LinkKept):
    """The two passwords are not the same."""

    code = "passwords_differ"


class PasswordTooWeak(LinkKept):
    """A password needs 12 to 1024 characters of printable text."""

    code = "password_too_weak"


class CodeInvalid(LinkKept):
    """The authenticator code is not right (or was used already); this link still works."""

    code = "totp_invalid"


@dataclass(frozen=True)
class ResetMailed:
    """What the resetter is told: where the link went and until when it works (never the link)."""

    login: str
    email: str
    expires_at: datetime


@dataclass(frozen=True)
class LinkView:
    """What the set-password page shows about a good link."""

    account_name: str
    login: str
    asks_code: bool  # TOTP is set up: the page asks for a current code
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
            superseded = _supersede(session, admin, now)
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


def _supersede(session: Session, admin: Admin, now: datetime) -> int:
    """End the administrator's open links (row by row: each is sealed again); how many."""
    rows = session.scalars(
        select(PasswordReset).where(
            PasswordReset.admin_id == admin.id,
            PasswordReset.used_at.is_(None),
            PasswordReset.superseded_at.is_(None),
        )
    ).all()
    for row in rows:
        row.superseded_at = now
    return len(rows)


# --- 2. the link --------------------------------------------------------------------------------


def _stranger(ip: str) -> Actor:
    return Actor(name="web-password-link", kind="anonymous", ip=ip)


def _why_not(row: PasswordReset | None, admin: Admin | None, now: datetime) -> str | None:
    """Why a link does not work (for the audit log), or None when it does."""
    if row is None or admin is None:
        return "unknown"
    if row.used_at is not None:
        return "used"
    if row.superseded_at is not None:
        return "replaced"
    if row.expires_at <= now:
        return "expired"
    if not admin.active or admin.api_only:
        return "admin_inactive"
    return None


@dataclass(frozen=True)
class _Found:
    row: PasswordReset | None
    admin: Admin | None
    account: Account | None


def _find(session: Session, token: str) -> _Found:
    if len(token) not in _TOKEN_LENGTHS or not token.isascii():
        return _Found(None, None, None)
    digest = token_digest(token)
    row = session.scalars(select(PasswordReset).where(PasswordReset.token_sha256 == digest)).first()
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return _Found(None, None, None)
    admin = session.get(Admin, row.admin_id)
    account = session.get(Account, row.account_id)
    if admin is None or account is None or admin.account_id != account.id:
        return _Found(row, None, None)
    return _Found(row, admin, account)


def _refuse(ports: Ports, found: _Found, ip: str, reason: str) -> None:
    admin = found.admin
    audit.record_refusal(
        ports,
        account_id=found.account.id if found.account is not None else None,
        actor=actor_for(admin, ip) if admin is not None else _stranger(ip),
        action=LINK,
        reason_code=reason,
        target_type="admin" if admin is not None else "",
        target_id=admin.id if admin is not None else "",
        details={"reset": found.row.uuid} if found.row is not None else None,
    )


def _checked(ports: Ports, limiter: RateLimiter, token: str, ip: str) -> _Found:
    """The link's row, administrator and account, refused (and audited) unless it works now.
    Counted against the client's limit first: guessing links costs a try each."""
    try:
        enforce(
            limiter,
            Limit(f"pw-link-ip:{ip}", ports.settings.password_reset_checks_per_hour_ip, HOUR),
        )
    except CertvaultError as exc:
        _refuse(ports, _Found(None, None, None), ip, exc.code)
        raise
    with ports.db.read() as session:
        found = _find(session, token)
    why = _why_not(found.row, found.admin, ports.clock())
    if why is not None:
        _refuse(ports, found, ip, why)
        raise LinkInvalid()
    return found


def _view(found: _Found) -> LinkView:
    assert found.row is not None and found.admin is not None and found.account is not None
    return LinkView(
        found.account.name,
        found.admin.login,
        found.admin.totp_secret is not None,
        found.row.expires_at,
    )


def check_link(ports: Ports, limiter: RateLimiter, token: str, ip: str) -> LinkView:
    """What the set-password page shows for a link that works; the link is not used up (a
    mail scanner that opens links must not spend it)."""
    return _view(_checked(ports, limiter, token, ip))


def _proven(
    ports: Ports,
    limiter: RateLimiter,
    found: _Found,
    password: str,
    again: str,
    code: str,
    ip: str,
) -> int | None:
    """Check the new password against the policy and, where TOTP is set up, the code; the time
    step of the code (claimed when the password is set), None without TOTP."""
    admin, account = found.admin, found.account
    assert admin is not None and account is not None
    check_new_password(password, again)
    if admin.totp_secret is None:
        return None
    try:
        # A code is a credential: guesses count against the sign-in limits of the login.
        enforce(limiter, *login_limits(ports, ip, account.slug, admin.login))
    except CertvaultError as exc:
        _refuse(ports, found, ip, exc.code)
        raise
    secret = open_secret(ports, admin.id, admin.totp_secret)
    step = matching_step(secret, code.strip(), ports.clock())
    if step is None:
        _refuse(ports, found, ip, "bad_totp")
        raise CodeInvalid()
    return step


def check_new_password(password: str, again: str) -> None:
    """The policy of administrator passwords, as create_admin has it; never echoes them."""
    if password != again:
        raise PasswordsDiffer()
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD or not is_text(password):
        raise PasswordTooWeak()


def _changed_mail(account: Account, admin: Admin) -> str:
    return (
        f"The password of your administrator login {admin.login} at {account.name} was just "
        "set with a link mailed to you. Your console sessions were ended.\n\n"
        "If this was not you, tell your account administrators at once.\n"
    )


def set_password(
    ports: Ports,
    limiter: RateLimiter,
    token: str,
    password: str,
    again: str,
    code: str,
    ip: str,
) -> str:
    """Use the link up: the new password replaces the old one, the administrator's sessions end.
    Where TOTP is set up a current code is needed; a wrong one leaves the link as it was.
    Returns the administrator's login."""
    found = _checked(ports, limiter, token, ip)
    row, admin, account = found.row, found.admin, found.account
    assert row is not None and admin is not None and account is not None
    try:
        step = _proven(ports, limiter, found, password, again, code, ip)
    except LinkKept as exc:
        exc.link = _view(found)
        raise
    new_hash = hash_password(ports, password)

    def work(session: Session) -> str | None:
        live = session.scalars(
            select(PasswordReset).where(PasswordReset.id == row.id).with_for_update()
        ).first()
        target = session.get(Admin, admin.id)
        now = ports.clock()
        why = _why_not(live, target, now)
        if why is not None:
            return why  # used or replaced meanwhile
        assert live is not None and target is not None
        if target.totp_secret != admin.totp_secret:
            return "totp_changed"
        # A code is good once, here and at sign-in alike.
        if step is not None and not claim_step(session, target.id, step):
            return "totp_replayed"
        target.password_hash = new_hash
        live.used_at = now
        ended = revoke_live(session, ports, WebSession, target)
        acct = session.get_one(Account, account.id)
        audit.record(
            session,
            ports,
            account=acct,
            actor=actor_for(target, ip),
            action=SET,
            target_type="admin",
            target_id=target.id,
            details={
                "login": target.login,
                "reset": live.uuid,
                "requested_by": live.requested_by,
                "sessions_ended": ended,
            },
        )
        if target.email:
            notify.queue_mail(
                session, acct, target.email, CHANGED_SUBJECT, _changed_mail(acct, target)
            )
        return None

    why = ports.db.run(work)
    if why is not None:
        _refuse(ports, found, ip, why)
        if why == "totp_replayed":
            kept = CodeInvalid(
                "This code was used already; wait for the next one. This link still works."
            )
            kept.link = _view(found)
            raise kept
        raise LinkInvalid()
    return admin.login
