"""Download key: re-authentication, reason, passphrase, encryption type or iOS configuration
profile; the release itself goes through services.vault.release, the vault's one way out.

A file download cannot also show text, so the passphrase certvault generates is made when the
form is shown: it is shown on the page and kept sealed with the form's one-use token until the
form is posted. A form that comes back with an error shows the same passphrase again (or a new
one, said to be new, when it cannot be opened), so that nothing is released under a passphrase
the administrator has not seen. The token also makes a second submission of the same form a
refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import Response

from certvault.crypto.passphrase import (
    OwnPassphraseNotAllowed,
    PassphraseMismatch,
    check_passphrase,
    generate_passphrase,
)
from certvault.crypto.pkcs12.writer import EncryptionType
from certvault.db.models import Account, Certificate
from certvault.errors import CertvaultError, Forbidden, InvalidInput
from certvault.services.access import form_nonces, web_sessions
from certvault.services.directory import certificates, persons
from certvault.services.directory.accounts import account_status
from certvault.services.kernel.actors import Privilege
from certvault.services.kernel.keyring import AccountKeyDestroyed
from certvault.services.kernel.paging import MAX_LIMIT
from certvault.services.kernel.ratelimit import Quota
from certvault.services.vault import person_keys, release
from certvault.services.vault.archive import KeyVaultDisabled
from certvault.services.vault.profiles import ReleaseFormat
from certvault.services.vault.release import MAX_REASON, RELEASE, NoEscrowedKey, ReasonRequired
from certvault.web.admin.console import Console, open_console, post_console
from certvault.web.api.keys import person_keys_zip
from certvault.web.deps import Caller
from certvault.web.limits import download_counter
from certvault.web.pages import error_headers, form_field
from certvault.web.security import CONSOLE_CONTENT_SECURITY_POLICY, apply_page_headers

router = APIRouter(include_in_schema=False)

PRIVILEGE = Privilege.KEY_VAULT_DOWNLOAD
CHANNEL = "console"
MAX_FIELDS = 12
MULTILINE = ("reason",)  # a textarea
ENCRYPTIONS: tuple[tuple[str, str], ...] = (
    (EncryptionType.AES256_SHA256.value, "AES256-SHA256 (default)"),
    (
        EncryptionType.TRIPLEDES_SHA1.value,
        "TripleDES-SHA1 (legacy: old Apple and Windows devices)",
    ),
    # Offered beside the encryptions: one choice of what to download. A profile's PKCS#12 is
    # always TripleDES-SHA1 (services.vault.profiles).
    (ReleaseFormat.MOBILECONFIG.value, "iOS configuration profile (.mobileconfig)"),
)
GENERATED, OWN = "generated", "own"


class PassphraseChoiceInvalid(InvalidInput):
    """Choose the generated passphrase or your own."""

    code = "passphrase_choice_invalid"
    status = 400


@dataclass(frozen=True)
class Target:
    """What a download form releases: one certificate's key, or every key of a person."""

    kind: str  # "certificate" | "person"
    id: int
    organization_ids: frozenset[int]
    certificates: list[Certificate]
    email: str = ""  # the person's

    @property
    def purpose(self) -> str:
        return f"download:{self.kind}:{self.id}"

    @property
    def path(self) -> str:
        plural = "certificates" if self.kind == "certificate" else "persons"
        return f"/admin/{plural}/{self.id}/download"

    @property
    def section(self) -> str:
        return "certificates" if self.kind == "certificate" else "persons"

    def audit_as(self, console: Console) -> form_nonces.AuditAs:
        return form_nonces.AuditAs(console.actor, RELEASE, self.kind, self.id, {"channel": CHANNEL})


@dataclass(frozen=True)
class FormView:
    """The form as shown: its token, and what it asks for."""

    token: str
    account: Account  # its release policy: reason required, own passphrase allowed, length
    ask_reauthentication: bool
    passphrase: str = ""  # the generated one the form holds (opened when the page is shown)
    renewed: bool = False  # the one shown before could not be shown again: this one is new
    reason: str = ""
    encryption: str = EncryptionType.AES256_SHA256.value
    choice: str = GENERATED


# --- what is downloaded ---------------------------------------------------------------------


def _certificate(console: Console, certificate_id: int) -> Target:
    cert = certificates.get_certificate(
        console.ports, console.actor, console.account_slug, certificate_id
    )
    if cert.escrowed_key_id is None:
        raise NoEscrowedKey()
    if not cert.key_in_vault:  # escrowed once, destroyed since: no form to fill in for nothing
        raise AccountKeyDestroyed("This escrowed key was destroyed.")
    return Target("certificate", cert.id, frozenset({cert.organization_id}), [cert])


def _person(console: Console, person_id: int) -> Target:
    person = persons.get_person(console.ports, console.actor, console.account_slug, person_id)
    keys = certificates.list_certificates(
        console.ports,
        console.actor,
        console.account_slug,
        certificates.CertificateFilter(key_vault=True, person_id=person.id),
        limit=MAX_LIMIT,
    ).items
    if not keys:
        raise NoEscrowedKey("This person has no keys in the vault.")
    orgs = frozenset({person.organization_id, *(c.organization_id for c in keys)})
    return Target("person", person.id, orgs, keys, person.email)


def _privileged(console: Console, target: Target) -> bool:
    return all(console.can(PRIVILEGE, org) for org in target.organization_ids)


# --- showing the form -----------------------------------------------------------------------


def _open_form(console: Console, target: Target) -> FormView:
    if not _privileged(console, target):
        # Only a forged request gets here: the pages offer the action to holders only.
        with form_nonces.refusals_audited(console.ports, target.audit_as(console)):
            raise Forbidden(f"This needs the privilege {PRIVILEGE.value}.")
    account = account_status(console.ports, console.actor, console.account_slug)
    if not account.key_vault_enabled:
        raise KeyVaultDisabled()
    passphrase = generate_passphrase()
    token = form_nonces.issue(console.ports, console.session.session_id, target.purpose, passphrase)
    return FormView(
        token,
        account,
        not web_sessions.reauthenticated_recently(console.ports, console.session.session_id),
        passphrase,
    )


def _render(
    console: Console,
    target: Target,
    view: FormView,
    status: int = 200,
    error: CertvaultError | None = None,
) -> Response:
    return console.render(
        "download.html",
        status,
        error_headers(error) if error is not None else None,
        section=target.section,
        target=target,
        view=view,
        encryptions=ENCRYPTIONS,
        max_reason=MAX_REASON,
        error=error.message if error is not None else "",
    )


async def _shown_again(
    console: Console, target: Target, view: FormView, status: int, error: CertvaultError
) -> Response:
    """The posted form with its error, and the passphrase it holds shown again."""
    try:
        kept = await console.call(
            form_nonces.held_passphrase,
            console.ports,
            console.session.session_id,
            target.purpose,
            view.token,
        )
    except CertvaultError as exc:
        return console.error(exc, section=target.section)
    view = replace(view, passphrase=kept.value, renewed=kept.renewed)
    return _render(console, target, view, status, error)


async def _show(
    request: Request, load: Callable[[Console, int], Target], target_id: int
) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    section = "certificates" if load is _certificate else "persons"
    try:
        target = await console.call(load, console, target_id)
        view = await console.call(_open_form, console, target)
    except CertvaultError as exc:
        return console.error(exc, section=section)
    return _render(console, target, view)


# --- posting it -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Choices:
    encryption: EncryptionType | None  # None: a profile's own
    reason: str
    own_passphrase: str | None  # None: the generated one
    format: ReleaseFormat = ReleaseFormat.P12


def _choices(form: FormData, account: Account) -> _Choices:
    """What the form asks for, checked before the form is used up, so that a typo costs no new
    passphrase. services.vault.release checks the same again: it has the last word."""
    choice = form_field(form, "passphrase_choice") or GENERATED
    if choice not in (GENERATED, OWN):
        raise PassphraseChoiceInvalid()
    kind, encryption = _format_and_encryption(form_field(form, "encryption") or None)
    reason = form_field(form, "reason").strip()
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"A reason may have at most {MAX_REASON} characters.")
    if not reason and account.reason_required:
        raise ReasonRequired("This account asks for a reason for every download.")
    own = None
    if choice == OWN:
        if not account.allow_own_passphrase:
            raise OwnPassphraseNotAllowed()
        own = form_field(form, "own_passphrase")
        if own != form_field(form, "own_passphrase_confirm"):
            raise PassphraseMismatch()
        own = check_passphrase(own, account.min_passphrase_length)
    return _Choices(encryption, reason, own, kind)


def _format_and_encryption(value: str | None) -> tuple[ReleaseFormat, EncryptionType | None]:
    """The one select of the form names either a PKCS#12 encryption or the profile format."""
    if value == ReleaseFormat.MOBILECONFIG.value:
        return ReleaseFormat.MOBILECONFIG, None
    return ReleaseFormat.P12, EncryptionType.parse(value)


def _kept(form: FormData, name: str, limit: int) -> str:
    """A field to fill in again when the form is shown again (never a password)."""
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def _checked_choices(
    console: Console, target: Target, form: FormData, account: Account
) -> _Choices:
    with form_nonces.refusals_audited(console.ports, target.audit_as(console)):
        return _choices(form, account)


def _release(
    console: Console,
    target: Target,
    passphrase: str | None,
    choices: _Choices | None,
    generated: bool = False,
    admit: Quota | None = None,
) -> release.ReleaseBatch:
    release_target = (
        release.release_key if target.kind == "certificate" else person_keys.release_person_keys
    )
    # ``generated`` only for the passphrase this form made and held sealed on the server.
    return console.ports.db.run_request(
        lambda session: release_target(
            console.ports,
            console.actor,
            console.account_slug,
            target.id,
            passphrase=passphrase,
            encryption=choices.encryption if choices else None,
            reason=choices.reason if choices else None,
            channel=CHANNEL,
            passphrase_generated=generated,
            admit=admit,
            format=choices.format if choices else None,
            session=session,
        )
    )


def _attachment(target: Target, batch: release.ReleaseBatch) -> Response:
    # One file (a certificate's key, or a profile holding every key of a person) or a zip.
    if target.kind == "certificate" or batch.releases[0].format is ReleaseFormat.MOBILECONFIG:
        [item] = batch.releases
        data, filename, media_type = item.data, item.filename, item.format.media_type
    else:
        data, filename = person_keys_zip(target.id, batch)
        media_type = "application/zip"
    response = Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
    # Cache-Control: no-store and nosniff, as on every page.
    return apply_page_headers(response, CONSOLE_CONTENT_SECURITY_POLICY)


def _load_for_release(
    console: Console, load: Callable[[Console, int], Target], target_id: int
) -> Target:
    """The target of a posted download; one this administrator cannot see (or that does not
    exist) is a refused release, audited as such."""
    kind = "certificate" if load is _certificate else "person"
    refused = form_nonces.AuditAs(console.actor, RELEASE, kind, target_id, {"channel": CHANNEL})
    with form_nonces.refusals_audited(console.ports, refused):
        return load(console, target_id)


async def _download(
    request: Request, load: Callable[[Console, int], Target], target_id: int
) -> Response:
    posted = await post_console(request, max_fields=MAX_FIELDS, multiline=MULTILINE)
    if isinstance(posted, Response):
        return posted
    console, form = posted
    section = "certificates" if load is _certificate else "persons"
    try:
        target = await console.call(_load_for_release, console, load, target_id)
    except CertvaultError as exc:
        return console.error(exc, section=section)
    if not _privileged(console, target):
        # services.vault.release makes (and audits) the refusal; nothing below runs for it.
        try:
            await console.call(_release, console, target, None, None)
        except CertvaultError as exc:
            return console.error(exc, section=section)
        raise AssertionError("a release without the privilege was not refused")
    ports, sid = console.ports, console.session.session_id
    try:
        token = form_field(form, "form_token")
        await console.call(
            form_nonces.check, ports, sid, target.purpose, token, target.audit_as(console)
        )
        account = await console.call(account_status, ports, console.actor, console.account_slug)
    except CertvaultError as exc:
        return console.error(exc, section=section)
    view = FormView(
        token,
        account,
        ask_reauthentication=False,
        reason=_kept(form, "reason", MAX_REASON),
        encryption=_kept(form, "encryption", 32),
        choice=_kept(form, "passphrase_choice", 16) or GENERATED,
    )
    try:
        await console.reauthenticate(form)
    except CertvaultError as exc:
        # The form stays good: nothing was released, the same passphrase still applies.
        view = replace(view, ask_reauthentication=True)
        return await _shown_again(console, target, view, exc.status, exc)
    try:
        choices = await console.call(_checked_choices, console, target, form, account)
    except CertvaultError as exc:
        return await _shown_again(console, target, view, 400, exc)
    try:
        generated = await console.call(
            form_nonces.consume, ports, sid, target.purpose, token, target.audit_as(console)
        )
        passphrase = choices.own_passphrase or generated
        if passphrase is None:
            raise form_nonces.FormInvalid()
        batch = await console.call(
            _release,
            console,
            target,
            passphrase,
            choices,
            choices.own_passphrase is None,
            download_counter(request, Caller(console.actor, console.account_slug)),
        )
    except CertvaultError as exc:
        return console.error(exc, section=section)
    return _attachment(target, batch)


# --- routes ---------------------------------------------------------------------------------


@router.get("/admin/certificates/{certificate_id}/download")
async def certificate_download_form(request: Request, certificate_id: int) -> Response:
    return await _show(request, _certificate, certificate_id)


@router.post("/admin/certificates/{certificate_id}/download")
async def download_certificate_key(request: Request, certificate_id: int) -> Response:
    return await _download(request, _certificate, certificate_id)


@router.get("/admin/persons/{person_id}/download")
async def person_download_form(request: Request, person_id: int) -> Response:
    return await _show(request, _person, person_id)


@router.post("/admin/persons/{person_id}/download")
async def download_person_keys(request: Request, person_id: int) -> Response:
    return await _download(request, _person, person_id)
