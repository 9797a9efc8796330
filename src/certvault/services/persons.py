"""Persons (subscribers) inside an account; email unique per account, case-insensitive."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db.models import Account, Organization, Person
from certvault.errors import InvalidInput

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


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
    session: Session, account: Account, email: str, organization: Organization
) -> tuple[Person, bool]:
    person = find_by_email(session, account, email)
    if person is not None:
        return person, False
    person = Person(
        account_id=account.id, organization_id=organization.id, email=normalize_email(email)
    )
    session.add(person)
    session.flush()
    return person, True
