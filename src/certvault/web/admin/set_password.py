"""The set-password page an administrator reaches from a mailed reset link (no sign-in).

GET only shows the form (a mail scanner that opens the link does not use it up); POST with the
new password twice, and a current TOTP code where one is set up, uses the link. The rules live
in services/access/password_links.py. Works without JavaScript; the console's CSP.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from certvault.errors import CertvaultError
from certvault.services.access import password_links, password_resets
from certvault.web.admin.console import SCRIPT_PATH, pages
from certvault.web.deps import client_ip, get_limiter, get_ports
from certvault.web.pages import form_field, read_form
from certvault.web.security import Csrf

router = APIRouter(include_in_schema=False)
MAX_FIELDS = 6  # csrf, token, password, password_again, code
PATH = password_resets.PAGE_PATH


@router.get(PATH)
async def set_password_page(request: Request) -> Response:
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    token = request.query_params.get("token", "")
    try:
        link = await run_in_threadpool(
            password_links.check_link, ports, get_limiter(request), token, client_ip(request)
        )
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    # The token goes back only once it was found good: the page never reflects a guess.
    return pages.render(csrf, "set_password.html", link=link, token=token)


@router.post(PATH)
async def set_password(request: Request) -> Response:
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    token = ""
    try:
        form = await read_form(ports, request, max_fields=MAX_FIELDS)
        token = form_field(form, "token")
        password, again = form_field(form, "password"), form_field(form, "password_again")
        code = form_field(form, "code")
        login = await run_in_threadpool(
            password_links.set_password,
            ports,
            get_limiter(request),
            token,
            password,
            again,
            code,
            client_ip(request),
        )
    except password_links.LinkKept as exc:
        if exc.link is None:
            return pages.error(csrf, exc)
        # The form again, with what went wrong; never what was typed.
        return pages.render(
            csrf,
            "set_password.html",
            exc.status,
            link=exc.link,
            token=token,
            error=exc.message,
            script=SCRIPT_PATH,
        )
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    return pages.render(csrf, "set_password.html", link=None, done=True, login=login)
