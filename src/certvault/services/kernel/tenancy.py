"""Finding an account (tenant) and its organizations: what every domain needs first."""

from __future__ import annotations

from sqlalchemy import bindparam, func, inspect, select
from sqlalchemy.orm import Session, make_transient_to_detached

from certvault.db.models import Account, Organization
from certvault.errors import NotFound

_ADOPTED = "certvault_adopted_accounts"
_COLUMNS = inspect(Account).column_attrs
# Built once: every request names its account.
_BY_SLUG = select(Account).where(Account.slug == bindparam("slug"))


def adopt_account(session: Session, account: Account | None) -> None:
    """Let ``session`` use an account row read moments ago, its seal checked as it loaded (the
    request's authentication reads it): get_account answers from it instead of reading the row
    again. A copy joins the session as if just read, so that a rollback there (which expires
    what the session holds) leaves the caller's row usable for another attempt; nothing is
    written from it."""
    if account is None:
        return
    adopted: dict[str, Account] = session.info.setdefault(_ADOPTED, {})
    if account.slug not in adopted:
        copy = Account(**{attr.key: getattr(account, attr.key) for attr in _COLUMNS})
        make_transient_to_detached(copy)
        session.add(copy)
        adopted[account.slug] = copy


def get_account(session: Session, slug: str) -> Account:
    adopted = session.info.get(_ADOPTED)
    if adopted is not None and slug in adopted:
        return adopted[slug]
    if "\x00" in slug or len(slug) > 200:  # no account has such a slug; PostgreSQL refuses NUL
        raise NotFound("Account not found.")
    account = session.scalars(_BY_SLUG, {"slug": slug}).first()
    if account is None:
        raise NotFound("Account not found.")
    return account


def default_organization(session: Session, account: Account) -> Organization:
    return session.scalars(
        select(Organization).where(
            Organization.account_id == account.id, Organization.is_default.is_(True)
        )
    ).one()


def find_organization(session: Session, account: Account, name_or_id: str) -> Organization:
    query = select(Organization).where(Organization.account_id == account.id)
    if name_or_id.isdigit():
        query = query.where(Organization.id == int(name_or_id))
    else:
        query = query.where(func.lower(Organization.name) == name_or_id.lower())
    org = session.scalars(query).first()
    if org is None:
        raise NotFound("Organization not found.")
    return org
