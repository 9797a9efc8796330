"""Console sign-in: password (argon2) and TOTP (RFC 6238), server-side sessions.

The cookie holds a random token; the database keeps only its SHA-256, so a copy of the table
cannot be replayed as cookies. Guesses are rate limited before argon2 runs, every sign-in and
every refusal is audited (never the password or the code), and each sign-in makes a new session.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from certvault.db.models import Account, Admin, WebSession
from certvault.errors import CertvaultError
from certvault.services.access.admins import actor_for, signing_in
from certvault.services.access.tokens import Unauthenticated
from certvault.services.access.totp import (
    matching_step,
    open_secret,
    provisioning_uri,
    seal_secret,
)
from certvault.services.audit import log as audit
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.passwords import PasswordChecksBusy, verify_password
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import Limit, RateLimiter, enforce
from certvault.services.kernel.seal_events import UNBOUND_ONLY

SESSION_COOKIE = "__Host-certvault_session"
IDLE_TIMEOUT = timedelta(minutes=30)
ABSOLUTE_TIMEOUT = timedelta(hours=12)
# The TOTP enrollment step between a correct password and a confirmed first code.
ENROLL_TIMEOUT = timedelta(minutes=10)
STAGE_ENROLL = "totp_enroll"
STAGE_SIGNED_IN = "signed_in"
_SECRET_BYTES = 20  # 160 bits, as RFC 4226 recommends for HMAC-SHA-1
_MAX_FIELD = 1024


class SignInFailed(Unauthenticated):
    """The account, login, password or code is not right."""

    code = "sign_in_failed"


class SessionInvalid(Unauthenticated):
    """Please sign in."""

    code = "session_invalid"


class _Refused(Exception):
    """A refusal reason to audit before answering the one generic message."""

    def __init__(self, reason: str, account_id: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.account_id = account_id


@dataclass(frozen=True)
class SignedIn:
    token: str  # for the cookie only; never stored
    stage: str


@dataclass(frozen=True)
class ConsoleSession:
    session_id: str
    stage: str
    account_id: int
    account_slug: str
    account_name: str
    admin_id: int
    login: str
    actor: Actor


def session_id_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- sign-in --------------------------------------------------------------------------------


def _anonymous(login: str, ip: str) -> Actor:
    return Actor(name=f"web-login:{login[:100]}", kind="anonymous", ip=ip)


def _refuse(ports: Ports, login: str, ip: str, reason: str, account_id: int | None) -> None:
    audit.record_refusal(
        ports,
        account_id=account_id,
        actor=_anonymous(login, ip),
        action="admin.sign_in",
        reason_code=reason,
        details={"method": "console"},
    )


def _new_session(
    session: Session, ports: Ports, admin: Admin, stage: str, pending: str | None = None
) -> str:
    token = secrets.token_urlsafe(32)
    now = ports.clock()
    session.add(
        WebSession(
            id=session_id_of(token),
            account_id=admin.account_id,
            admin_id=admin.id,
            stage=stage,
            pending_totp=pending,
            created_at=now,
            last_seen_at=now,
            # A sign-in is not a re-authentication: a download (or a grant of a privilege that
            # releases keys) right after it asks for the password and a fresh code again.
            reauthenticated_at=None,
        )
    )
    return token


def _revoke_token(session: Session, ports: Ports, token: str | None) -> None:
    if token and len(token) <= _MAX_FIELD:
        row = session.get(WebSession, session_id_of(token))
        if row is not None and row.revoked_at is None:
            row.revoked_at = ports.clock()


def sign_in(
    ports: Ports,
    limiter: RateLimiter,
    *,
    account_slug: str,
    login: str,
    password: str,
    code: str,
    ip: str,
    previous_token: str | None = None,
) -> SignedIn:
    """Check the password, then the code; a new session on success (the previous one revoked).

    An administrator without TOTP gets an enrollment session instead, good only for enrolling.
    """
    fields = (account_slug, login, password, code)
    if not account_slug or not login or not password or any(len(f) > _MAX_FIELD for f in fields):
        _refuse(ports, login, ip, "bad_request", None)
        raise SignInFailed()
    try:
        # Before argon2: a guess over the limit costs neither a hash nor a database lookup.
        enforce(limiter, *login_limits(ports, ip, account_slug, login))
    except CertvaultError as exc:
        _refuse(ports, login, ip, exc.code, None)
        raise
    try:
        return _sign_in(ports, account_slug, login, password, code, ip, previous_token)
    except _Refused as refused:
        _refuse(ports, login, ip, refused.reason, refused.account_id)
        raise SignInFailed() from None
    except PasswordChecksBusy as exc:
        _refuse(ports, login, ip, exc.code, None)
        raise


def _sign_in(
    ports: Ports,
    account_slug: str,
    login: str,
    password: str,
    code: str,
    ip: str,
    previous_token: str | None,
) -> SignedIn:
    with ports.db.read() as session:
        account, admin = signing_in(session, account_slug, login)
        # Built while the session is open: the actor reads the admin's organizations.
        actor = actor_for(admin, ip) if admin is not None else None
    account_id = account.id if account is not None else None
    # The dummy check runs when there is no such admin, so timing does not tell logins apart.
    if not verify_password(ports, admin.password_hash if admin else None, password):
        raise _Refused("bad_credentials", account_id)
    assert admin is not None and account is not None and actor is not None
    if not admin.active:
        raise _Refused("inactive", account_id)
    if admin.api_only:
        raise _Refused("api_only", account_id)

    if admin.totp_secret is None:
        pending = seal_secret(ports, admin.id, secrets.token_bytes(_SECRET_BYTES))

        def enroll(session: Session) -> str:
            _revoke_token(session, ports, previous_token)
            token = _new_session(session, ports, admin, STAGE_ENROLL, pending)
            audit.record(
                session,
                ports,
                account=session.get(Account, account.id),
                actor=actor,
                action="admin.totp_enroll_start",
                target_type="admin",
                target_id=admin.id,
            )
            return token

        return SignedIn(ports.db.run(enroll), STAGE_ENROLL)

    step = matching_step(open_secret(ports, admin.id, admin.totp_secret), code, ports.clock())
    if step is None:
        raise _Refused("bad_totp", account_id)

    def complete(session: Session) -> str | None:
        if not claim_step(session, admin.id, step):
            return None
        _revoke_token(session, ports, previous_token)
        token = _new_session(session, ports, admin, STAGE_SIGNED_IN)
        audit.record(
            session,
            ports,
            account=session.get(Account, account.id),
            actor=actor,
            action="admin.sign_in",
            target_type="admin",
            target_id=admin.id,
            details={"method": "console"},
        )
        return token

    token = ports.db.run(complete)
    if token is None:
        raise _Refused("totp_replayed", account_id)
    return SignedIn(token, STAGE_SIGNED_IN)


def claim_step(session: Session, admin_id: int, step: int) -> bool:
    """Mark ``step`` used; False when it (or a later one) was used already. One statement, so two
    requests racing with the same code cannot both win."""
    result = session.execute(
        update(Admin)
        .where(
            Admin.id == admin_id,
            or_(Admin.totp_last_step.is_(None), Admin.totp_last_step < step),
        )
        .values(totp_last_step=step)
        .execution_options(**{UNBOUND_ONLY: True})  # the seal does not bind totp_last_step
    )
    return bool(getattr(result, "rowcount", 0))


# --- sessions -------------------------------------------------------------------------------


def current(ports: Ports, token: str | None, stage: str = STAGE_SIGNED_IN) -> ConsoleSession:
    """The live session of ``token`` at ``stage``; an expired one is revoked on the way."""
    if not token or len(token) > _MAX_FIELD:
        raise SessionInvalid()
    sid = session_id_of(token)
    now = ports.clock()

    def work(session: Session) -> ConsoleSession | None:
        row = session.get(WebSession, sid)
        if row is None or row.revoked_at is not None or row.stage != stage:
            return None
        admin = session.get(Admin, row.admin_id)
        lifetime = ENROLL_TIMEOUT if stage == STAGE_ENROLL else ABSOLUTE_TIMEOUT
        if (
            now - row.last_seen_at > IDLE_TIMEOUT
            or now - row.created_at > lifetime
            or admin is None
            or admin.account_id != row.account_id
            or not admin.active
            or admin.api_only
        ):
            row.revoked_at = now
            return None
        row.last_seen_at = now
        account = session.get(Account, row.account_id)
        assert account is not None
        return ConsoleSession(
            session_id=sid,
            stage=row.stage,
            account_id=account.id,
            account_slug=account.slug,
            account_name=account.name,
            admin_id=admin.id,
            login=admin.login,
            actor=actor_for(admin),
        )

    found = ports.db.run(work)
    if found is None:
        raise SessionInvalid()
    return found


def sign_out(ports: Ports, token: str | None, ip: str) -> None:
    """Revoke the session of ``token``, whatever its state; audited when it was live."""
    if not token or len(token) > _MAX_FIELD:
        return

    def work(session: Session) -> None:
        row = session.get(WebSession, session_id_of(token))
        if row is None or row.revoked_at is not None:
            return
        row.revoked_at = ports.clock()
        admin = session.get(Admin, row.admin_id)
        if admin is not None:
            audit.record(
                session,
                ports,
                account=session.get(Account, row.account_id),
                actor=actor_for(admin, ip),
                action="admin.sign_out",
                target_type="admin",
                target_id=admin.id,
            )

    ports.db.run(work)


# --- TOTP enrollment ------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingTotp:
    secret: bytes  # shown to the administrator being enrolled, never logged
    uri: str
    login: str
    account_name: str


def pending_totp(ports: Ports, token: str | None) -> PendingTotp:
    return _pending(ports, token)[1]


def _pending(ports: Ports, token: str | None) -> tuple[ConsoleSession, PendingTotp]:
    console = current(ports, token, STAGE_ENROLL)
    with ports.db.read() as session:
        row = session.get(WebSession, console.session_id)
        assert row is not None and row.pending_totp is not None
        sealed = row.pending_totp
    secret = open_secret(ports, console.admin_id, sealed)
    uri = provisioning_uri(secret, console.account_slug, console.login)
    return console, PendingTotp(secret, uri, console.login, console.account_name)


def confirm_totp(ports: Ports, token: str | None, code: str, ip: str) -> SignedIn:
    """Store the pending secret once a first code from it checks out; then a signed-in session
    with a new id replaces the enrollment one."""
    console, pending = _pending(ports, token)
    step = matching_step(pending.secret, code, ports.clock())
    actor = actor_for_id(ports, console.admin_id, ip)
    if step is None:
        audit.record_refusal(
            ports,
            account_id=console.account_id,
            actor=actor,
            action="admin.totp_enroll",
            reason_code="bad_totp",
            target_type="admin",
            target_id=console.admin_id,
        )
        raise SignInFailed("The code is not right; check the clock of your device.")
    sealed = seal_secret(ports, console.admin_id, pending.secret)

    def work(session: Session) -> str:
        admin = session.get(Admin, console.admin_id)
        assert admin is not None
        if admin.totp_secret is not None:
            raise SessionInvalid()
        admin.totp_secret = sealed
        admin.totp_last_step = step
        _revoke_token(session, ports, token)
        new_token = _new_session(session, ports, admin, STAGE_SIGNED_IN)
        account = session.get(Account, admin.account_id)
        for action in ("admin.totp_enroll", "admin.sign_in"):
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action=action,
                target_type="admin",
                target_id=admin.id,
                details={"method": "console"},
            )
        return new_token

    return SignedIn(ports.db.run(work), STAGE_SIGNED_IN)


def actor_for_id(ports: Ports, admin_id: int, ip: str) -> Actor:
    with ports.db.read() as session:
        admin = session.get(Admin, admin_id)
        assert admin is not None
        return actor_for(admin, ip)


# --- re-authentication ----------------------------------------------------------------------

# A session that confirmed its password and code this recently is not asked again.
REAUTH_WINDOW = timedelta(minutes=5)
REAUTHENTICATE = "admin.reauthenticate"


class ReauthenticationFailed(Unauthenticated):
    """The password or the authenticator code is not right."""

    code = "reauthentication_failed"


def login_limits(ports: Ports, ip: str, account_slug: str, login: str) -> tuple[Limit, Limit]:
    """Password guesses count against the same limits at sign-in and at re-authentication."""
    s = ports.settings
    return (
        Limit(f"web-login-ip:{ip}", s.logins_per_minute_ip, 60),
        Limit(f"web-login:{account_slug}:{login}", s.logins_per_minute_login, 60),
    )


def reauthenticated_recently(ports: Ports, session_id: str) -> bool:
    """Whether the session confirmed its password and code within REAUTH_WINDOW."""
    with ports.db.read() as session:
        row = session.get(WebSession, session_id)
        at = row.reauthenticated_at if row is not None else None
    return at is not None and ports.clock() - at <= REAUTH_WINDOW


def reauthenticate(
    ports: Ports, limiter: RateLimiter, session_id: str, password: str, code: str, ip: str
) -> None:
    """Confirm the signed-in administrator's password and a fresh TOTP code before a sensitive
    action; rate limited and audited like a sign-in (never the password or the code)."""
    with ports.db.read() as session:
        row = session.get(WebSession, session_id)
        if row is None or row.revoked_at is not None or row.stage != STAGE_SIGNED_IN:
            raise SessionInvalid()
        admin = session.get(Admin, row.admin_id)
        account = session.get(Account, row.account_id)
        assert admin is not None and account is not None
        actor = actor_for(admin, ip)

    def refuse(reason: str) -> None:
        audit.record_refusal(
            ports,
            account_id=account.id,
            actor=actor,
            action=REAUTHENTICATE,
            reason_code=reason,
            target_type="admin",
            target_id=admin.id,
        )

    if not password or not code or len(password) > _MAX_FIELD or len(code) > _MAX_FIELD:
        refuse("bad_request")
        raise ReauthenticationFailed("Enter your password and a code from your authenticator.")
    try:
        # Before argon2, as at sign-in: a guess over the limit costs no hash.
        enforce(limiter, *login_limits(ports, ip, account.slug, admin.login))
    except CertvaultError as exc:
        refuse(exc.code)
        raise
    try:
        matches = verify_password(ports, admin.password_hash, password)
    except PasswordChecksBusy as exc:
        refuse(exc.code)
        raise
    if not matches:
        refuse("bad_credentials")
        raise ReauthenticationFailed()
    secret = open_secret(ports, admin.id, admin.totp_secret) if admin.totp_secret else None
    step = matching_step(secret, code, ports.clock()) if secret is not None else None
    if step is None:
        refuse("bad_totp")
        raise ReauthenticationFailed()

    def confirm(session: Session) -> bool:
        # A code is good once, at sign-in and here alike.
        if not claim_step(session, admin.id, step):
            return False
        live = session.get(WebSession, session_id)
        if live is None or live.revoked_at is not None:
            raise SessionInvalid()
        live.reauthenticated_at = ports.clock()
        audit.record(
            session,
            ports,
            account=session.get(Account, account.id),
            actor=actor,
            action=REAUTHENTICATE,
            target_type="admin",
            target_id=admin.id,
        )
        return True

    if not ports.db.run(confirm):
        refuse("totp_replayed")
        raise ReauthenticationFailed("This code was used already; wait for the next one.")
