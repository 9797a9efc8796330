"""Enrollment forms page: list the account's forms with their public URLs; create, edit,
disable and enable them (services/pki/enrollment_forms.py; the settings_manage privilege)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import Response

from certvault.crypto.profiles import PROFILES, KeyType
from certvault.db.models import EnrollmentForm
from certvault.errors import CertvaultError, InvalidInput
from certvault.services.directory import accounts
from certvault.services.kernel.paging import MAX_ID
from certvault.services.pki import authorities, ca, enrollment_forms
from certvault.web.admin.console import NOTICES, Console, open_console, post_console, redirect
from certvault.web.pages import MAX_FIELD, form_field

router = APIRouter(include_in_schema=False)
MAX_FIELDS = 24
MULTILINE = ("domains",)  # a textarea, one domain a line
_SEPARATORS = re.compile(r"[\s,;]+")

NOTICES.update(
    {
        "form_created": "The enrollment form was created.",
        "form_updated": "The enrollment form was saved.",
        "form_disabled": "The enrollment form was disabled: its page no longer takes enrollments.",
        "form_enabled": "The enrollment form was enabled.",
    }
)


def _entered(form: FormData) -> dict[str, Any]:
    """The posted settings, as typed (shown again on an error; never the access code)."""
    key_types = [v for v in form.getlist("key_type") if isinstance(v, str)]
    if len(key_types) > len(KeyType) or any(len(v) > MAX_FIELD for v in key_types):
        raise InvalidInput("Too many key types.")
    return {
        "slug": form_field(form, "slug").strip(),
        "name": form_field(form, "name"),
        "profile": form_field(form, "profile"),
        "organization": form_field(form, "organization"),
        "domains": form_field(form, "domains"),
        "key_types": key_types,
        "dual_key": form_field(form, "dual_key") == "on",
        "allow_own_passphrase": form_field(form, "allow_own_passphrase") == "on",
        "ask_name": form_field(form, "ask_name") or "off",
    }


def _known_id(form_id: int) -> int:
    # Ids past the database's integer range are nobody's form (and must not reach SQL).
    if not 0 < form_id <= MAX_ID:
        raise enrollment_forms.FormNotFound("Enrollment form not found.")
    return form_id


def _domains(text: str) -> list[str]:
    return [d for d in _SEPARATORS.split(text) if d]


def _shown(form: EnrollmentForm) -> dict[str, Any]:
    return {
        "slug": form.slug,
        "name": form.name,
        "profile": form.profile,
        "organization": str(form.organization_id),
        "domains": "\n".join(form.domains.split()),
        "key_types": form.key_types.split(),
        "dual_key": form.dual_key,
        "allow_own_passphrase": form.allow_own_passphrase,
        "ask_name": form.ask_name,
    }


async def _common(console: Console) -> dict[str, Any]:
    """What every forms page shows: the choices, and whether the account can issue at all."""
    orgs = await console.call(
        accounts.list_organizations, console.ports, console.actor, console.account_slug
    )
    try:
        await console.call(ca.issuing_chain, console.ports, console.actor, console.account_slug)
        has_ca = True
    except authorities.NoIssuingCa:
        has_ca = False
    return {
        "organizations": [(str(o.id), o.name) for o in orgs],
        "profiles": sorted(PROFILES.values(), key=lambda p: p.name),
        "key_types": list(KeyType),
        "has_ca": has_ca,
        "ask_name_choices": enrollment_forms.ASK_NAME,
    }


async def _list_page(
    console: Console, status: int = 200, entered: dict[str, Any] | None = None, **context: Any
) -> Response:
    try:
        rows = await console.call(
            enrollment_forms.list_forms, console.ports, console.actor, console.account_slug
        )
        common = await _common(console)
    except CertvaultError as exc:
        return console.error(exc, section="forms")
    settings = console.ports.settings
    return console.render(
        "forms.html",
        status,
        section="forms",
        forms=[
            (f, enrollment_forms.form_url(settings, console.account_slug, f.slug)) for f in rows
        ],
        organization_names=dict(common["organizations"]),
        entered=entered or {"profile": "smime", "key_types": [], "ask_name": "off"},
        **common,
        **context,
    )


async def _form_page(
    console: Console,
    form_id: int,
    status: int = 200,
    entered: dict[str, Any] | None = None,
    **context: Any,
) -> Response:
    try:
        row = await console.call(
            enrollment_forms.get_form, console.ports, console.actor, console.account_slug, form_id
        )
        common = await _common(console)
    except CertvaultError as exc:
        return console.error(exc, section="forms")
    return console.render(
        "form.html",
        status,
        section="forms",
        form=row,
        url=enrollment_forms.form_url(console.ports.settings, console.account_slug, row.slug),
        entered=entered or _shown(row),
        **common,
        **context,
    )


@router.get("/admin/forms")
async def forms_page(request: Request) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    return await _list_page(console)


@router.post("/admin/forms")
async def create_form(request: Request) -> Response:
    posted = await post_console(request, max_fields=MAX_FIELDS, multiline=MULTILINE)
    if isinstance(posted, Response):
        return posted
    console, form = posted
    entered: dict[str, Any] | None = None
    try:
        entered = _entered(form)
        access_code = form_field(form, "access_code")
        created = await console.call(
            enrollment_forms.create_form,
            console.ports,
            console.actor,
            console.account_slug,
            slug=entered["slug"],
            profile=entered["profile"],
            organization=entered["organization"] or None,
            access_code=access_code or None,
            domains=_domains(entered["domains"]),
            dual_key=entered["dual_key"],
            allow_own_passphrase=entered["allow_own_passphrase"],
            key_types=entered["key_types"],
            name=entered["name"],
            ask_name=entered["ask_name"],
        )
    except CertvaultError as exc:
        return await _list_page(console, exc.status, entered, error=exc.message)
    return redirect(f"/admin/forms/{created.id}", notice="form_created")


@router.get("/admin/forms/{form_id}")
async def form_page(request: Request, form_id: int) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    return await _form_page(console, form_id)


@router.post("/admin/forms/{form_id}")
async def update_form(request: Request, form_id: int) -> Response:
    posted = await post_console(request, max_fields=MAX_FIELDS, multiline=MULTILINE)
    if isinstance(posted, Response):
        return posted
    console, form = posted
    entered: dict[str, Any] | None = None
    try:
        entered = _entered(form)
        access_code = form_field(form, "access_code")
        await console.call(
            enrollment_forms.update_form,
            console.ports,
            console.actor,
            console.account_slug,
            _known_id(form_id),
            name=entered["name"],
            profile=entered["profile"],
            organization=entered["organization"] or None,
            # Write-only: an empty field keeps the code the form has.
            access_code=access_code or None,
            remove_access_code=form_field(form, "remove_access_code") == "on",
            domains=_domains(entered["domains"]),
            key_types=entered["key_types"],
            dual_key=entered["dual_key"],
            allow_own_passphrase=entered["allow_own_passphrase"],
            ask_name=entered["ask_name"],
        )
    except CertvaultError as exc:
        return await _form_page(console, form_id, exc.status, entered, error=exc.message)
    return redirect(f"/admin/forms/{form_id}", notice="form_updated")


async def _set_enabled(request: Request, form_id: int, enabled: bool) -> Response:
    posted = await post_console(request, max_fields=2)
    if isinstance(posted, Response):
        return posted
    console, _ = posted
    try:
        await console.call(
            enrollment_forms.update_form,
            console.ports,
            console.actor,
            console.account_slug,
            _known_id(form_id),
            enabled=enabled,
        )
    except CertvaultError as exc:
        return await _form_page(console, form_id, exc.status, error=exc.message)
    return redirect(
        f"/admin/forms/{form_id}", notice="form_enabled" if enabled else "form_disabled"
    )


@router.post("/admin/forms/{form_id}/disable")
async def disable_form(request: Request, form_id: int) -> Response:
    return await _set_enabled(request, form_id, False)


@router.post("/admin/forms/{form_id}/enable")
async def enable_form(request: Request, form_id: int) -> Response:
    return await _set_enabled(request, form_id, True)
