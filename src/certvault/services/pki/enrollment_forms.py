"""Enrollment forms: what an account offers on its client-certificate web forms (profile,
organization, access code, domains, key types, dual key, whether it asks for the name), managed by
administrators and shown, without secrets, to the people who enroll."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.config import Settings
from certvault.crypto.profiles import (
    KeyType,
    Profile,
    get_profile,
    parse_key_type,
)
from certvault.db.models import Account, EnrollmentForm
from certvault.errors import Conflict, InvalidInput, KeyTypeNotAllowed, NotFound
from certvault.services.audit import log as audit
from certvault.services.directory.accounts import SLUG
from certvault.services.kernel.actors import Actor, Privilege, Scope
from certvault.services.kernel.paging import MAX_ID
from certvault.services.kernel.passwords import hash_password, is_text
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import default_organization, find_organization, get_account

MIN_ACCESS_CODE, MAX_ACCESS_CODE = 8, 200
MAX_DOMAINS = 50
# A dual-key form issues these two instead of its profile: the encryption key is escrowed, the
# signing key never is.
DUAL_KEY_PROFILES = ("smime-encryption", "smime-signing")
# Whether the page asks for the person's first and last name. One setting of three values, not
# two flags: "required" without "asked" would be a state that means nothing.
ASK_NAME = ("off", "optional", "required")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)


class FormNotFound(NotFound):
    """This enrollment form does not exist or is disabled."""

    code = "form_not_found"


def _profiles_of(profile: str, dual_key: bool) -> tuple[Profile, ...]:
    if dual_key:
        return tuple(get_profile(name) for name in DUAL_KEY_PROFILES)
    return (get_profile(profile),)


def _allowed_key_types(form: EnrollmentForm) -> list[KeyType]:
    allowed = frozenset.intersection(
        *(p.allowed_key_types for p in _profiles_of(form.profile, form.dual_key))
    )
    if form.key_types:
        allowed &= {parse_key_type(k) for k in form.key_types.split()}
    return [k for k in KeyType if k in allowed]  # in the enum's order: smallest RSA first


def _check_profile(profile: str, dual_key: bool) -> None:
    get_profile(profile)
    if dual_key and profile != "smime":
        raise InvalidInput(
            "A dual-key form issues an smime-encryption and an smime-signing certificate; "
            "give it the profile smime."
        )


def _key_types_text(profile: str, dual_key: bool, key_types: Sequence[str]) -> str:
    kinds = [parse_key_type(k.strip().lower()) for k in key_types if k.strip()]
    for p in _profiles_of(profile, dual_key):
        refused = [k for k in kinds if k not in p.allowed_key_types]
        if refused:
            raise KeyTypeNotAllowed(f"The profile {p.name} does not allow {', '.join(refused)}.")
    return " ".join(k.value for k in KeyType if k in kinds)


def _domains_text(domains: Sequence[str]) -> str:
    cleaned = []
    for domain in domains:
        value = domain.strip().lower().removeprefix("@").rstrip(".")
        if not value:
            continue
        if not _DOMAIN.match(value):
            raise InvalidInput("A domain looks like example.org (ASCII; punycode for others).")
        cleaned.append(value)
    if len(cleaned) > MAX_DOMAINS:
        raise InvalidInput(f"A form may name at most {MAX_DOMAINS} domains.")
    return " ".join(dict.fromkeys(cleaned))


def _access_code_hash(ports: Ports, access_code: str) -> str:
    if not is_text(access_code) or not MIN_ACCESS_CODE <= len(access_code) <= MAX_ACCESS_CODE:
        raise InvalidInput(
            f"An access code needs {MIN_ACCESS_CODE} to {MAX_ACCESS_CODE} characters."
        )
    return hash_password(ports, access_code)


def _ask_name(value: str) -> str:
    if value not in ASK_NAME:
        raise InvalidInput("ask_name is one of: " + ", ".join(ASK_NAME) + ".")
    return value


def _name(name: str) -> str:
    value = name.strip()
    if len(value) > 200 or not value.isprintable():
        raise InvalidInput("A form name has at most 200 printable characters.")
    return value


def _find_form(session: Session, account: Account, form: int | str) -> EnrollmentForm:
    query = select(EnrollmentForm).where(EnrollmentForm.account_id == account.id)
    if isinstance(form, int):
        query = query.where(EnrollmentForm.id == form)
    else:
        query = query.where(EnrollmentForm.slug == form)
    row = session.scalars(query).first()
    if row is None:
        raise FormNotFound("Enrollment form not found.")
    return row


def _audited(
    session: Session,
    ports: Ports,
    account: Account,
    actor: Actor,
    action: str,
    form: EnrollmentForm,
) -> EnrollmentForm:
    """``form`` written, with an audit event of its settings (never the access code)."""
    session.flush()
    audit.record(
        session,
        ports,
        account=account,
        actor=actor,
        action=action,
        target_type="enrollment_form",
        target_id=form.id,
        details=_form_details(form),
    )
    return form


def _form_details(form: EnrollmentForm) -> dict[str, object]:
    return {
        "slug": form.slug,
        "profile": form.profile,
        "organization_id": form.organization_id,
        "access_code": form.access_code_hash is not None,
        "domains": form.domains.split(),
        "key_types": form.key_types.split(),
        "dual_key": form.dual_key,
        "allow_own_passphrase": form.allow_own_passphrase,
        "ask_name": form.ask_name,
        "enabled": form.enabled,
    }


def create_form(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    *,
    slug: str,
    profile: str,
    organization: str | None = None,
    access_code: str | None,
    domains: Sequence[str] = (),
    dual_key: bool = False,
    allow_own_passphrase: bool = False,
    key_types: Sequence[str] = (),
    name: str = "",
    ask_name: str = "off",
) -> EnrollmentForm:
    """Create an enrollment form; ``access_code`` is stored hashed (argon2), never as given."""
    actor.require_scope(Scope.MANAGE)
    if not SLUG.match(slug):
        raise InvalidInput("A form slug has 1 to 63 characters: a-z, 0-9 and inner hyphens.")
    _check_profile(profile, dual_key)
    types_text = _key_types_text(profile, dual_key, key_types)
    domains_text = _domains_text(domains)
    title = _name(name)
    asked = _ask_name(ask_name)
    code_hash = _access_code_hash(ports, access_code) if access_code is not None else None

    def work(session: Session) -> EnrollmentForm:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        org = (
            find_organization(session, account, organization)
            if organization
            else default_organization(session, account)
        )
        actor.require(Privilege.SETTINGS_MANAGE, account.id, org.id)
        taken = select(EnrollmentForm.id).where(
            EnrollmentForm.account_id == account.id, EnrollmentForm.slug == slug
        )
        if session.scalars(taken).first() is not None:
            raise Conflict("A form with this slug exists in this account.")
        form = EnrollmentForm(
            account_id=account.id,
            slug=slug,
            name=title,
            profile=profile,
            organization_id=org.id,
            access_code_hash=code_hash,
            domains=domains_text,
            key_types=types_text,
            dual_key=dual_key,
            allow_own_passphrase=allow_own_passphrase,
            ask_name=asked,
            enabled=True,
        )
        session.add(form)
        return _audited(session, ports, account, actor, "form.create", form)

    return ports.db.run(work)


def update_form(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    form: int | str,
    *,
    name: str | None = None,
    profile: str | None = None,
    organization: str | None = None,
    access_code: str | None = None,
    remove_access_code: bool = False,
    domains: Sequence[str] | None = None,
    key_types: Sequence[str] | None = None,
    dual_key: bool | None = None,
    allow_own_passphrase: bool | None = None,
    ask_name: str | None = None,
    enabled: bool | None = None,
) -> EnrollmentForm:
    """Change a form (by id or slug); ``None`` leaves a setting as it is."""
    actor.require_scope(Scope.MANAGE)
    if access_code is not None and remove_access_code:
        raise InvalidInput("Set an access code or remove it, not both.")
    code_hash = _access_code_hash(ports, access_code) if access_code is not None else None
    title = _name(name) if name is not None else None
    asked = _ask_name(ask_name) if ask_name is not None else None

    def work(session: Session) -> EnrollmentForm:
        account = get_account(session, account_slug)
        row = _find_form(session, account, form)
        if not actor.can_see(account.id, row.organization_id):
            # A form of another organization answers exactly like a missing one.
            raise FormNotFound("Enrollment form not found.")
        actor.require(Privilege.SETTINGS_MANAGE, account.id, row.organization_id)
        if organization is not None:
            org = find_organization(session, account, organization)
            actor.require(Privilege.SETTINGS_MANAGE, account.id, org.id)
            row.organization_id = org.id
        new_profile = profile if profile is not None else row.profile
        new_dual = dual_key if dual_key is not None else row.dual_key
        _check_profile(new_profile, new_dual)
        types = key_types if key_types is not None else row.key_types.split()
        row.key_types = _key_types_text(new_profile, new_dual, types)
        row.profile, row.dual_key = new_profile, new_dual
        if title is not None:
            row.name = title
        if domains is not None:
            row.domains = _domains_text(domains)
        if code_hash is not None:
            row.access_code_hash = code_hash
        elif remove_access_code:
            row.access_code_hash = None
        if allow_own_passphrase is not None:
            row.allow_own_passphrase = allow_own_passphrase
        if asked is not None:
            row.ask_name = asked
        if enabled is not None:
            row.enabled = enabled
        return _audited(session, ports, account, actor, "form.update", row)

    return ports.db.run(work)


def form_url(settings: Settings, account_slug: str, form_slug: str) -> str:
    """The form's page, under CERTVAULT_PUBLIC_URL."""
    return settings.public_url_for(f"/enroll/{account_slug}/{form_slug}")


def disable_form(ports: Ports, actor: Actor, account_slug: str, form: int | str) -> EnrollmentForm:
    """Disable a form: its page answers 404 and its pending codes stop working."""
    return update_form(ports, actor, account_slug, form, enabled=False)


def list_forms(ports: Ports, actor: Actor, account_slug: str) -> list[EnrollmentForm]:
    """The account's forms that the actor sees, oldest first."""
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require(Privilege.SETTINGS_MANAGE, account.id, None)
        query = select(EnrollmentForm).where(EnrollmentForm.account_id == account.id)
        orgs = actor.visible_organizations()
        if orgs is not None:
            query = query.where(EnrollmentForm.organization_id.in_(orgs))
        return list(session.scalars(query.order_by(EnrollmentForm.id)))


def get_form(ports: Ports, actor: Actor, account_slug: str, form_id: int) -> EnrollmentForm:
    """One of the account's forms, for its settings page (settings_manage)."""
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        row = _find_form(session, account, form_id) if 0 < form_id <= MAX_ID else None
        if row is None or not actor.can_see(account.id, row.organization_id):
            raise FormNotFound("Enrollment form not found.")
        actor.require(Privilege.SETTINGS_MANAGE, account.id, row.organization_id)
        return row


@dataclass(frozen=True)
class PublicForm:
    """What the enrollment page may show about a form (nothing secret)."""

    account_slug: str
    account_name: str
    slug: str
    name: str
    profiles: tuple[Profile, ...]
    key_types: list[KeyType]
    has_access_code: bool
    dual_key: bool
    allow_own_passphrase: bool
    min_passphrase_length: int
    domains: list[str]
    escrowed_profiles: tuple[str, ...]  # whose keys are kept in the vault; empty: none is
    ask_name: str = "off"  # off | optional | required (ASK_NAME)

    @property
    def keeps_key(self) -> bool:
        return bool(self.escrowed_profiles)


@dataclass(frozen=True)
class FormState:
    """A form as read before the work that uses it (the transaction reads it again)."""

    public: PublicForm
    account_id: int
    form_id: int
    access_code_hash: str | None


def form_state(ports: Ports, account_slug: str, form_slug: str) -> FormState:
    with ports.db.read() as session:
        account = session.scalars(select(Account).where(Account.slug == account_slug)).first()
        form = None
        if account is not None:
            form = session.scalars(
                select(EnrollmentForm).where(
                    EnrollmentForm.account_id == account.id, EnrollmentForm.slug == form_slug
                )
            ).first()
        if account is None or form is None or not form.enabled:
            # An unknown account, an unknown form and a disabled one answer alike.
            raise FormNotFound()
        profiles = _profiles_of(form.profile, form.dual_key)
        public = PublicForm(
            account_slug=account.slug,
            account_name=account.name,
            slug=form.slug,
            name=form.name or form.slug,
            profiles=profiles,
            key_types=_allowed_key_types(form),
            has_access_code=form.access_code_hash is not None,
            dual_key=form.dual_key,
            allow_own_passphrase=form.allow_own_passphrase,
            min_passphrase_length=account.min_passphrase_length,
            domains=form.domains.split(),
            escrowed_profiles=tuple(
                p.name for p in profiles if p.escrow and account.key_vault_enabled
            ),
            ask_name=form.ask_name,
        )
        return FormState(public, account.id, form.id, form.access_code_hash)


def get_form_public(ports: Ports, account_slug: str, form_slug: str) -> PublicForm:
    """The form as its page shows it; :class:`FormNotFound` when unknown or disabled."""
    return form_state(ports, account_slug, form_slug).public
