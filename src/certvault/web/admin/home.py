"""The console's home page: the account at a glance (services/vault/overview.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from certvault.errors import CertvaultError
from certvault.services.vault import overview
from certvault.web.admin.console import open_console

router = APIRouter(include_in_schema=False)


@router.get("/admin/")
def home(request: Request) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    try:
        summary = overview.account_overview(console.ports, console.actor, console.account_slug)
    except CertvaultError as exc:
        return console.error(exc)
    # The overview counted the waiting recovery requests already: the navigation shows that.
    counted = {"recovery": summary.recovery_waiting}
    return console.render("home.html", section="home", counted=counted, overview=summary)
