"""Admins page (account administrators only): create administrators, set their role,
organizations, privileges and address, mail them a set-password link, reset their TOTP,
deactivate them. The rules (who may
manage, no escalation, no self-lockout, re-authentication before a privilege that releases keys)
live in services/admins.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import Response

from certvault.errors import CertvaultError, InvalidInput
from certvault.services.access import admins, password_resets
from certvault.services.directory import accounts
from certvault.services.kernel.actors import Privilege
from certvault.web.admin.console import NOTICES, Console, open_console, post_console, redirect
from certvault.web.pages import MAX_FIELD, form_field

router = APIRouter(include_in_schema=False)
MAX_FIELDS = 60  # csrf, login, email, role, password fields, and a checkbox per org and privilege
MAX_LIST = 40
# The re-authentication fields: the form's own "password" is the new administrator's.
REAUTH_PREFIX = "current_"
# The same fields of the password-reset form, named apart: both forms are on one page.
RESET_PREFIX = "reset_"

NOTICES.update(
    {
        "admin_updated": "The administrator was changed.",
        "admin_deactivated": "The administrator was deactivated: their sessions ended and their "
        "API tokens were revoked.",
        "admin_totp_reset": "The administrator's TOTP was reset: their next sign-in sets it up "
        "again.",
        "admin_password_reset": "A link to set a new password was mailed to the administrator's "
        "address. Their current password works until they use it; older links no longer work.",
    }
)


def _choices(form: FormData, name: str) -> list[str]:
    """The checked values of checkboxes called ``name``."""
    values = [v for v in form.getlist(name) if isinstance(v, str)]
    if len(values) > MAX_LIST or any(len(v) > MAX_FIELD for v in values):
        raise InvalidInput(f"Too many or too long values for {name}.")
    return values


def _entered(form: FormData) -> dict[str, Any]:
    """What was typed and checked, to show the form again (never a password)."""
    return {
        "login": form_field(form, "login"),
        "email": form_field(form, "email"),
        "role": form_field(form, "role") or "organization",
        "organizations": _choices(form, "organization"),
        "privileges": _choices(form, "privilege"),
    }


async def _organizations(console: Console) -> list[tuple[int, str]]:
    orgs = await console.call(
        accounts.list_organizations, console.ports, console.actor, console.account_slug
    )
    return [(o.id, o.name) for o in orgs]


def _privileges() -> dict[str, Any]:
    return {"labels": admins.PRIVILEGE_LABELS, "privileges": list(Privilege)}


async def _reauthentication(console: Console) -> dict[str, Any]:
    """Whether the forms ask for the password and a code (for a grant that releases keys)."""
    return {
        "ask_reauthentication": not await console.reauthenticated(),
        "reauth_prefix": REAUTH_PREFIX,
        "reset_prefix": RESET_PREFIX,
        "release_labels": [
            admins.PRIVILEGE_LABELS[p] for p in Privilege if p in admins.RELEASE_PRIVILEGES
        ],
    }


async def _confirmed(console: Console, form: FormData, prefix: str = REAUTH_PREFIX) -> bool:
    """Confirm the password and code when the form carries them (the session did not lately);
    whether the session is freshly re-authenticated now. The service decides if it must be."""
    if form_field(form, prefix + "password") or form_field(form, prefix + "code"):
        await console.reauthenticate(form, prefix)
    return await console.reauthenticated()


async def _list_page(
    console: Console, status: int = 200, entered: dict[str, Any] | None = None, **context: Any
) -> Response:
    try:
        rows = await console.call(
            admins.list_admins, console.ports, console.actor, console.account_slug
        )
        orgs = await _organizations(console)
    except CertvaultError as exc:
        return console.error(exc, section="admins")
    return console.render(
        "admins.html",
        status,
        section="admins",
        admins=rows,
        organizations=orgs,
        entered=entered or {"role": "account", "organizations": [], "privileges": []},
        **_privileges(),
        **await _reauthentication(console),
        **context,
    )


async def _admin_page(
    console: Console, admin_id: int, status: int = 200, **context: Any
) -> Response:
    try:
        view = await console.call(
            admins.get_admin, console.ports, console.actor, console.account_slug, admin_id
        )
        orgs = await _organizations(console)
    except CertvaultError as exc:
        return console.error(exc, section="admins")
    return console.render(
        "admin.html",
        status,
        section="admins",
        admin=view,
        organizations=orgs,
        **_privileges(),
        **await _reauthentication(console),
        **context,
    )


@router.get("/admin/admins")
async def admins_page(request: Request) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    return await _list_page(console)


@router.post("/admin/admins")
async def create_admin(request: Request) -> Response:
    posted = await post_console(request, max_fields=MAX_FIELDS)
    if isinstance(posted, Response):
        return posted
    console, form = posted
    entered: dict[str, Any] | None = None
    try:
        entered = _entered(form)
        chosen = form_field(form, "password_choice") == "choose"
        password = form_field(form, "password") if chosen else None
        if chosen and not password:
            raise InvalidInput("Type a password, or let certvault generate one.")
        role = entered["role"]
        reauthenticated = await _confirmed(console, form)
        created = await console.call(
            admins.create_admin,
            console.ports,
            console.actor,
            console.account_slug,
            entered["login"],
            role=role,
            organizations=entered["organizations"] if role == "organization" else (),
            privileges=entered["privileges"],
            password=password,
            email=entered["email"] or None,
            reauthenticated=reauthenticated,
        )
    except CertvaultError as exc:
        return await _list_page(console, exc.status, entered, error=exc.message)
    # The generated password is shown on this answer only (pages are never cached).
    return await _admin_page(
        console, created.admin_id, created=True, password=created.generated_password
    )


@router.get("/admin/admins/{admin_id}")
async def admin_page(request: Request, admin_id: int) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    return await _admin_page(console, admin_id)


@router.post("/admin/admins/{admin_id}")
async def update_admin(request: Request, admin_id: int) -> Response:
    posted = await post_console(request, max_fields=MAX_FIELDS)
    if isinstance(posted, Response):
        return posted
    console, form = posted
    try:
        entered = _entered(form)
        role = entered["role"]
        reauthenticated = await _confirmed(console, form)
        await console.call(
            admins.update_admin,
            console.ports,
            console.actor,
            console.account_slug,
            admin_id,
            role=role,
            organizations=entered["organizations"] if role == "organization" else (),
            privileges=entered["privileges"],
            email=entered["email"] or None,
            reauthenticated=reauthenticated,
        )
    except CertvaultError as exc:
        # A missing administrator gets the error page; anything else the form with its message.
        return await _admin_page(console, admin_id, exc.status, error=exc.message)
    return redirect(f"/admin/admins/{admin_id}", notice="admin_updated")


async def _act(
    request: Request, admin_id: int, action: Callable[..., object], notice: str
) -> Response:
    posted = await post_console(request, max_fields=2)
    if isinstance(posted, Response):
        return posted
    console, _ = posted
    try:
        await console.call(action, console.ports, console.actor, console.account_slug, admin_id)
    except CertvaultError as exc:
        # A missing administrator gets the error page; anything else the form with its message.
        return await _admin_page(console, admin_id, exc.status, error=exc.message)
    return redirect(f"/admin/admins/{admin_id}", notice=notice)


@router.post("/admin/admins/{admin_id}/deactivate")
async def deactivate_admin(request: Request, admin_id: int) -> Response:
    return await _act(request, admin_id, admins.deactivate_admin, "admin_deactivated")


@router.post("/admin/admins/{admin_id}/reset-totp")
async def reset_totp(request: Request, admin_id: int) -> Response:
    return await _act(request, admin_id, admins.reset_admin_totp, "admin_totp_reset")


@router.post("/admin/admins/{admin_id}/reset-password")
async def reset_password(request: Request, admin_id: int) -> Response:
    """Mail the administrator a set-password link; the resetter sees neither it nor the
    password. Needs a fresh confirmation of the resetter's own password and code."""
    posted = await post_console(request, max_fields=4)
    if isinstance(posted, Response):
        return posted
    console, form = posted
    try:
        await console.call(
            password_resets.request_reset,
            console.ports,
            console.actor,
            console.account_slug,
            admin_id,
            reauthenticated=await _confirmed(console, form, RESET_PREFIX),
        )
    except CertvaultError as exc:
        # A missing administrator gets the error page; anything else the form with its message.
        return await _admin_page(console, admin_id, exc.status, error=exc.message)
    return redirect(f"/admin/admins/{admin_id}", notice="admin_password_reset")
