"""API tokens: shown once, stored as a hash, scoped, expiring, revocable, revoked with their
administrator."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from certvault.db.models import Account, Admin, ApiToken
from certvault.errors import CertvaultError, InvalidInput, NotFound
from certvault.services.access.admins import actor_for
from certvault.services.audit import log as audit
from certvault.services.kernel.actors import Actor, Scope
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account

PREFIX = "cvt_"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one write per token and minute


class Unauthenticated(CertvaultError):
    """Authentication is required, or the credentials are not valid."""

    code = "unauthenticated"
    status = 401


def token_digest(token: str) -> str:
    # Tokens carry 256 random bits: a fast hash is enough, and lets the lookup be an index seek.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedToken:
    token: str  # shown once
    token_id: int
    scopes: list[str]


def create_token(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    login: str,
    *,
    scopes: Sequence[str] = (),
    expires_days: int | None = 90,
) -> CreatedToken:
    if expires_days is not None and not 1 <= expires_days <= 3650:
        raise InvalidInput("A token expires after 1 to 3650 days.")
    token = PREFIX + secrets.token_urlsafe(32)

    def work(session: Session) -> CreatedToken:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        admin = session.scalars(
            select(Admin).where(Admin.account_id == account.id, Admin.login == login)
        ).first()
        if admin is None or not admin.active:
            raise NotFound("Administrator not found.")
        allowed = actor_for(admin).allowed_scopes()
        try:
            wanted = frozenset(Scope(s) for s in scopes) if scopes else allowed
        except ValueError:
            raise InvalidInput(
                "Unknown scope. Scopes: " + ", ".join(s.value for s in Scope) + "."
            ) from None
        if not wanted <= allowed:
            missing = ", ".join(sorted(s.value for s in wanted - allowed))
            raise InvalidInput(f"The administrator's privileges do not back the scopes: {missing}.")
        now = ports.clock()
        row = ApiToken(
            account_id=account.id,
            admin_id=admin.id,
            token_sha256=token_digest(token),
            prefix=token[:12],
            scopes=" ".join(sorted(s.value for s in wanted)),
            created_at=now,
            expires_at=now + timedelta(days=expires_days) if expires_days else None,
        )
        session.add(row)
        session.flush()
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="token.create",
            target_type="token",
            target_id=row.id,
            details={
                "admin": admin.login,
                "scopes": row.scopes.split(),
                "expires_at": row.expires_at.isoformat() if row.expires_at else None,
            },
        )
        return CreatedToken(token, row.id, row.scopes.split())

    return ports.db.run(work)


# Built once: it runs before every API request.
_HOLDER = (
    select(ApiToken, Admin, Account)
    .join(Admin, Admin.id == ApiToken.admin_id)
    .join(Account, Account.id == Admin.account_id)
    .where(ApiToken.token_sha256 == bindparam("digest"))
)


def authenticate(ports: Ports, token: str, ip: str = "") -> tuple[Actor, Account]:
    """The actor a bearer token stands for, and its account.

    The account row comes back detached, its seal checked as it loaded: a request's
    transaction adopts it (tenancy.adopt_account) instead of reading it again.
    """
    if not token.startswith(PREFIX) or len(token) > 200:
        raise Unauthenticated()
    digest = token_digest(token)
    now = ports.clock()
    with ports.db.lookup() as session:
        # One statement for token, administrator and account (all three sealed rows, checked
        # as they load): this runs before every API request.
        found = session.execute(_HOLDER, {"digest": digest}).first()
        # compare_digest keeps the final check constant-time even though the lookup is indexed.
        if found is None or not hmac.compare_digest(found[0].token_sha256, digest):
            raise Unauthenticated()
        row, admin, account = found
        if (
            row.revoked_at is not None
            or (row.expires_at is not None and row.expires_at <= now)
            or admin is None
            or not admin.active
        ):
            raise Unauthenticated()
        actor = actor_for(admin, ip=ip)
        scopes = frozenset(Scope(s) for s in row.scopes.split()) & actor.allowed_scopes()
        needs_touch = row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION
    if needs_touch:

        def touch(s: Session) -> None:
            current = s.get(ApiToken, row.id)
            if current is not None:
                current.last_used_at = now

        ports.db.run(touch)
    return _with_scopes(actor, scopes, row.id), account


def _with_scopes(actor: Actor, scopes: frozenset[Scope], token_id: int) -> Actor:
    return replace(actor, scopes=scopes, token_id=token_id, name=f"{actor.name} (token {token_id})")


def revoke_token(ports: Ports, actor: Actor, account_slug: str, token_id: int) -> None:
    def work(session: Session) -> None:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        row = session.get(ApiToken, token_id)
        if row is None or row.account_id != account.id:
            raise NotFound("Token not found.")
        if row.revoked_at is None:
            row.revoked_at = ports.clock()
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action="token.revoke",
                target_type="token",
                target_id=row.id,
            )

    ports.db.run(work)


def list_tokens(ports: Ports, actor: Actor, account_slug: str) -> list[tuple[ApiToken, str]]:
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        rows = session.execute(
            select(ApiToken, Admin.login)
            .join(Admin, Admin.id == ApiToken.admin_id)
            .where(ApiToken.account_id == account.id)
            .order_by(ApiToken.id)
        ).all()
        return [(t, login) for t, login in rows]
