"""Key Vault page and its Key Vault Recovery Options dialog."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from certvault.errors import CertvaultError, CryptoError, Forbidden, InvalidInput
from certvault.services.access.admins import PRIVILEGE_LABELS
from certvault.services.kernel.actors import Privilege
from certvault.services.vault import holds, retention, settings
from certvault.services.vault.archive import KeyVaultDisabled
from certvault.services.vault.settings import KeyVaultView, RecoveryOptions
from certvault.web.admin.console import NOTICES, Console, open_console, post_console, redirect
from certvault.web.pages import form_field

router = APIRouter(include_in_schema=False)
NOTICES.update({"key_vault_saved": "The Key Vault Recovery Options were saved."})
SECTION = "key-vault"
# What a person meets at the Private Key Recovery Form under each Recovery Method.
AT_THE_FORM: dict[str, str] = {
    "disabled": "People cannot recover keys on their own: the form tells them to ask their "
    "administrators, who download keys from the Persons or Client Certificates pages.",
    "email_code": "People type their address at the form and get a one-time code by mail, sent "
    "only to an address inside their certificate; with the code they choose their certificates "
    "and download the keys.",
    "email_code_and_secret": "People type their address at the form and get a one-time code by "
    "mail, sent only to an address inside their certificate; they type the code and the Secret ID "
    "set on their person page, then choose their certificates and download the keys.",
    "admin_approval": "People ask at the form; an administrator with "
    f"{PRIVILEGE_LABELS[Privilege.RECOVERY_APPROVE]} approves each request on the Recovery "
    "requests page; the person then gets a one-time link by mail to choose their certificates "
    "and download the keys.",
}
# The largest file the dialog reads; the console's body limit keeps uploads far below it.
MAX_UPLOAD = 1024 * 1024


def _page(
    console: Console,
    view: KeyVaultView,
    *,
    status: int = 200,
    form: RecoveryOptions | None = None,
    error: str = "",
    template: str = "key_vault.html",
) -> Response:
    return console.render(
        template,
        status,
        section=SECTION,
        view=view,
        form=form or view.options(),
        # Shown open when it comes back with an error; otherwise admin.js opens it.
        dialog_open=bool(error),
        error=error,
        recovery_methods=settings.RECOVERY_METHODS,
        past_days=settings.PAST_DAYS,
        at_the_form=AT_THE_FORM.get(view.recovery_method, ""),
        kv_url=settings.key_vault_ui_url(console.ports.settings, console.account_slug),
        retention_policies=retention.list_policies(
            console.ports, console.actor, console.account_slug
        ),
        active_holds=len(
            holds.list_holds(console.ports, console.actor, console.account_slug, active_only=True)
        ),
    )


def _open(request: Request) -> tuple[Console, KeyVaultView] | Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    try:
        view = settings.get_key_vault_settings(console.ports, console.actor, console.account_slug)
    except CertvaultError as exc:
        return console.error(exc, section=SECTION)
    return console, view


@router.get("/admin/key-vault")
def key_vault_page(request: Request) -> Response:
    opened = _open(request)
    if isinstance(opened, Response):
        return opened
    return _page(*opened)


@router.get("/admin/key-vault/edit")
def edit_page(request: Request) -> Response:
    """The dialog's form as a page of its own, for browsers without JavaScript."""
    opened = _open(request)
    if isinstance(opened, Response):
        return opened
    console, view = opened
    if not view.key_vault_enabled:
        return console.error(KeyVaultDisabled(), section=SECTION)
    if not view.can_edit:
        return console.error(
            Forbidden("Only account administrators with settings_manage change these options."),
            section=SECTION,
        )
    return _page(console, view, template="key_vault_edit.html")


def _options(form: FormData) -> RecoveryOptions:
    return RecoveryOptions(
        recovery_method=form_field(form, "recovery_method"),
        sign_profiles=form_field(form, "sign_profiles") == "on",
        unsigned_fallback=form_field(form, "unsigned_fallback") == "on",
        exchange_enabled=form_field(form, "exchange_enabled") == "on",
        exchange_host=form_field(form, "exchange_host"),
        exchange_use_ssl=form_field(form, "exchange_use_ssl") == "on",
        exchange_past_days=form_field(form, "exchange_past_days"),
        exchange_prevent_move=form_field(form, "exchange_prevent_move") == "on",
    )


async def _upload(form: FormData) -> bytes | None:
    """The uploaded signing p12, or None when no file was chosen."""
    upload = form.get("signing_p12")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    data = await upload.read(MAX_UPLOAD + 1)
    return data or None


@router.post("/admin/key-vault/recovery-options")
async def save_recovery_options(request: Request) -> Response:
    posted = await post_console(request, max_files=1)
    if isinstance(posted, Response):
        return posted
    console, form = posted
    options: RecoveryOptions | None = None
    try:
        options = _options(form)
        await console.call(
            settings.update_recovery_options,
            console.ports,
            console.actor,
            console.account_slug,
            options,
            await _upload(form),
            form_field(form, "signing_password"),
        )
    except (InvalidInput, CryptoError) as exc:
        # The page again, the dialog open with the error and what was entered (never the file
        # or its password).
        try:
            view = await console.call(
                settings.get_key_vault_settings, console.ports, console.actor, console.account_slug
            )
        except CertvaultError as again:
            return console.error(again, section=SECTION)
        return _page(console, view, status=exc.status, form=options, error=exc.message)
    except CertvaultError as exc:
        return console.error(exc, section=SECTION)
    return redirect("/admin/key-vault", notice="key_vault_saved")
