"""Enrollment forms with server-side key generation: the forms, the mailed one-time codes, and
the enrollment itself.

A person proves control of an address with a code mailed to it (and the form's access code when
it has one); certvault generates the key, the issuer signs, and when Key Vault is on and the
profile escrows, the key goes through :func:`vault.archive_entry` in the transaction that records
the certificate and spends the code: all or nothing. Otherwise the certificate is recorded
without its key, and the key exists only in the delivered p12.

Delivering that p12 is not a *release*. A release (services/release.py) hands out a key that
comes out of the vault, decrypted, to someone other than the moment that made it; that is why it
needs the download privilege, a policy and the owner's notice. Here the key was generated in
memory for this very request and never came out of the vault (at most a sealed copy went in);
it goes once to the person who just proved control of the certificate's address and is dropped
after. The delivery is audited as ``key.deliver`` in the transaction that records the
certificate, next to ``enroll``.

One-time codes are stored as HMAC-SHA256 under a service key, over the form, the address, the
form's access-code hash and the code. A salted SHA-256 would not do: eight digits are 27 bits,
which anyone holding a copy of the table tries in a second; the HMAC key is sealed under the
master key, so the table alone gives nothing. Binding the form and address makes a code sent for
another form or address simply wrong, and binding the access-code hash voids pending codes when
the access code changes.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from hashlib import sha256

from argon2.exceptions import InvalidHashError, VerificationError
from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.config import Settings
from certvault.crypto.keys import PrivateKey
from certvault.crypto.passphrase import check_passphrase, generate_passphrase
from certvault.crypto.pkcs12 import EncryptionType, KeyAndCertificate, write_pkcs12_entries
from certvault.crypto.profiles import (
    KeyType,
    Profile,
    generate_key,
    get_profile,
    parse_key_type,
)
from certvault.db.models import Account, EnrollmentCode, EnrollmentForm, Organization
from certvault.errors import Conflict, Forbidden, InvalidInput, KeyTypeNotAllowed, NotFound
from certvault.services import audit, keyring, notify, persons, vault
from certvault.services.accounts import SLUG, default_organization, find_organization, get_account
from certvault.services.actors import Actor, Privilege, Role, Scope
from certvault.services.admins import password_hasher
from certvault.services.certificates import add_certificate
from certvault.services.issuance import CertificateIssuer, IssueRequest
from certvault.services.ports import Ports
from certvault.services.ratelimit import Limit, RateLimiter, enforce, rate_limiter

ENROLL = "enroll"
DELIVER = "key.deliver"
SEND_CODE = "enroll.code"
SOURCE = "enroll"
CODE_KEY_PURPOSE = "enrollment-code-mac"
CODE_DIGITS = 8
CODE_LIFETIME = timedelta(minutes=15)
MAX_ATTEMPTS = 5  # wrong codes a live code survives
HOUR = 3600
MIN_ACCESS_CODE, MAX_ACCESS_CODE = 8, 200
MIN_SECRET_ID, MAX_SECRET_ID = 4, 128
MAX_DOMAINS = 50
# A dual-key form issues these two instead of its profile: the encryption key is escrowed, the
# signing key never is.
DUAL_KEY_PROFILES = ("smime-encryption", "smime-signing")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)


class FormNotFound(NotFound):
    """This enrollment form does not exist or is disabled."""

    code = "form_not_found"


class AccessCodeInvalid(Forbidden):
    """The access code is wrong."""

    code = "access_code_invalid"


class AddressNotAllowed(Forbidden):
    """This form does not enroll addresses of that domain."""

    code = "address_not_allowed"


class CodeInvalid(Forbidden):
    """The code is wrong, or it was sent for another form or address."""

    code = "code_invalid"


class CodeExpired(Forbidden):
    """The code has expired; ask for a new one."""

    code = "code_expired"


class CodeUsed(Conflict):
    """The code was already used; ask for a new one."""

    code = "code_used"


class CodeAttemptsExceeded(Forbidden):
    """Too many wrong codes were tried; ask for a new one."""

    code = "code_attempts_exceeded"


class OwnPassphraseNotAllowed(InvalidInput):
    """This form does not let you choose the passphrase; certvault generates one."""

    code = "own_passphrase_not_allowed"


class PassphraseMismatch(InvalidInput):
    """The two passphrases differ."""

    code = "passphrase_mismatch"


# --- forms ----------------------------------------------------------------------------------


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
    if not _is_text(access_code) or not MIN_ACCESS_CODE <= len(access_code) <= MAX_ACCESS_CODE:
        raise InvalidInput(
            f"An access code needs {MIN_ACCESS_CODE} to {MAX_ACCESS_CODE} characters."
        )
    return password_hasher(ports).hash(access_code)


def _is_text(value: str) -> bool:
    """Printable text that survives UTF-8 (JSON may carry lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return value.isprintable()


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
) -> EnrollmentForm:
    """Create an enrollment form; ``access_code`` is stored hashed (argon2), never as given."""
    actor.require_scope(Scope.MANAGE)
    if not SLUG.match(slug):
        raise InvalidInput("A form slug has 1 to 63 characters: a-z, 0-9 and inner hyphens.")
    _check_profile(profile, dual_key)
    types_text = _key_types_text(profile, dual_key, key_types)
    domains_text = _domains_text(domains)
    title = _name(name)
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
    enabled: bool | None = None,
) -> EnrollmentForm:
    """Change a form (by id or slug); ``None`` leaves a setting as it is."""
    actor.require_scope(Scope.MANAGE)
    if access_code is not None and remove_access_code:
        raise InvalidInput("Set an access code or remove it, not both.")
    code_hash = _access_code_hash(ports, access_code) if access_code is not None else None
    title = _name(name) if name is not None else None

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
        if enabled is not None:
            row.enabled = enabled
        return _audited(session, ports, account, actor, "form.update", row)

    return ports.db.run(work)


def form_url(settings: Settings, account_slug: str, form_slug: str) -> str:
    """The form's page, under CERTVAULT_PUBLIC_URL."""
    return f"{settings.public_url.rstrip('/')}/enroll/{account_slug}/{form_slug}"


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

    @property
    def keeps_key(self) -> bool:
        return bool(self.escrowed_profiles)


@dataclass(frozen=True)
class _FormState:
    """A form as read before the work that uses it (the transaction reads it again)."""

    public: PublicForm
    account_id: int
    form_id: int
    access_code_hash: str | None


def _form_state(ports: Ports, account_slug: str, form_slug: str) -> _FormState:
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
        )
        return _FormState(public, account.id, form.id, form.access_code_hash)


def get_form_public(ports: Ports, account_slug: str, form_slug: str) -> PublicForm:
    """The form as its page shows it; :class:`FormNotFound` when unknown or disabled."""
    return _form_state(ports, account_slug, form_slug).public


# --- one-time codes -------------------------------------------------------------------------


def _subscriber(account_id: int, address: str, ip: str) -> Actor:
    """The person enrolling. The form, set up by an administrator, lets them have certificates
    issued for their own address; nothing more."""
    return Actor(
        name=f"person:{address}"[:320],
        kind="system",
        account_id=account_id,
        role=Role.ACCOUNT,
        privileges=frozenset({Privilege.CERTIFICATES_MANAGE}),
        ip=ip,
    )


def _address(email: str) -> str:
    address = persons.normalize_email(email)
    if not address.isascii():
        # Certificates name mailboxes as IA5Strings.
        raise InvalidInput("The address must be ASCII (internationalized domains as punycode).")
    return address


def _check_domain(state: _FormState, address: str) -> None:
    domains = state.public.domains
    domain = address.rpartition("@")[2]
    if domains and not any(domain == d or domain.endswith("." + d) for d in domains):
        raise AddressNotAllowed()


def _check_access_code(ports: Ports, state: _FormState, access_code: str | None) -> None:
    if state.access_code_hash is None:
        return
    try:
        password_hasher(ports).verify(state.access_code_hash, access_code or "")
    except (VerificationError, InvalidHashError, UnicodeEncodeError):
        raise AccessCodeInvalid() from None


def _code_mac(key: bytes, state: _FormState, address: str, code: str) -> str:
    message = "\x00".join(
        ("v1", str(state.form_id), address, state.access_code_hash or "", code)
    ).encode()
    return hmac.new(key, message, sha256).hexdigest()


def _code_text(code: str) -> str | None:
    """The code as typed, without the spaces and dashes people add; None if it cannot be one."""
    value = re.sub(r"[\s-]", "", code)
    return value if len(value) == CODE_DIGITS and value.isdigit() and value.isascii() else None


def _limits(ports: Ports, action: str, state: _FormState, address: str, ip: str) -> list[Limit]:
    s = ports.settings
    per_email, per_ip = (
        (s.enrollment_codes_per_hour_email, s.enrollment_codes_per_hour_ip)
        if action == SEND_CODE
        else (s.enrollment_checks_per_hour_email, s.enrollment_checks_per_hour_ip)
    )
    return [
        Limit(f"{action}-ip:{ip}", per_ip, HOUR),
        Limit(f"{action}-email:{state.account_id}:{address}", per_email, HOUR),
    ]


@contextmanager
def _attempt(
    ports: Ports,
    account_slug: str,
    form_slug: str,
    email: str,
    ip: str,
    action: str,
    limiter: RateLimiter | None,
) -> Iterator[tuple[_FormState, str, Actor]]:
    """A person's attempt on a form: counted against the rate limits first (each one may cost
    an argon2 check, a mail or a key), and audited as a refusal if it fails."""
    address = _address(email)
    state = _form_state(ports, account_slug, form_slug)
    actor = _subscriber(state.account_id, address, ip)
    with audit.refusals_audited(
        ports,
        account_id=state.account_id,
        actor=actor,
        action=action,
        target_type="enrollment_form",
        target_id=state.form_id,
    ):
        enforce(
            limiter or rate_limiter(ports.settings, ports.db),
            *_limits(ports, action, state, address, ip),
        )
        yield state, address, actor


@dataclass(frozen=True)
class CodeSent:
    email: str
    expires_at: datetime


def send_code(
    ports: Ports,
    account_slug: str,
    form_slug: str,
    email: str,
    access_code: str | None,
    ip: str,
    *,
    limiter: RateLimiter | None = None,
) -> CodeSent:
    """Mail a one-time code to ``email`` at once (the person is waiting for it).

    The code is stored only once the mail server has taken the message: when it does not, the
    person gets :class:`notify.MailUnavailable` and no code exists.
    """
    with _attempt(ports, account_slug, form_slug, email, ip, SEND_CODE, limiter) as (
        state,
        address,
        actor,
    ):
        _check_domain(state, address)
        _check_access_code(ports, state, access_code)
        code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
        digest = _code_mac(
            keyring.service_secrets(ports, CODE_KEY_PURPOSE)[0], state, address, code
        )
        expires_at = ports.clock() + CODE_LIFETIME
        notify.send_now(
            ports.settings,
            address,
            f"Your enrollment code for {state.public.account_name}",
            _code_mail(state.public, code),
        )

        def work(session: Session) -> None:
            session.add(
                EnrollmentCode(
                    form_id=state.form_id, email=address, code_hash=digest, expires_at=expires_at
                )
            )
            audit.record(
                session,
                ports,
                account=session.get_one(Account, state.account_id),
                actor=actor,
                action=SEND_CODE,
                target_type="enrollment_form",
                target_id=state.form_id,
                details={"form": state.public.slug},
            )

        ports.db.run(work)
    return CodeSent(address, expires_at)


def _code_mail(form: PublicForm, code: str) -> str:
    minutes = int(CODE_LIFETIME.total_seconds() // 60)
    return (
        f'Your code for the certificate enrollment form "{form.name}" of '
        f"{form.account_name} is:\n\n    {code}\n\n"
        f"It works once and expires in {minutes} minutes.\n\n"
        "If you did not ask for it, ignore this message: nothing happens without the code.\n"
    )


def _verify_code(ports: Ports, state: _FormState, address: str, code: str) -> int:
    """The id of the live code ``code`` for this form and address; a wrong code counts against
    every live code of the address (committed, whatever happens next)."""
    typed = _code_text(code)
    digests = (
        [
            _code_mac(k, state, address, typed)
            for k in keyring.service_secrets(ports, CODE_KEY_PURPOSE)
        ]
        if typed
        else []
    )
    now = ports.clock()

    def work(session: Session) -> int | Exception:
        rows = session.scalars(
            select(EnrollmentCode)
            .where(EnrollmentCode.form_id == state.form_id, EnrollmentCode.email == address)
            .order_by(EnrollmentCode.id.desc())
            .limit(50)
            .with_for_update()
        ).all()
        match = next(
            (r for r in rows if any(hmac.compare_digest(r.code_hash, d) for d in digests)), None
        )
        if match is None:
            for row in rows:
                if row.used_at is None and row.expires_at > now:
                    row.attempts += 1
            return CodeInvalid()
        if match.used_at is not None:
            return CodeUsed()
        if match.expires_at <= now:
            return CodeExpired()
        if match.attempts >= MAX_ATTEMPTS:
            return CodeAttemptsExceeded()
        return match.id

    outcome = ports.db.run(work)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


# --- enrollment -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollmentResult:
    p12: bytes = field(repr=False)
    passphrase_shown: str | None = field(repr=False)  # generated: shown once, never stored
    certificate_ids: list[int] = field(default_factory=list)
    escrowed: bool = False  # whether a copy of a key went into the vault
    filename: str = "certificate.p12"


def _default_issuer(ports: Ports) -> CertificateIssuer:
    from certvault.services.ca import BuiltinIssuer  # the built-in CA, unless told otherwise

    return BuiltinIssuer(ports)


def _chosen_key_type(state: _FormState, key_type: str) -> KeyType:
    kind = parse_key_type(key_type.strip().lower())
    if kind not in state.public.key_types:
        allowed = ", ".join(state.public.key_types)
        raise KeyTypeNotAllowed(f"This form allows these key types: {allowed}.")
    return kind


def _chosen_passphrase(
    state: _FormState, passphrase: str | None, confirm: str | None
) -> tuple[str, bool]:
    """The p12 passphrase and whether certvault generated it."""
    if passphrase is None and confirm is None:
        return generate_passphrase(), True
    if not state.public.allow_own_passphrase:
        raise OwnPassphraseNotAllowed()
    if not hmac.compare_digest((passphrase or "").encode(), (confirm or "").encode()):
        raise PassphraseMismatch()
    return check_passphrase(passphrase or "", state.public.min_passphrase_length), False


def _check_secret_id(secret_id: str | None) -> str | None:
    if not secret_id:
        return None
    if not MIN_SECRET_ID <= len(secret_id) <= MAX_SECRET_ID or not _is_text(secret_id):
        raise InvalidInput(
            f"A Secret ID has {MIN_SECRET_ID} to {MAX_SECRET_ID} printable characters."
        )
    return secret_id


def _filename(address: str) -> str:
    local = re.sub(r"[^A-Za-z0-9._-]", "", address.partition("@")[0]).strip(".")
    return f"{local or 'certificate'}.p12"


def enroll(
    ports: Ports,
    account_slug: str,
    form_slug: str,
    *,
    email: str,
    code: str,
    access_code: str | None = None,
    key_type: str,
    secret_id: str | None = None,
    passphrase: str | None = None,
    passphrase_confirm: str | None = None,
    issuer: CertificateIssuer | None = None,
    ip: str = "",
    limiter: RateLimiter | None = None,
) -> EnrollmentResult:
    """Generate the key(s), have them certified, escrow what the profile allows, spend the code,
    and return the p12 (built after commit, from the keys in memory).

    The access code was checked before the code was sent, and the code is bound to it; when it is
    given here too, it is checked again.
    """
    with _attempt(ports, account_slug, form_slug, email, ip, ENROLL, limiter) as (
        state,
        address,
        actor,
    ):
        kind = _chosen_key_type(state, key_type)
        chosen, generated = _chosen_passphrase(state, passphrase, passphrase_confirm)
        secret = _check_secret_id(secret_id)
        if access_code is not None:
            _check_access_code(ports, state, access_code)
        code_id = _verify_code(ports, state, address, code)
        # Hashed once the code is known good: argon2 is the costly part of a wrong guess.
        secret_hash = password_hasher(ports).hash(secret) if secret else None
        # Outside any transaction: RSA-4096 takes seconds and must not hold a lock.
        keys = [generate_key(kind) for _ in state.public.profiles]
        signer = issuer or _default_issuer(ports)
        issued = ports.db.run(
            lambda session: _issue(
                session, ports, state, actor, address, code_id, keys, secret_hash, signer
            )
        )
    # After commit, so the KDF holds no lock; the entries were audited as delivered.
    data = write_pkcs12_entries(
        issued.entries,
        issued.chain,
        chosen,
        EncryptionType.AES256_SHA256,
        ports.settings.p12_kdf_rounds,
    )
    return EnrollmentResult(
        p12=data,
        passphrase_shown=chosen if generated else None,
        certificate_ids=issued.certificate_ids,
        escrowed=issued.escrowed,
        filename=_filename(address),
    )


@dataclass
class _Issued:
    entries: list[KeyAndCertificate]
    chain: list[x509.Certificate]
    certificate_ids: list[int]
    escrowed: bool


def _issue(
    session: Session,
    ports: Ports,
    state: _FormState,
    actor: Actor,
    address: str,
    code_id: int,
    keys: Sequence[PrivateKey],
    secret_hash: str | None,
    issuer: CertificateIssuer,
) -> _Issued:
    """Everything that must happen together: issue, escrow or record, spend the code, audit."""
    account = session.get_one(Account, state.account_id)
    form = session.get(EnrollmentForm, state.form_id)
    if form is None or not form.enabled:
        raise FormNotFound()
    # Locked: of two submissions with one code, the second waits here and finds it spent.
    code_row = session.scalars(
        select(EnrollmentCode).where(EnrollmentCode.id == code_id).with_for_update()
    ).one()
    now = ports.clock()
    if code_row.used_at is not None:
        raise CodeUsed()
    if code_row.expires_at <= now:
        raise CodeExpired()
    organization = session.get_one(Organization, form.organization_id)
    result = _Issued([], [], [], False)
    for profile, key in zip(state.public.profiles, keys, strict=True):
        made = issuer.issue(session, account, IssueRequest(key.public_key(), profile, address))
        label = f"{address} ({profile.name})" if form.dual_key else address
        if account.key_vault_enabled and profile.escrow:
            entry = vault.archive_entry(
                session,
                ports,
                account,
                actor,
                vault.EscrowRequest(
                    key=key,
                    certificate=made.certificate,
                    chain=made.chain,
                    friendly_name=label,
                    source=SOURCE,
                    person_email=address,
                    organization=str(organization.id),
                    profile=profile,
                    ca_id=made.ca_id,
                ),
            )
            assert entry.client_cert_id is not None
            result.certificate_ids.append(entry.client_cert_id)
            result.escrowed = True
        else:
            person, _ = persons.find_or_create(session, account, address, organization)
            row = add_certificate(
                session,
                account,
                made.certificate,
                made.chain,
                person=person,
                organization_id=person.organization_id,
                source=SOURCE,
                profile=profile.name,
                ca_id=made.ca_id,
                friendly_name=label,
            )
            result.certificate_ids.append(row.id)
        result.entries.append(KeyAndCertificate(key, made.certificate, label))
        result.chain = result.chain or list(made.chain)
    if secret_hash is not None:
        owner = persons.find_by_email(session, account, address)
        assert owner is not None
        owner.secret_id_hash = secret_hash
    code_row.used_at = now
    code_row.certificate_id = result.certificate_ids[0]
    details = {
        "form": form.slug,
        "profiles": [p.name for p in state.public.profiles],
        "certificate_ids": result.certificate_ids,
        "escrowed": result.escrowed,
    }
    for action, extra in (
        (ENROLL, {"secret_id_set": secret_hash is not None}),
        (DELIVER, {"encryption": EncryptionType.AES256_SHA256.value}),
    ):
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action=action,
            target_type="certificate",
            target_id=result.certificate_ids[0],
            details=details | extra,
        )
    return result
