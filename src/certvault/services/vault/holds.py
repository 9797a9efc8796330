"""Legal holds: while one is active on a person or a certificate, no key it covers is destroyed,
neither by a retention run nor by `certvault account destroy-keys` (which refuses while any hold
of the account is active).

A key is held if any certificate using it is held, or belongs to a held person. Holds are sealed
rows (seals.py): one put in, altered or released by SQL is refused, and `certvault verify` names
it. They are set and released by the operator (the CLI); the console shows them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db.models import Account, Certificate, LegalHold, Person
from certvault.errors import CertvaultError, Forbidden, InvalidInput, NotFound
from certvault.services.audit import log as audit
from certvault.services.directory import persons
from certvault.services.kernel.actors import Actor, Scope
from certvault.services.kernel.duties import database_now
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account

MAX_REASON = 500


class LegalHoldActive(CertvaultError):
    """A legal hold is active in this account; nothing was destroyed."""

    code = "legal_hold_active"
    status = 409


class HoldReleased(CertvaultError):
    """This legal hold was released already."""

    code = "hold_released"
    status = 409


@dataclass(frozen=True)
class HoldView:
    id: int
    uuid: str
    person_id: int | None
    person_email: str | None
    certificate_id: int | None
    reason: str
    created_by: str
    created_at: datetime
    released_at: datetime | None
    released_by: str | None
    release_reason: str | None

    @property
    def active(self) -> bool:
        return self.released_at is None

    @property
    def target(self) -> str:
        if self.certificate_id is not None:
            return f"certificate {self.certificate_id}"
        return f"person {self.person_email}"


def require_operator(actor: Actor) -> None:
    """Retention policies and holds are the operator's: set from the CLI."""
    if not actor.is_operator:
        raise Forbidden("Retention policies and legal holds are set by the operator (CLI).")


def check_reason(reason: str | None) -> str:
    """A reason as given, or a clear refusal: required, printable, at most MAX_REASON."""
    text = (reason or "").strip()
    if not text:
        raise InvalidInput("A reason is required.")
    if len(text) > MAX_REASON:
        raise InvalidInput(f"A reason may have at most {MAX_REASON} characters.")
    if not text.isprintable():
        raise InvalidInput("A reason may not contain control characters.")
    return text


def _view(hold: LegalHold, emails: dict[int, str]) -> HoldView:
    return HoldView(
        hold.id,
        hold.uuid,
        hold.person_id,
        emails.get(hold.person_id) if hold.person_id is not None else None,
        hold.certificate_id,
        hold.reason,
        hold.created_by,
        hold.created_at,
        hold.released_at,
        hold.released_by,
        hold.release_reason,
    )


def _emails(session: Session, holds: Iterable[LegalHold]) -> dict[int, str]:
    ids = {h.person_id for h in holds if h.person_id is not None}
    if not ids:
        return {}
    return dict(session.execute(select(Person.id, Person.email).where(Person.id.in_(ids))).all())


def lock_account(session: Session, account: Account) -> None:
    """Serialize with every other change of holds and destruction in the account: a hold added
    while a batch is being destroyed is either seen by it or added after it."""
    session.execute(select(Account.id).where(Account.id == account.id).with_for_update())


def add_hold(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    *,
    reason: str,
    person_email: str | None = None,
    certificate_id: int | None = None,
) -> HoldView:
    """Put a legal hold on a person's keys or on one certificate's key."""
    require_operator(actor)
    if (person_email is None) == (certificate_id is None):
        raise InvalidInput("Name either a person (email) or a certificate (id).")
    text = check_reason(reason)
    email = persons.normalize_email(person_email) if person_email is not None else None

    def work(session: Session) -> HoldView:
        account = get_account(session, account_slug)
        lock_account(session, account)
        hold = LegalHold(
            account_id=account.id,
            reason=text,
            created_by=actor.name[:320],
            created_at=database_now(session),
        )
        if email is not None:
            person = session.scalars(
                select(Person).where(Person.account_id == account.id, Person.email == email)
            ).first()
            if person is None:
                raise NotFound("Person not found.")
            hold.person_id = person.id
        else:
            cert = session.scalars(
                select(Certificate).where(
                    Certificate.account_id == account.id, Certificate.id == certificate_id
                )
            ).first()
            if cert is None:
                raise NotFound("Certificate not found.")
            hold.certificate_id = cert.id
        session.add(hold)
        session.flush()
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="hold.add",
            target_type="legal_hold",
            target_id=hold.uuid,
            details={
                "hold_id": hold.id,
                "person": email,
                "certificate_id": hold.certificate_id,
                "reason": text,
            },
        )
        return _view(hold, {hold.person_id: email} if hold.person_id and email else {})

    return ports.db.run(work)


def release_hold(
    ports: Ports, actor: Actor, account_slug: str, hold_id: int, *, reason: str
) -> HoldView:
    """Release a legal hold: its keys follow the retention policy again."""
    require_operator(actor)
    text = check_reason(reason)

    def work(session: Session) -> HoldView:
        account = get_account(session, account_slug)
        lock_account(session, account)
        hold = session.scalars(
            select(LegalHold).where(LegalHold.account_id == account.id, LegalHold.id == hold_id)
        ).first()
        if hold is None:
            raise NotFound("Legal hold not found.")
        if hold.released_at is not None:
            raise HoldReleased()
        hold.released_at = database_now(session)
        hold.released_by = actor.name[:320]
        hold.release_reason = text
        session.flush()
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="hold.release",
            target_type="legal_hold",
            target_id=hold.uuid,
            details={"hold_id": hold.id, "reason": text},
        )
        return _view(hold, _emails(session, [hold]))

    return ports.db.run(work)


def list_holds(
    ports: Ports, actor: Actor, account_slug: str, *, active_only: bool = False
) -> list[HoldView]:
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        query = select(LegalHold).where(LegalHold.account_id == account.id)
        if active_only:
            query = query.where(LegalHold.released_at.is_(None))
        found = list(session.scalars(query.order_by(LegalHold.id)))
        emails = _emails(session, found)
        return [_view(h, emails) for h in found]


def _all_holds(session: Session, account: Account) -> list[LegalHold]:
    # Every hold of the account, released ones too, loaded as sealed rows: one released by SQL
    # fails its check here (fail closed) instead of quietly dropping out of a query.
    return list(
        session.scalars(
            select(LegalHold).where(LegalHold.account_id == account.id).order_by(LegalHold.id)
        )
    )


def count_active(session: Session, account: Account) -> int:
    return sum(1 for h in _all_holds(session, account) if h.released_at is None)


@dataclass(frozen=True)
class ActiveHolds:
    """The active holds of an account, by what they cover."""

    person_ids: frozenset[int]
    certificate_ids: frozenset[int]

    def covers(self, certificate_id: int, person_id: int | None) -> bool:
        return certificate_id in self.certificate_ids or (
            person_id is not None and person_id in self.person_ids
        )


def active_holds(session: Session, account: Account) -> ActiveHolds:
    """Read as sealed rows: a hold that does not verify stops the caller (fail closed)."""
    found = [h for h in _all_holds(session, account) if h.released_at is None]
    return ActiveHolds(
        frozenset(h.person_id for h in found if h.person_id is not None),
        frozenset(h.certificate_id for h in found if h.certificate_id is not None),
    )


def holds_covering(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    *,
    person_id: int | None,
    certificate_ids: list[int],
) -> list[HoldView]:
    """The active holds on a person, or on any of ``certificate_ids`` (the console's pages)."""
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        return _holds_covering(session, account, person_id, certificate_ids)


def _holds_covering(
    session: Session, account: Account, person_id: int | None, certificate_ids: list[int]
) -> list[HoldView]:
    found = [
        h
        for h in _all_holds(session, account)
        if h.released_at is None
        and (
            (person_id is not None and h.person_id == person_id)
            or (h.certificate_id is not None and h.certificate_id in certificate_ids)
        )
    ]
    emails = _emails(session, found)
    return [_view(h, emails) for h in found]
