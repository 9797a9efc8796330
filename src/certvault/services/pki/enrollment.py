"""Enrollment forms with server-side key generation: the forms, the mailed one-time codes, and
the enrollment itself.

A person proves control of an address with a code mailed to it (and the form's access code when
it has one); certvault generates the key, the issuer signs, and when Key Vault is on and the
profile escrows, the key goes through :func:`archive.archive_entry` in the transaction that records
the certificate and spends the code: all or nothing. Otherwise the certificate is recorded
without its key, and the key exists only in the delivered p12.

Delivering that p12 is not a *release*. A release (services/vault/release.py) hands out a key that
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

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto.keys import PrivateKey
from certvault.crypto.passphrase import check_passphrase, generate_passphrase
from certvault.crypto.pkcs12.writer import EncryptionType, KeyAndCertificate, write_pkcs12_entries
from certvault.crypto.profiles import (
    KeyType,
    generate_key,
    parse_key_type,
)
from certvault.db.models import Account, EnrollmentCode, EnrollmentForm, Organization
from certvault.errors import Conflict, Forbidden, InvalidInput, KeyTypeNotAllowed
from certvault.services.audit import log as audit
from certvault.services.directory import persons
from certvault.services.directory.certificates import add_certificate
from certvault.services.kernel import keyring, notify
from certvault.services.kernel.actors import Actor, Privilege, Role
from certvault.services.kernel.passwords import verify_password
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import Limit, RateLimiter, enforce, rate_limiter
from certvault.services.pki.enrollment_forms import (
    FormNotFound,
    FormState,
    PublicForm,
    form_state,
)
from certvault.services.pki.issuance import CertificateIssuer, IssueRequest
from certvault.services.vault import archive
from certvault.services.vault.release import kdf_rounds

ENROLL = "certificate.enroll"  # the same action as enrollment with a client CSR
DELIVER = "key.deliver"
SEND_CODE = "enroll.code"
SOURCE = "enroll"
CODE_KEY_PURPOSE = "enrollment-code-mac"
CODE_DIGITS = 8
CODE_LIFETIME = timedelta(minutes=15)
MAX_ATTEMPTS = 5  # wrong codes a live code survives
HOUR = 3600


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


class NameRequired(InvalidInput):
    """This form needs your first and last name."""

    code = "name_required"


class NameNotAsked(InvalidInput):
    """This form does not ask for a name; leave first and last name out."""

    code = "name_not_asked"


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


def _check_domain(state: FormState, address: str) -> None:
    domains = state.public.domains
    domain = address.rpartition("@")[2]
    if domains and not any(domain == d or domain.endswith("." + d) for d in domains):
        raise AddressNotAllowed()


def _check_access_code(ports: Ports, state: FormState, access_code: str | None) -> None:
    if state.access_code_hash is None:
        return
    if not verify_password(ports, state.access_code_hash, access_code or ""):
        raise AccessCodeInvalid()


def _code_mac(key: bytes, state: FormState, address: str, code: str) -> str:
    message = "\x00".join(
        ("v1", str(state.form_id), address, state.access_code_hash or "", code)
    ).encode()
    return hmac.new(key, message, sha256).hexdigest()


def _code_text(code: str) -> str | None:
    """The code as typed, without the spaces and dashes people add; None if it cannot be one."""
    value = re.sub(r"[\s-]", "", code)
    return value if len(value) == CODE_DIGITS and value.isdigit() and value.isascii() else None


def _limits(ports: Ports, action: str, state: FormState, address: str, ip: str) -> list[Limit]:
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
) -> Iterator[tuple[FormState, str, Actor]]:
    """A person's attempt on a form: counted against the rate limits first (each one may cost
    an argon2 check, a mail or a key), and audited as a refusal if it fails."""
    address = _address(email)
    state = form_state(ports, account_slug, form_slug)
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


def _verify_code(ports: Ports, state: FormState, address: str, code: str) -> int:
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
    from certvault.services.pki.ca import BuiltinIssuer  # the built-in CA, unless told otherwise

    return BuiltinIssuer(ports)


def _chosen_key_type(state: FormState, key_type: str) -> KeyType:
    kind = parse_key_type(key_type.strip().lower())
    if kind not in state.public.key_types:
        allowed = ", ".join(state.public.key_types)
        raise KeyTypeNotAllowed(f"This form allows these key types: {allowed}.")
    return kind


def _chosen_passphrase(
    state: FormState, passphrase: str | None, confirm: str | None
) -> tuple[str, bool]:
    """The p12 passphrase and whether certvault generated it."""
    if passphrase is None and confirm is None:
        return generate_passphrase(), True
    if not state.public.allow_own_passphrase:
        raise OwnPassphraseNotAllowed()
    if not hmac.compare_digest((passphrase or "").encode(), (confirm or "").encode()):
        raise PassphraseMismatch()
    return check_passphrase(passphrase or "", state.public.min_passphrase_length), False


def _given_names(
    state: FormState, first_name: str | None, last_name: str | None
) -> tuple[str, str]:
    """The first and last name the person typed, as the form asks for them ("" when not given)."""
    asked = state.public.ask_name
    if asked == "off":
        if (first_name or "").strip() or (last_name or "").strip():
            raise NameNotAsked()
        return "", ""
    first = persons.given_name(first_name, "first name")
    last = persons.given_name(last_name, "last name")
    persons.name_as_common_name(first, last)  # both fit one CN
    if asked == "required" and not (first and last):
        raise NameRequired()
    return first, last


def _check_secret_id(secret_id: str | None) -> str | None:
    return persons.check_secret_id(secret_id) if secret_id else None


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
    first_name: str | None = None,
    last_name: str | None = None,
    issuer: CertificateIssuer | None = None,
    ip: str = "",
    limiter: RateLimiter | None = None,
) -> EnrollmentResult:
    """Generate the key(s), have them certified, escrow what the profile allows, spend the code,
    and return the p12 (built after commit, from the keys in memory).

    The access code was checked before the code was sent, and the code is bound to it; when it is
    given here too, it is checked again. ``first_name`` and ``last_name`` are taken only when the
    form asks for the name; they fill the person's empty names and make the certificate's CN.
    """
    with _attempt(ports, account_slug, form_slug, email, ip, ENROLL, limiter) as (
        state,
        address,
        actor,
    ):
        kind = _chosen_key_type(state, key_type)
        chosen, generated = _chosen_passphrase(state, passphrase, passphrase_confirm)
        secret = _check_secret_id(secret_id)
        names = _given_names(state, first_name, last_name)
        if access_code is not None:
            _check_access_code(ports, state, access_code)
        code_id = _verify_code(ports, state, address, code)
        # Hashed once the code is known good: argon2 is the costly part of a wrong guess.
        secret_hash = persons.hash_secret_id(ports, secret) if secret else None
        # Outside any transaction: RSA-4096 takes seconds and must not hold a lock.
        keys = [generate_key(kind) for _ in state.public.profiles]
        signer = issuer or _default_issuer(ports)
        issued = ports.db.run(
            lambda session: _issue(
                session, ports, state, actor, address, code_id, keys, secret_hash, signer, names
            )
        )
    # After commit, so the KDF holds no lock; the entries were audited as delivered.
    data = write_pkcs12_entries(
        issued.entries,
        issued.chain,
        chosen,
        EncryptionType.AES256_SHA256,
        # A passphrase certvault generated needs no stretching; a person's own gets the high count.
        kdf_rounds(ports.settings, generated),
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
    state: FormState,
    actor: Actor,
    address: str,
    code_id: int,
    keys: Sequence[PrivateKey],
    secret_hash: str | None,
    issuer: CertificateIssuer,
    names: tuple[str, str] = ("", ""),
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
    # The person's names when they gave theirs; None (the address, as always) when not.
    known = persons.find_by_email(session, account, address) if any(names) else None
    common_name = persons.common_name_for(known, *names)
    for profile, key in zip(state.public.profiles, keys, strict=True):
        made = issuer.issue(
            session, account, IssueRequest(key.public_key(), profile, address, common_name)
        )
        label = f"{address} ({profile.name})" if form.dual_key else address
        if account.key_vault_enabled and profile.escrow:
            entry = archive.archive_entry(
                session,
                ports,
                account,
                actor,
                archive.EscrowRequest(
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
    named: dict[str, object] = {}
    if secret_hash is not None or any(names):
        owner = persons.find_by_email(session, account, address)
        assert owner is not None
        if secret_hash is not None:
            owner.secret_id_hash = secret_hash
        named = persons.fill_empty_names(owner, *names)
    code_row.used_at = now
    code_row.certificate_id = result.certificate_ids[0]
    details = {
        "form": form.slug,
        "profiles": [p.name for p in state.public.profiles],
        "certificate_ids": result.certificate_ids,
        "escrowed": result.escrowed,
    }
    for action, extra in (
        (ENROLL, {"secret_id_set": secret_hash is not None, "names_set": sorted(named)}),
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
