"""One-use tokens of console forms (a key download): a form is good once, for ten minutes, in
the session and for the target it was shown for.

The browser gets a random token; the database keeps only its SHA-256. What the form must carry
from showing to posting (the passphrase certvault generated and showed) is sealed under a service
key, bound to the token's id, and cleared when the form is used.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from certvault.db.models import FormNonce
from certvault.errors import Conflict
from certvault.services.audit import log as audit
from certvault.services.kernel import held
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports

FORM_LIFETIME = timedelta(minutes=10)
# Old rows are swept when a form is issued; kept a while so that a late submission is told
# "too old" or "already used" rather than "not valid".
KEEP = timedelta(days=1)
SEAL_PURPOSE = "console-form"
_MAX_TOKEN = 64


class FormReused(Conflict):
    """This download form was already used; open it again."""

    code = "form_reused"


class FormExpired(Conflict):
    """This download form is more than 10 minutes old; open it again."""

    code = "form_expired"


class FormInvalid(Conflict):
    """This download form does not belong to this page or to this sign-in; open it again."""

    code = "form_invalid"


def nonce_id_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _seal(ports: Ports, nonce_id: str, secret: str) -> str:
    return held.seal(ports, SEAL_PURPOSE, nonce_id, secret)


def _open(ports: Ports, nonce_id: str, text: str) -> str:
    return held.open_held(ports, SEAL_PURPOSE, nonce_id, text)


def issue(ports: Ports, session_id: str, purpose: str, secret: str | None = None) -> str:
    """A new one-use token for a form of ``purpose`` shown in ``session_id``; ``secret`` (if
    any) is kept sealed until the form is used."""
    token = secrets.token_urlsafe(32)
    nonce_id = nonce_id_of(token)
    sealed = _seal(ports, nonce_id, secret) if secret is not None else None

    def work(session: Session) -> None:
        session.execute(delete(FormNonce).where(FormNonce.created_at < ports.clock() - KEEP))
        session.add(
            FormNonce(
                id=nonce_id,
                session_id=session_id,
                purpose=purpose,
                sealed=sealed,
                created_at=ports.clock(),
            )
        )

    ports.db.run(work)
    return token


def _checked(
    session: Session, ports: Ports, session_id: str, purpose: str, token: str
) -> FormNonce:
    row = session.get(FormNonce, nonce_id_of(token)) if 20 <= len(token) <= _MAX_TOKEN else None
    if row is None or row.session_id != session_id or row.purpose != purpose:
        raise FormInvalid()
    if row.used_at is not None:
        raise FormReused()
    if ports.clock() - row.created_at > FORM_LIFETIME:
        raise FormExpired()
    return row


@dataclass(frozen=True)
class AuditAs:
    """A refused form is audited as a refusal of what the form was for."""

    actor: Actor
    action: str
    target_type: str
    target_id: str | int
    details: Mapping[str, Any] = field(default_factory=dict)


def refusals_audited(ports: Ports, audit_as: AuditAs) -> AbstractContextManager[None]:
    """Audit any certvault error raised in the block as a refusal of ``audit_as``."""
    return audit.refusals_audited(
        ports,
        account_id=audit_as.actor.account_id,
        actor=audit_as.actor,
        action=audit_as.action,
        target_type=audit_as.target_type,
        target_id=audit_as.target_id,
        details=audit_as.details,
    )


def check(ports: Ports, session_id: str, purpose: str, token: str, audit_as: AuditAs) -> None:
    """Refuse a token that is not (or no longer) good, without using it up."""
    with refusals_audited(ports, audit_as), ports.db.read() as session:
        _checked(session, ports, session_id, purpose, token)


def held_passphrase(ports: Ports, session_id: str, purpose: str, token: str) -> held.HeldPassphrase:
    """The passphrase a good form holds, opened without using the form up, to show it again
    when the form comes back with an error. One that no longer opens is replaced by a new one,
    kept in its place (``renewed``): the form never releases under a passphrase not shown."""
    with ports.db.read() as session:
        sealed = _checked(session, ports, session_id, purpose, token).sealed
    nonce_id = nonce_id_of(token)
    kept = held.held_passphrase(ports, SEAL_PURPOSE, nonce_id, sealed)
    if kept.sealed == sealed:
        return kept

    def keep(session: Session) -> None:
        # Only over what was read: a form used (or renewed) meanwhile is not changed.
        result = session.execute(
            update(FormNonce)
            .where(
                FormNonce.id == nonce_id,
                FormNonce.used_at.is_(None),
                FormNonce.sealed == sealed if sealed is not None else FormNonce.sealed.is_(None),
            )
            .values(sealed=kept.sealed)
        )
        if not getattr(result, "rowcount", 0):
            raise FormReused()

    ports.db.run(keep)
    return kept


def consume(
    ports: Ports, session_id: str, purpose: str, token: str, audit_as: AuditAs
) -> str | None:
    """Use the token up and return its opened secret. Of two submissions of one form exactly
    one gets here; the other is refused."""

    def work(session: Session) -> str | None:
        row = _checked(session, ports, session_id, purpose, token)
        sealed = row.sealed
        # One conditional statement: two requests racing with the same form cannot both win.
        result = session.execute(
            update(FormNonce)
            .where(FormNonce.id == row.id, FormNonce.used_at.is_(None))
            .values(used_at=ports.clock(), sealed=None)
        )
        if not getattr(result, "rowcount", 0):
            raise FormReused()
        return sealed

    with refusals_audited(ports, audit_as):
        sealed = ports.db.run(work)
    return _open(ports, nonce_id_of(token), sealed) if sealed is not None else None
