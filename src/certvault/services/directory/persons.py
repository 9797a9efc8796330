"""Persons (subscribers) inside an account; email unique per account, case-insensitive."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields, replace
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from certvault.crypto.text import safe_text
from certvault.db.models import Account, Certificate, Organization, Person
from certvault.errors import Conflict, Forbidden, InvalidInput, NotFound
from certvault.services.audit import log as audit
from certvault.services.kernel import notify
from certvault.services.kernel.actors import Actor, Privilege, Scope
from certvault.services.kernel.paging import (
    Ordering,
    Page,
    SortedPage,
    check_limit,
    count_rows,
    decode_cursor,
    ordering_named,
    page_of,
    sorted_page,
)
from certvault.services.kernel.passwords import hash_password, is_text
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import default_organization, get_account

# No white space and no control characters: a NUL alone fails a PostgreSQL transaction.
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,255}$")
VALIDATION_TYPES = ("STANDARD", "HIGH")
MAX_SEARCH = 200
MIN_SECRET_ID, MAX_SECRET_ID = 4, 128
UPDATE = "person.update"
SECRET_ID_SET = "person.secret_id_set"  # noqa: S105 - an audit action
SECRET_ID_CLEAR = "person.secret_id_clear"  # noqa: S105 - an audit action
EMAIL_CHANGED_SUBJECT = "Your email address in certvault was changed"
# A name a person gives at enrollment becomes the certificate's CN, which holds at most 64
# characters (RFC 5280 ub-common-name).
MAX_GIVEN_NAME = 64


class NameInvalid(InvalidInput):
    """A first or last name is too long or holds control or invisible formatting characters."""

    code = "name_invalid"


def given_name(value: str | None, label: str) -> str:
    """A first or last name as a person typed it, trimmed; "" when left empty.

    Refused rather than cleaned: a name with a bidi override or a control character shows
    something other than what it is, in the directory and in every program showing the CN."""
    text = (value or "").strip()
    if not text:
        return ""
    if len(text) > MAX_GIVEN_NAME:
        raise NameInvalid(f"The {label} may have at most {MAX_GIVEN_NAME} characters.")
    if safe_text(text) != text:
        raise NameInvalid(
            f"The {label} may not hold control characters or invisible formatting characters."
        )
    return text


def name_as_common_name(first_name: str, last_name: str) -> str | None:
    """The CN "First Last" (or the one name given); None when both are empty."""
    common_name = " ".join(part for part in (first_name, last_name) if part)
    if not common_name:
        return None
    if len(common_name) > MAX_GIVEN_NAME:
        raise NameInvalid(
            f"First and last name together may have at most {MAX_GIVEN_NAME - 1} characters."
        )
    return common_name


def common_name_for(person: Person | None, first_name: str, last_name: str) -> str | None:
    """The CN for names a person gave (already checked by :func:`given_name`): a name already on
    their record wins over the one typed, so that the certificate and the directory agree; None
    when no name was given. A record's name a CN cannot carry (too long, or with characters
    :func:`given_name` refuses) is passed over for the one typed."""
    if not (first_name or last_name):
        return None
    if person is not None:
        try:
            return name_as_common_name(
                given_name(person.first_name or first_name, "first name"),
                given_name(person.last_name or last_name, "last name"),
            )
        except NameInvalid:
            pass
    return name_as_common_name(first_name, last_name)


def fill_empty_names(person: Person, first_name: str, last_name: str) -> dict[str, Any]:
    """Give ``person`` the names they typed where their record has none; names already there
    (set by an administrator, a directory sync or an earlier enrollment) are kept.
    Returns {field: (old, new)} of what changed."""
    changed: dict[str, Any] = {}
    for name, value in (("first_name", first_name), ("last_name", last_name)):
        old = getattr(person, name)
        if value and not old:
            changed[name] = (old, value)
            setattr(person, name, value)
    return changed


def normalize_email(email: str) -> str:
    value = email.strip().lower()
    if not _EMAIL.match(value) or len(value) > 320:
        raise InvalidInput("Not a valid email address.")
    return value


def find_by_email(session: Session, account: Account, email: str) -> Person | None:
    return session.scalars(
        select(Person).where(
            Person.account_id == account.id, Person.email == normalize_email(email)
        )
    ).first()


def find_or_create(
    session: Session,
    account: Account,
    email: str,
    organization: Organization,
    details: PersonFields | None = None,
) -> tuple[Person, bool]:
    """The person with ``email``, or a new one in ``organization`` with ``details`` set."""
    person = find_by_email(session, account, email)
    if person is not None:
        return person, False
    person = Person(
        account_id=account.id, organization_id=organization.id, email=normalize_email(email)
    )
    if details is not None:
        _apply(session, account, person, replace(details, email=None, organization_id=None))
    session.add(person)
    session.flush()
    return person, True


# --- the API's use cases ----------------------------------------------------------------------


@dataclass(frozen=True)
class PersonFields:
    """Fields a caller may set; ``None`` leaves a field as it is."""

    email: str | None = None
    first_name: str | None = None
    middle_name: str | None = None
    last_name: str | None = None
    common_name: str | None = None
    phone: str | None = None
    secondary_emails: list[str] | None = None
    validation_type: str | None = None
    eppn: str | None = None
    upn: str | None = None
    organization_id: int | None = None

    def changes(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


_TEXT_LIMITS = {
    "first_name": 200,
    "middle_name": 200,
    "last_name": 200,
    "common_name": 200,
    "phone": 64,
    "eppn": 320,
    "upn": 320,
}


def _visible_query(actor: Actor, account: Account) -> Select[Person]:
    query = select(Person).where(Person.account_id == account.id)
    orgs = actor.visible_organizations()
    if orgs is not None:
        query = query.where(Person.organization_id.in_(orgs))
    return query


def _load(session: Session, actor: Actor, account: Account, person_id: int) -> Person:
    person = session.get(Person, person_id)
    if person is None or person.account_id != account.id:
        raise NotFound("Person not found.")
    actor.require_visible(account.id, person.organization_id, "Person")
    return person


def _organization(session: Session, account: Account, organization_id: int) -> Organization:
    org = session.get(Organization, organization_id)
    if org is None or org.account_id != account.id:
        raise NotFound("Organization not found.")
    return org


def _apply(
    session: Session, account: Account, person: Person, data: PersonFields
) -> dict[str, Any]:
    """Validate and apply ``data``; return {field: (old, new)} of what changed."""
    changed: dict[str, Any] = {}
    for name, value in data.changes().items():
        if name == "email":
            value = normalize_email(value)
        elif name == "secondary_emails":
            value = " ".join(normalize_email(v) for v in value)
        elif name == "validation_type":
            value = str(value).upper()
            if value not in VALIDATION_TYPES:
                raise InvalidInput("validationType must be STANDARD or HIGH.")
        elif name == "organization_id":
            _organization(session, account, int(value))
        else:
            value = str(value).strip()
            if len(value) > _TEXT_LIMITS[name]:
                raise InvalidInput(f"{name} may have at most {_TEXT_LIMITS[name]} characters.")
        old = getattr(person, name)
        if old != value:
            changed[name] = (old, value)
            setattr(person, name, value)
    return changed


def list_persons(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    *,
    email: str | None = None,
    name: str | None = None,
    organization_id: int | None = None,
    search: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    offset: int | None = None,
) -> Page[Person]:
    """Persons visible to ``actor``; ``search`` is part of a name or of the email, any case."""
    actor.require_scope(Scope.READ)
    limit = check_limit(limit)
    if search is not None and len(search) > MAX_SEARCH:
        raise InvalidInput(f"A search may have at most {MAX_SEARCH} characters.")
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        query = _visible_query(actor, account)
        if email:
            query = query.where(Person.email == email.strip().lower())
        if name:
            like = f"%{name.strip().lower()}%"
            query = query.where(
                or_(
                    func.lower(Person.first_name).like(like),
                    func.lower(Person.last_name).like(like),
                    func.lower(Person.common_name).like(like),
                )
            )
        if search and search.strip():
            query = query.where(_matches(search))
        if organization_id is not None:
            query = query.where(Person.organization_id == organization_id)
        if offset is not None:  # the SCM API pages by position
            query = query.order_by(Person.id).offset(max(offset, 0))
        else:
            query = query.where(Person.id > decode_cursor(cursor)).order_by(Person.id)
        return page_of(list(session.scalars(query.limit(limit + 1))), limit)


# The sorts the console offers; "-" sorts the other way round.
SORTS = {
    "added": Ordering("added", Person.id, Person.id, int),
    "-added": Ordering("-added", Person.id, Person.id, int, descending=True),
    "email": Ordering("email", Person.email, Person.id, str),
    "-email": Ordering("-email", Person.email, Person.id, str, descending=True),
}


def sorted_persons(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    search: str | None,
    sort: str,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> SortedPage[Person]:
    """A page of the persons ``actor`` sees, in one of SORTS, with Previous and Next."""
    actor.require_scope(Scope.READ)
    ordering = ordering_named(SORTS, sort)
    with ports.db.read() as session:
        query = _searched(session, actor, account_slug, search)
        return sorted_page(session, query, ordering, cursor, limit)


def count_persons(ports: Ports, actor: Actor, account_slug: str, search: str | None) -> int:
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        query = _searched(session, actor, account_slug, search).with_only_columns(Person.id)
        return count_rows(session, query)


def _searched(
    session: Session, actor: Actor, account_slug: str, search: str | None
) -> Select[Person]:
    if search is not None and len(search) > MAX_SEARCH:
        raise InvalidInput(f"A search may have at most {MAX_SEARCH} characters.")
    account = get_account(session, account_slug)
    actor.require_visible(account.id, None, "Account")
    query = _visible_query(actor, account)
    return query.where(_matches(search)) if search and search.strip() else query


def _matches(search: str) -> ColumnElement[bool]:
    # The search is text, not a pattern: its % and _ match themselves.
    text = search.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    like = f"%{text}%"
    columns = (
        Person.email,
        Person.first_name,
        Person.last_name,
        Person.common_name,
        Person.first_name + " " + Person.last_name,
    )
    return or_(*(func.lower(c).like(like, escape="\\") for c in columns))


def get_person(ports: Ports, actor: Actor, account_slug: str, person_id: int) -> Person:
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        return _load(session, actor, account, person_id)


def create_person(ports: Ports, actor: Actor, account_slug: str, data: PersonFields) -> Person:
    if data.email is None:
        raise InvalidInput("email is required.")

    def work(session: Session) -> Person:
        account = get_account(session, account_slug)
        org_id = data.organization_id or default_organization(session, account).id
        actor.require(Privilege.PERSONS_MANAGE, account.id, org_id)
        actor.require_scope(Scope.MANAGE)
        if find_by_email(session, account, data.email or "") is not None:
            raise Conflict("A person with this email exists in this account.")
        person = Person(account_id=account.id, organization_id=org_id, email="")
        _apply(session, account, person, data)
        person.organization_id = org_id
        session.add(person)
        session.flush()
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="person.create",
            target_type="person",
            target_id=person.id,
            details={"email": person.email, "organization_id": org_id},
        )
        return person

    return ports.db.run(work)


def update_person(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    person_id: int,
    data: PersonFields,
    *,
    active: bool | None = None,
) -> Person:
    """Change a person's fields (and, unless ``active`` is None, whether they are active, as
    set_active does, in the same transaction). A new email for a person with escrowed keys also
    needs the download privilege, and the old address is told; a refused change is audited."""

    def work(session: Session) -> Person:
        account = get_account(session, account_slug)
        person = _load(session, actor, account, person_id)
        actor.require(Privilege.PERSONS_MANAGE, account.id, person.organization_id)
        actor.require_scope(Scope.MANAGE)
        if data.organization_id is not None:
            actor.require(Privilege.PERSONS_MANAGE, account.id, data.organization_id)
        old_email = person.email
        if data.email is not None and normalize_email(data.email) != old_email:
            other = find_by_email(session, account, data.email)
            if other is not None:
                raise Conflict("A person with this email exists in this account.")
            _require_download_of_keys(session, actor, account, person)
        changed = _apply(session, account, person, data)
        if "email" in changed and _escrow_organizations(session, person):
            notify.queue_mail(
                session,
                account,
                old_email,
                EMAIL_CHANGED_SUBJECT,
                f"The email address of your entry in {account.name} was changed "
                "by an administrator. Keys escrowed for you stay in the vault.\n"
                "If you did not expect this, tell your administrators.\n",
            )
        if changed:
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action=UPDATE,
                target_type="person",
                target_id=person.id,
                details={k: {"old": v[0], "new": v[1]} for k, v in changed.items()},
            )
        if active is not None:
            _set_active(session, ports, actor, account, person, active)
        return person

    with _refusals_audited(ports, actor, UPDATE, person_id):
        return ports.db.run(work)


def _refusals_audited(
    ports: Ports, actor: Actor, action: str, person_id: int
) -> AbstractContextManager[None]:
    return audit.refusals_audited(
        ports,
        account_id=actor.account_id,
        actor=actor,
        action=action,
        target_type="person",
        target_id=person_id,
    )


# --- the Secret ID --------------------------------------------------------------------------------


def check_secret_id(secret_id: str) -> str:
    """A Secret ID as enrollment and the console take it: printable, 4 to 128 characters."""
    if not MIN_SECRET_ID <= len(secret_id) <= MAX_SECRET_ID or not is_text(secret_id):
        raise InvalidInput(
            f"A Secret ID has {MIN_SECRET_ID} to {MAX_SECRET_ID} printable characters."
        )
    return secret_id


def hash_secret_id(ports: Ports, secret_id: str) -> str:
    """The stored form of a Secret ID (argon2id, like administrator passwords)."""
    return hash_password(ports, check_secret_id(secret_id))


def set_secret_id(
    ports: Ports, actor: Actor, account_slug: str, person_id: int, secret_id: str | None
) -> Person:
    """Set (or replace) a person's Secret ID, or remove it when ``secret_id`` is None.

    The audit event says what happened, never the value."""
    # Hashed before the transaction: argon2 must not hold a lock.
    secret_hash = hash_secret_id(ports, secret_id) if secret_id is not None else None
    action = SECRET_ID_SET if secret_hash is not None else SECRET_ID_CLEAR

    def work(session: Session) -> Person:
        account = get_account(session, account_slug)
        person = _load(session, actor, account, person_id)
        actor.require(Privilege.PERSONS_MANAGE, account.id, person.organization_id)
        actor.require_scope(Scope.MANAGE)
        had = person.secret_id_hash is not None
        person.secret_id_hash = secret_hash
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action=action,
            target_type="person",
            target_id=person.id,
            details={"had_secret_id": had},
        )
        return person

    with _refusals_audited(ports, actor, action, person_id):
        return ports.db.run(work)


SET_ACTIVE = "person.set_active"


def set_active(
    ports: Ports, actor: Actor, account_slug: str, person_id: int, active: bool
) -> Person:
    """Mark a person active or inactive (left the organization). An inactive person recovers
    nothing at the Private Key Recovery Form; administrators can still release their keys."""

    def work(session: Session) -> Person:
        account = get_account(session, account_slug)
        person = _load(session, actor, account, person_id)
        actor.require(Privilege.PERSONS_MANAGE, account.id, person.organization_id)
        actor.require_scope(Scope.MANAGE)
        _set_active(session, ports, actor, account, person, active)
        return person

    with _refusals_audited(ports, actor, SET_ACTIVE, person_id):
        return ports.db.run(work)


def _set_active(
    session: Session, ports: Ports, actor: Actor, account: Account, person: Person, active: bool
) -> None:
    """Change and audit whether ``person`` is active (the caller checked the privilege)."""
    if person.active == active:
        return
    person.active = active
    audit.record(
        session,
        ports,
        account=account,
        actor=actor,
        action=SET_ACTIVE,
        target_type="person",
        target_id=person.id,
        details={"active": active},
    )


def delete_person(ports: Ports, actor: Actor, account_slug: str, person_id: int) -> None:
    def work(session: Session) -> None:
        account = get_account(session, account_slug)
        person = _load(session, actor, account, person_id)
        actor.require(Privilege.PERSONS_MANAGE, account.id, person.organization_id)
        actor.require_scope(Scope.MANAGE)
        has_certs = session.scalar(
            select(func.count()).select_from(Certificate).where(Certificate.person_id == person.id)
        )
        if has_certs:
            raise Conflict("This person has certificates; their keys would lose their owner.")
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="person.delete",
            target_type="person",
            target_id=person.id,
            details={"email": person.email},
        )
        session.delete(person)

    ports.db.run(work)


def _escrow_organizations(session: Session, person: Person) -> set[int]:
    """The organizations holding a certificate of ``person`` whose key is in the vault."""
    return set(
        session.scalars(
            select(Certificate.organization_id)
            .where(Certificate.person_id == person.id, Certificate.key_in_vault)
            .distinct()
        )
    )


def _require_download_of_keys(
    session: Session, actor: Actor, account: Account, person: Person
) -> None:
    """Whoever controls a person's address may later recover their keys and is told of every
    release of them: the same power as downloading the keys, wherever their certificates are.

    So an address change needs key_vault_download in the person's organization and in every
    organization holding one of their escrowed keys (a certificate may sit in another
    organization than its owner)."""
    holders = _escrow_organizations(session, person)
    if not holders:
        return
    for organization_id in sorted(holders | {person.organization_id}):
        try:
            actor.require(Privilege.KEY_VAULT_DOWNLOAD, account.id, organization_id)
        except (NotFound, Forbidden):
            # The person is visible, so a hidden organization is a missing privilege, not a
            # missing person.
            raise Forbidden(
                "Changing the address of a person with escrowed keys needs the privilege "
                "key_vault_download in every organization holding one of their certificates."
            ) from None
