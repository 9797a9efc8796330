"""The Private Key Recovery Form (web/recovery): a person proves, by the account's Recovery
Method, that they hold an address named inside vaulted certificates, then downloads those keys
through the vault's one way out (release.py) as the actor of the release.

The front door of certvault, so: a request answers alike and queues exactly one message whatever
the address is (unknown, another account's, without keys, or with keys); codes, approval links and
page tokens are kept only as MACs under a service key, and the passphrase shown between pages
sealed under another; mail goes through the outbox, never from the request; every step is audited.
Codes go only to an address re-derived from a certificate's DER (DESIGN invariant 8).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto.passphrase import (
    OwnPassphraseNotAllowed,
    PassphraseMismatch,
    check_passphrase,
)
from certvault.crypto.pkcs12.writer import EncryptionType
from certvault.db.models import (
    Account,
    Certificate,
    KeyVaultSettings,
    Person,
    RecoveryRequest,
    new_uuid,
)
from certvault.errors import Conflict, Forbidden, InvalidInput, NotFound
from certvault.services.audit import log as audit
from certvault.services.directory import persons
from certvault.services.directory.certificates import status_of
from certvault.services.kernel import held, keyring, notify
from certvault.services.kernel.actors import Actor, Privilege
from certvault.services.kernel.passwords import is_text, verify_password
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import Limit, RateLimiter, enforce, rate_limiter
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault import person_keys, recovery_rules, release
from certvault.services.vault.archive import KeyVaultDisabled
from certvault.services.vault.profiles import ReleaseFormat

REQUEST = "recovery.request"
VERIFY = "recovery.verify"
LINK = "recovery.link"
APPROVE = "recovery.approve"
REJECT = "recovery.reject"
CHANNEL = "recovery"

CODE_KEY_PURPOSE = "recovery-code"  # MACs of codes, links and page tokens
PASSPHRASE_PURPOSE = "recovery-passphrase"  # noqa: S105 - a key purpose: the passphrase held
CODE_DIGITS = 8
MAX_ATTEMPTS = 5
CODE_LIFETIME = timedelta(minutes=10)
LINK_LIFETIME = timedelta(minutes=30)
PENDING_LIFETIME = timedelta(days=7)
PAGE_LIFETIME = timedelta(minutes=15)
HOUR = 3600
MAX_EMAIL = 320
SUBJECT = "Private key recovery"

METHOD_LABELS = {
    "email_code": "an emailed code",
    "email_code_and_secret": "an emailed code and a Secret ID",
    "admin_approval": "an administrator's approval",
}

T = TypeVar("T")


# --- refusals -------------------------------------------------------------------------------------


class RecoveryFormNotFound(NotFound):
    """There is no Private Key Recovery Form at this address."""

    code = "recovery_form_not_found"


class RecoveryDisabled(Forbidden):
    """Keys of this account are recovered by its administrators; ask them."""

    code = "recovery_disabled"


class CodeInvalid(InvalidInput):
    """The code (or Secret ID) is not right."""

    code = "code_invalid"
    status = 400


class CodeVoid(Conflict):
    """Too many wrong tries: this code no longer works. Ask for a new one."""

    code = "code_void"


class CodeExpired(Conflict):
    """This code has expired. Ask for a new one."""

    code = "code_expired"


class CodeUsed(Conflict):
    """This code was used already. Ask for a new one to recover again."""

    code = "code_used"


class LinkInvalid(Conflict):
    """This link does not work (it was used, has expired, or the request was not approved).
    Ask for recovery again."""

    code = "link_invalid"


class PageExpired(Conflict):
    """This page is no longer valid: start the recovery again."""

    code = "page_expired"


class FormatNotOffered(InvalidInput):
    """Choose one of the formats the page offers."""

    code = "format_invalid"
    status = 400


class NothingChosen(InvalidInput):
    """Choose at least one of the certificates shown."""

    code = "nothing_chosen"
    status = 400


# --- what the pages show --------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryForm:
    """The start page: the account, its method, and whether the form works at all."""

    slug: str
    account_name: str
    key_vault_enabled: bool
    method: str  # "disabled" | one of METHOD_LABELS

    @property
    def open(self) -> bool:
        return self.key_vault_enabled and self.method in METHOD_LABELS

    @property
    def asks_secret(self) -> bool:
        return self.method == "email_code_and_secret"

    @property
    def by_approval(self) -> bool:
        return self.method == "admin_approval"


@dataclass(frozen=True)
class Ticket:
    """What a request hands back to the page: the same kind of answer whatever was found."""

    request_uuid: str


@dataclass(frozen=True)
class Grant:
    """A person who proved they hold the address: the token of their choose-and-download page."""

    token: str
    expires_at: datetime


@dataclass(frozen=True)
class CertificateView:
    id: int
    subject: str
    serial: str
    not_after: datetime
    status: str  # "issued" | "expired" | "revoked"


@dataclass(frozen=True)
class Choices:
    """The choose-and-download page."""

    form: RecoveryForm
    address: str
    certificates: list[CertificateView]
    passphrase: held.HeldPassphrase
    allow_own_passphrase: bool
    min_passphrase_length: int
    approved_by: str


@dataclass(frozen=True)
class Download:
    data: bytes
    filename: str
    media_type: str


# --- small parts ----------------------------------------------------------------------------------


def _address(email: str) -> str:
    address = persons.normalize_email(email)
    local, at, domain = address.rpartition("@")
    if (
        not at
        or not local
        or "." not in domain
        or len(address) > MAX_EMAIL
        or not is_text(address)
        or any(c.isspace() for c in address)
    ):
        raise InvalidInput("Enter the email address your certificate was issued to.")
    return address


def _keys(ports: Ports) -> list[bytes]:
    """The MAC keys of codes, links and page tokens; read before any transaction (the first
    call makes one, in a transaction of its own)."""
    return keyring.service_secrets(ports, CODE_KEY_PURPOSE)


def _mac(keys: list[bytes], *parts: str) -> str:
    return hmac.new(keys[0], "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()


def _matches(keys: list[bytes], stored: str | None, *parts: str) -> bool:
    """Constant-time comparison with the MAC under every key of the purpose."""
    if stored is None:
        return False
    found = False
    for key in keys:
        expected = hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()
        found |= hmac.compare_digest(stored, expected)
    return found


def ticket_of(value: str) -> str:
    """A request's uuid as a page sent it back, or "" when it is not one (never repeated)."""
    try:
        return str(uuid.UUID(value)) if len(value) == 36 else ""
    except ValueError:
        return ""


def _split(token: str) -> tuple[str, str] | None:
    """A link or page token is ``<request uuid>.<random>``: the uuid finds the row."""
    request_uuid, dot, secret = token.partition(".")
    if not dot or not ticket_of(request_uuid) or not 20 <= len(secret) <= 64:
        return None
    if not secret.isascii() or not secret.replace("-", "").replace("_", "").isalnum():
        return None
    return request_uuid, secret


def _person(account_id: int, address: str, ip: str, request: RecoveryRequest | None) -> Actor:
    """The person recovering: the certificates of the request, nothing else."""
    ids = frozenset(int(i) for i in request.certificate_ids.split()) if request else frozenset()
    return Actor(
        name=f"person:{address}"[:320],
        kind="person",
        account_id=account_id,
        ip=ip,
        certificate_ids=ids,
        address=address,
    )


def _method(session: Session, account: Account) -> str:
    row = session.get(KeyVaultSettings, account.id)
    return row.recovery_method if row is not None else "disabled"


def _form(session: Session, account_slug: str) -> tuple[Account, RecoveryForm]:
    try:
        account = get_account(session, account_slug)
    except NotFound:
        raise RecoveryFormNotFound() from None
    return account, RecoveryForm(
        account.slug, account.name, account.key_vault_enabled, _method(session, account)
    )


def public_form(ports: Ports, account_slug: str) -> RecoveryForm:
    with ports.db.read() as session:
        return _form(session, account_slug)[1]


def _limited(ports: Ports, limiter: RateLimiter | None, *limits: Limit) -> None:
    enforce(limiter or rate_limiter(ports.settings, ports.db), *limits)


def _refused(
    ports: Ports, account_id: int | None, actor: Actor, action: str, target: str
) -> AbstractContextManager[None]:
    return audit.refusals_audited(
        ports,
        account_id=account_id,
        actor=actor,
        action=action,
        target_type="recovery_request",
        target_id=target,
    )


# --- 1. the request -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    eligible: list[int]
    refusals: list[str]  # why the other certificates naming the address are not offered


def _find(session: Session, account: Account, address: str) -> _Found:
    """The vaulted certificates whose DER names ``address``, and which of them its holder may
    recover on their own."""
    candidates = session.scalars(
        select(Certificate).where(
            Certificate.account_id == account.id,
            Certificate.key_in_vault,
            # A cheap first cut on the stored copy; the DER decides below.
            Certificate.emails.contains(address),
        )
    ).all()
    trust = recovery_rules.anchors(session, account) if candidates else []
    eligible, refusals = [], []
    for cert in candidates:
        if address not in recovery_rules.addresses_in(cert):
            continue
        owner = session.get(Person, cert.person_id) if cert.person_id is not None else None
        why = recovery_rules.refusal(cert, owner, address, trust)
        if why is None:
            eligible.append(cert.id)
        else:
            refusals.append(why)
    return _Found(eligible, refusals)


def _code() -> str:
    return "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))


def _code_mail(form: RecoveryForm, code: str) -> str:
    minutes = int(CODE_LIFETIME.total_seconds() // 60)
    return (
        f"Your code to recover your private key at {form.account_name} is:\n\n    {code}\n\n"
        f"It works once and expires in {minutes} minutes. After {MAX_ATTEMPTS} wrong tries it "
        "stops working, and you can ask for a new one.\n\n"
        "If you did not ask for it, ignore this message: nothing happens without the code.\n"
    )


def _pending_mail(form: RecoveryForm) -> str:
    return (
        f"We received your request to recover your private key at {form.account_name}.\n\n"
        "An administrator will look at it. If they approve it, you will get a link by mail to "
        "finish the download.\n\n"
        "If you did not ask for it, tell your administrators.\n"
    )


def _refused_mail(form: RecoveryForm) -> str:
    return (
        f"Someone asked to recover the private key of this address at {form.account_name}.\n\n"
        "The keys of this address cannot be recovered with the recovery form. Ask the "
        f"administrators of {form.account_name} to recover them for you.\n\n"
        "If you did not ask for it, you can ignore this message.\n"
    )


def request_recovery(
    ports: Ports,
    account_slug: str,
    email: str,
    ip: str,
    *,
    limiter: RateLimiter | None = None,
) -> Ticket:
    """Ask for recovery. Whatever the address, one request row, one queued message and one audit
    event are written and the same kind of ticket is returned; only the mail's recipient learns
    what was found."""
    with ports.db.read() as session:
        account, form = _form(session, account_slug)
    actor = _person(account.id, email[:MAX_EMAIL], ip, None)
    with _refused(ports, account.id, actor, REQUEST, ""):
        address = _address(email)
        if not form.key_vault_enabled:
            raise KeyVaultDisabled()
        if not form.open:
            raise RecoveryDisabled()
        s = ports.settings
        _limited(
            ports,
            limiter,
            Limit(f"kv-request-ip:{ip}", s.recovery_requests_per_hour_ip, HOUR),
            Limit(
                f"kv-request-email:{account.id}:{address}", s.recovery_requests_per_hour_email, HOUR
            ),
            Limit(f"kv-request-account:{account.id}", s.recovery_requests_per_hour_account, HOUR),
        )
    with ports.db.read() as session:
        found = _find(session, account, address)
    request_uuid = new_uuid()
    now = ports.clock()
    code = _code()  # made for every request, used only when one is sent
    code_mac: str | None = None
    if not found.eligible:
        status = "refused" if found.refusals else "unmatched"
        expires_at = now + CODE_LIFETIME
        body = _refused_mail(form) if found.refusals else _code_mail(form, code)
    elif form.by_approval:
        status, expires_at, body = "pending", now + PENDING_LIFETIME, _pending_mail(form)
    else:
        status, expires_at, body = "code_sent", now + CODE_LIFETIME, _code_mail(form, code)
        code_mac = _mac(_keys(ports), request_uuid, address, code)
    sealed = notify.seal_body(ports, body)

    def work(session: Session) -> None:
        session.add(
            RecoveryRequest(
                uuid=request_uuid,
                account_id=account.id,
                email=address,
                method=form.method,
                status=status,
                certificate_ids=" ".join(str(i) for i in found.eligible),
                code_mac=code_mac,
                ip=ip[:45],
                created_at=now,
                expires_at=expires_at,
            )
        )
        notify.queue_mail(
            session,
            account,
            address,
            SUBJECT,
            sealed,
            discard=status == "unmatched",
            expires_at=expires_at if status != "pending" else None,
        )
        audit.record(
            session,
            ports,
            account=session.get_one(Account, account.id),
            actor=_person(account.id, address, ip, None),
            action=REQUEST,
            outcome="success" if found.eligible else "refused",
            target_type="recovery_request",
            target_id=request_uuid,
            details={
                "method": form.method,
                "status": status,
                "certificates": len(found.eligible),
                "refusals": sorted(set(found.refusals)),
            },
        )

    ports.db.run(work)
    return Ticket(request_uuid)


# --- 2. proving the address: a code, or an approved link ------------------------------------------


def _grant(ports: Ports, keys: list[bytes], row: RecoveryRequest) -> Grant:
    """Open the choose-and-download page for a request just proven (in the caller's
    transaction)."""
    secret = secrets.token_urlsafe(32)
    row.status = "verified"
    row.session_mac = _mac(keys, "page", row.uuid, secret)
    row.session_expires_at = ports.clock() + PAGE_LIFETIME
    return Grant(f"{row.uuid}.{secret}", row.session_expires_at)


def _secret_ok(ports: Ports, session: Session, row: RecoveryRequest, secret_id: str) -> bool:
    """The Secret ID against the owners of the request's certificates: always one argon2 check
    at least, so that a person without a Secret ID answers like a wrong one."""
    hashes = set()
    for cert_id in row.certificate_ids.split():
        cert = session.get(Certificate, int(cert_id))
        owner = session.get(Person, cert.person_id) if cert and cert.person_id else None
        if owner is not None and owner.secret_id_hash:
            hashes.add(owner.secret_id_hash)
    typed = secret_id if is_text(secret_id) and len(secret_id) <= 128 else ""
    candidates: list[str | None] = [*sorted(hashes)] or [None]
    results = [verify_password(ports, h, typed) for h in candidates]
    return any(results) and bool(typed)


def verify_code(
    ports: Ports,
    account_slug: str,
    request_uuid: str,
    email: str,
    code: str,
    ip: str,
    *,
    secret_id: str = "",
    limiter: RateLimiter | None = None,
) -> Grant:
    """Check a mailed code (and the Secret ID where the method asks for one). A wrong try
    counts against the code; after MAX_ATTEMPTS it is void and a new one must be asked for."""
    with ports.db.read() as session:
        account, form = _form(session, account_slug)
    actor = _person(account.id, email[:MAX_EMAIL], ip, None)
    request_uuid = ticket_of(request_uuid)
    with _refused(ports, account.id, actor, VERIFY, request_uuid):
        address = _address(email)
        if not form.open:
            raise RecoveryDisabled()
        s = ports.settings
        _limited(
            ports,
            limiter,
            Limit(f"kv-check-ip:{ip}", s.recovery_checks_per_hour_ip, HOUR),
            Limit(f"kv-check-account:{account.id}", s.recovery_checks_per_hour_account, HOUR),
        )
        typed = code.strip().replace(" ", "")
        keys = _keys(ports)

        def work(session: Session) -> Grant | Exception:
            row = session.scalars(
                select(RecoveryRequest)
                .where(
                    RecoveryRequest.uuid == request_uuid,
                    RecoveryRequest.account_id == account.id,
                )
                .with_for_update()
            ).first()
            if row is None or row.email != address or row.status in ("unmatched", "refused"):
                # Checked like a real code (one argon2 for the Secret ID form), refused alike.
                if form.asks_secret:
                    verify_password(ports, None, secret_id or "")
                return CodeInvalid()
            if row.status == "void":
                return CodeVoid()
            if row.status != "code_sent":
                return CodeUsed()
            if row.expires_at <= ports.clock():
                return CodeExpired()
            right = _matches(keys, row.code_mac, row.uuid, address, typed)
            if form.asks_secret:
                right = _secret_ok(ports, session, row, secret_id) and right
            if not right:
                row.attempts += 1
                if row.attempts >= MAX_ATTEMPTS:
                    row.status = "void"  # locked out: audited as code_void
                    return CodeVoid()
                return CodeInvalid()
            grant = _grant(ports, keys, row)
            audit.record(
                session,
                ports,
                account=session.get_one(Account, account.id),
                actor=_person(account.id, address, ip, row),
                action=VERIFY,
                target_type="recovery_request",
                target_id=row.uuid,
                details={"method": row.method},
            )
            return grant

        # A wrong try is committed (it counts) before it is refused and audited.
        return _raise_or_return(ports.db.run(work))


def _raise_or_return(outcome: T | Exception) -> T:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def open_link(
    ports: Ports, account_slug: str, token: str, ip: str, *, limiter: RateLimiter | None = None
) -> Grant:
    """Finish an approved request from the one-time link mailed to the address."""
    with ports.db.read() as session:
        account, form = _form(session, account_slug)
    parts = _split(token)
    target = parts[0] if parts else ""
    actor = _person(account.id, "", ip, None)
    with _refused(ports, account.id, actor, LINK, target):
        if not form.open:
            raise RecoveryDisabled()
        s = ports.settings
        _limited(ports, limiter, Limit(f"kv-check-ip:{ip}", s.recovery_checks_per_hour_ip, HOUR))
        if parts is None:
            raise LinkInvalid()
        keys = _keys(ports)

        def work(session: Session) -> Grant | Exception:
            row = session.scalars(
                select(RecoveryRequest)
                .where(RecoveryRequest.uuid == parts[0], RecoveryRequest.account_id == account.id)
                .with_for_update()
            ).first()
            if (
                row is None
                or row.status != "approved"
                or row.expires_at <= ports.clock()
                or not _matches(keys, row.link_mac, "link", row.uuid, parts[1])
            ):
                return LinkInvalid()
            grant = _grant(ports, keys, row)
            audit.record(
                session,
                ports,
                account=session.get_one(Account, account.id),
                actor=_person(account.id, row.email, ip, row),
                action=LINK,
                target_type="recovery_request",
                target_id=row.uuid,
                details={"approved_by": row.decided_by},
            )
            return grant

        return _raise_or_return(ports.db.run(work))


# --- 3. choosing and downloading ------------------------------------------------------------------


def _page_row(
    session: Session, ports: Ports, keys: list[bytes], account: Account, token: str
) -> RecoveryRequest:
    parts = _split(token)
    if parts is None:
        raise PageExpired()
    row = session.scalars(
        select(RecoveryRequest).where(
            RecoveryRequest.uuid == parts[0], RecoveryRequest.account_id == account.id
        )
    ).first()
    if (
        row is None
        or row.status != "verified"
        or row.session_expires_at is None
        or row.session_expires_at <= ports.clock()
        or not _matches(keys, row.session_mac, "page", row.uuid, parts[1])
    ):
        raise PageExpired()
    return row


def _offered(session: Session, account: Account, row: RecoveryRequest) -> list[Certificate]:
    """The request's certificates that may still be recovered now (checked again)."""
    trust = recovery_rules.anchors(session, account)
    offered = []
    for cert_id in row.certificate_ids.split():
        cert = session.get(Certificate, int(cert_id))
        if cert is None or cert.account_id != account.id:
            continue
        owner = session.get(Person, cert.person_id) if cert.person_id is not None else None
        if recovery_rules.refusal(cert, owner, row.email, trust) is None:
            offered.append(cert)
    return sorted(offered, key=lambda c: c.not_before, reverse=True)


def choices(ports: Ports, account_slug: str, token: str) -> Choices:
    """The choose-and-download page, with the passphrase it shows: the same one on every showing
    while the page is good (sealed in the request between showings)."""
    keys = _keys(ports)
    with ports.db.read() as session:
        account, form = _form(session, account_slug)
        row = _page_row(session, ports, keys, account, token)
        offered = _offered(session, account, row)
        sealed, request_uuid = row.passphrase_sealed, row.uuid
        address, approved_by = row.email, row.decided_by
        now = ports.clock()
        views = [
            CertificateView(c.id, c.subject, c.serial, c.not_after, status_of(c, now))
            for c in offered
        ]
        allow_own, min_length = account.allow_own_passphrase, account.min_passphrase_length
    passphrase = held.held_passphrase(ports, PASSPHRASE_PURPOSE, request_uuid, sealed)
    if passphrase.sealed != sealed:

        def keep(session: Session) -> None:
            stored = session.scalars(
                select(RecoveryRequest).where(RecoveryRequest.uuid == request_uuid)
            ).one()
            stored.passphrase_sealed = passphrase.sealed

        ports.db.run(keep)
    return Choices(form, address, views, passphrase, allow_own, min_length, approved_by)


@dataclass(frozen=True)
class DownloadChoice:
    certificate_ids: Sequence[int]
    format: str  # "p12" | "mobileconfig"
    encryption: str  # for p12
    own_passphrase: str | None  # None: the one shown
    own_passphrase_confirm: str | None = None


def _checked(choice: DownloadChoice, account: Account, offered: list[Certificate]) -> list[int]:
    """What was chosen, checked before the page is used up, so that a typo costs nothing."""
    if choice.format not in FORMATS:
        raise FormatNotOffered()
    if choice.format == ReleaseFormat.P12:
        EncryptionType.parse(choice.encryption or None)
    ids = {c.id for c in offered}
    chosen = sorted(set(choice.certificate_ids))
    if not chosen or not set(chosen) <= ids:
        # A certificate of someone else in the POST answers like nothing chosen.
        raise NothingChosen()
    if choice.own_passphrase is not None:
        if not account.allow_own_passphrase:
            raise OwnPassphraseNotAllowed()
        if choice.own_passphrase != choice.own_passphrase_confirm:
            raise PassphraseMismatch()
        check_passphrase(choice.own_passphrase, account.min_passphrase_length)
    return chosen


FORMATS = frozenset(ReleaseFormat)


def download(
    ports: Ports, account_slug: str, token: str, choice: DownloadChoice, ip: str
) -> Download:
    """Release the chosen keys to the person: the page is used up first (one download per
    proof), then the release runs as the person through release.release_keys. If the release is
    refused, the page is good again, with the same passphrase."""
    with ports.db.read() as session:
        account, form = _form(session, account_slug)
    actor = _person(account.id, "", ip, None)
    parts = _split(token)
    with _refused(ports, account.id, actor, release.RELEASE, parts[0] if parts else ""):
        keys = _keys(ports)
        with ports.db.read() as session:
            row = _page_row(session, ports, keys, account, token)
            chosen = _checked(choice, account, _offered(session, account, row))
            sealed, row_uuid, method, approver = (
                row.passphrase_sealed,
                row.uuid,
                row.method,
                row.decided_by,
            )
            person = _person(account.id, row.email, ip, row)
        passphrase = choice.own_passphrase
        if passphrase is None:
            if sealed is None:  # never shown: nothing is released under it
                raise PageExpired()
            passphrase = held.open_held(ports, PASSPHRASE_PURPOSE, row_uuid, sealed)
        _use_page(ports, keys, account, token, used=True)
    reason = f"Private Key Recovery Form, by {METHOD_LABELS.get(method, method)}"
    if approver:
        reason += f", approved by {approver}"
    try:
        batch = ports.db.run_request(
            lambda session: release.release_keys(
                ports,
                person,
                account_slug,
                chosen,
                passphrase=passphrase,
                encryption=(
                    choice.encryption or None if choice.format == ReleaseFormat.P12 else None
                ),
                reason=reason,
                channel=CHANNEL,
                # The passphrase the page showed, held sealed on the server: generated by us.
                passphrase_generated=choice.own_passphrase is None,
                format=choice.format,
                session=session,
            )
        )
    except Exception:
        _use_page(ports, keys, account, token, used=False)
        raise
    return _packaged(batch, row_uuid)


def _use_page(ports: Ports, keys: list[bytes], account: Account, token: str, *, used: bool) -> None:
    def work(session: Session) -> None:
        parts = _split(token)
        assert parts is not None
        row = session.scalars(
            select(RecoveryRequest)
            .where(RecoveryRequest.uuid == parts[0], RecoveryRequest.account_id == account.id)
            .with_for_update()
        ).one()
        if used:
            _page_row(session, ports, keys, account, token)  # still good, under the lock
            row.status, row.completed_at = "completed", ports.clock()
        elif row.status == "completed":
            row.status, row.completed_at = "verified", None

    ports.db.run(work)


def _packaged(batch: release.ReleaseBatch, request_uuid: str) -> Download:
    if len(batch.releases) == 1:  # one file, or one profile holding every key
        [item] = batch.releases
        return Download(item.data, item.filename, item.format.media_type)
    return Download(
        person_keys.zip_of(batch), f"recovered-keys-{request_uuid[:8]}.zip", "application/zip"
    )


# --- administrator approval -----------------------------------------------------------------------


@dataclass(frozen=True)
class PendingView:
    uuid: str
    email: str
    created_at: datetime
    ip: str
    certificates: list[CertificateView]


def _approvable(
    session: Session, actor: Actor, account: Account, row: RecoveryRequest
) -> list[Certificate]:
    certs = [session.get(Certificate, int(i)) for i in row.certificate_ids.split()]
    found = [c for c in certs if c is not None and c.account_id == account.id]
    if not found or not all(actor.can_see(account.id, c.organization_id) for c in found):
        raise NotFound("Recovery request not found.")
    return found


def pending_requests(ports: Ports, actor: Actor, account_slug: str) -> list[PendingView]:
    """Requests waiting for an administrator holding recovery_approve (an organization
    administrator sees those whose certificates are all in their organizations)."""
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require(Privilege.RECOVERY_APPROVE, account.id, None)
        now = ports.clock()
        rows = session.scalars(
            select(RecoveryRequest)
            .where(
                RecoveryRequest.account_id == account.id,
                RecoveryRequest.status == "pending",
                RecoveryRequest.expires_at > now,
            )
            .order_by(RecoveryRequest.created_at)
        ).all()
        views = []
        for row in rows:
            try:
                certs = _approvable(session, actor, account, row)
            except NotFound:
                continue
            views.append(
                PendingView(
                    row.uuid,
                    row.email,
                    row.created_at,
                    row.ip,
                    [
                        CertificateView(c.id, c.subject, c.serial, c.not_after, status_of(c, now))
                        for c in certs
                    ],
                )
            )
        return views


def _link_mail(form: RecoveryForm, link: str) -> str:
    minutes = int(LINK_LIFETIME.total_seconds() // 60)
    return (
        f"Your request to recover your private key at {form.account_name} was approved.\n\n"
        f"Open this link to finish the download (it works once, for {minutes} minutes):\n\n"
        f"    {link}\n\n"
        "If you did not ask for it, tell your administrators.\n"
    )


def _rejected_mail(form: RecoveryForm) -> str:
    return (
        f"Your request to recover your private key at {form.account_name} was not approved.\n\n"
        "Ask your administrators if you need the key.\n"
    )


def decide(
    ports: Ports, actor: Actor, account_slug: str, request_uuid: str, *, approve: bool
) -> None:
    """Approve (the person gets a one-time link by mail, to an address inside the certificates)
    or reject a pending request."""
    action = APPROVE if approve else REJECT
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        _, form = _form(session, account_slug)
    request_uuid = ticket_of(request_uuid)
    with _refused(ports, account.id, actor, action, request_uuid):
        actor.require(Privilege.RECOVERY_APPROVE, account.id, None)
        secret = secrets.token_urlsafe(32)
        link = ports.settings.public_url_for(f"/kv/{account.slug}/link/{request_uuid}.{secret}")
        link_mac = _mac(_keys(ports), "link", request_uuid, secret)
        body = _link_mail(form, link) if approve else _rejected_mail(form)
        sealed = notify.seal_body(ports, body)

        def work(session: Session) -> None:
            row = session.scalars(
                select(RecoveryRequest)
                .where(
                    RecoveryRequest.uuid == request_uuid,
                    RecoveryRequest.account_id == account.id,
                )
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound("Recovery request not found.")
            certs = _approvable(session, actor, account, row)
            if row.status != "pending" or row.expires_at <= ports.clock():
                raise Conflict("This request is no longer waiting for a decision.")
            now = ports.clock()
            row.decided_by, row.decided_at = actor.name[:320], now
            if approve:
                row.status, row.expires_at = "approved", now + LINK_LIFETIME
                row.link_mac = link_mac
            else:
                row.status = "rejected"
            notify.queue_mail(
                session,
                account,
                row.email,
                SUBJECT,
                sealed,
                expires_at=row.expires_at if approve else None,
            )
            audit.record(
                session,
                ports,
                account=session.get_one(Account, account.id),
                actor=actor,
                action=action,
                target_type="recovery_request",
                target_id=row.uuid,
                details={"email": row.email, "certificates": [c.id for c in certs]},
            )

        ports.db.run(work)


def requests_waiting(ports: Ports, actor: Actor, account_slug: str) -> int:
    """How many requests wait for this administrator (0 without recovery_approve)."""
    if not actor.is_operator and Privilege.RECOVERY_APPROVE not in actor.privileges:
        return 0
    return len(pending_requests(ports, actor, account_slug))
