"""The set-password link of a password reset (password_resets.py), used by the administrator.

Opening the link only shows the form (a mail scanner that opens links must not spend it). Using
it takes the new password twice and, where TOTP is set up, a current code: the mailbox alone does
not take the account. A wrong code or a bad password leaves the link working. The new password
ends the administrator's console sessions; every use and every refused link is audited (never
the token, the password or the code), and tries are rate limited per client address.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db.models import Account, Admin, PasswordReset, WebSession
from certvault.errors import CertvaultError, Conflict, InvalidInput
from certvault.services.access.admins import MIN_PASSWORD, actor_for, revoke_live
from certvault.services.access.tokens import token_digest
from certvault.services.access.totp import matching_step, open_secret
from certvault.services.access.web_sessions import claim_step, login_limits
from certvault.services.audit import log as audit
from certvault.services.kernel import notify
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.passwords import hash_password, is_text
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import Limit, RateLimiter, enforce

SET = "admin.password_set"
LINK = "admin.password_link"  # a refused use of a link
CHANGED_SUBJECT = "Your certvault password was changed"
MAX_PASSWORD = 1024
HOUR = 3600
# secrets.token_urlsafe(32): 43 characters. Anything far from that is not looked up.
_TOKEN_LENGTHS = range(32, 65)


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
class LinkView:
    """What the set-password page shows about a good link."""

    account_name: str
    login: str
    asks_code: bool  # TOTP is set up: the page asks for a current code
    expires_at: datetime


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
        # Whoever holds a link is not yet known to be its administrator: the audit log does not
        # put a refused attempt in their name.
        actor=_stranger(ip),
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
