"""About page: version and the account's Key Vault UI URL."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from certvault import __version__
from certvault.services.vault import settings
from certvault.web.admin.console import open_console

router = APIRouter(include_in_schema=False)


@router.get("/admin/about")
def about_page(request: Request) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    return console.render(
        "about.html",
        section="about",
        version=__version__,
        kv_url=settings.key_vault_ui_url(console.ports.settings, console.account_slug),
    )
