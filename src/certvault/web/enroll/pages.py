"""The enrollment pages: step 1 (address, access code) mails a one-time code; step 2 (the code, a
key type, a Secret ID, the passphrase) enrolls and shows the result.

The p12 leaves in the response that shows its passphrase, as a ``data:`` download link, and is
kept nowhere on the server once that response is sent: a holder in one worker's memory would miss
a download answered by another worker or node, and one on disk or in the database would store the
key, which must exist only in the delivered file when the vault does not keep it.
"""

from __future__ import annotations

import base64
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import Response

from certvault.errors import CertvaultError
from certvault.services.pki import enrollment, enrollment_forms
from certvault.web.deps import client_ip, get_limiter, get_ports
from certvault.web.pages import Pages, error_headers, form_field, read_form, stylesheet_response
from certvault.web.security import Csrf

router = APIRouter(include_in_schema=False)
STYLESHEET = Path(__file__).parent / "static" / "enroll.css"
# "-" is never an account slug, so this path cannot hide a form.
STYLESHEET_PATH = "/enroll/-/enroll.css"
pages = Pages("certvault.web.enroll", STYLESHEET_PATH)
pages.templates.globals["key_labels"] = {
    "ec256": "EC P-256 (recommended: small and fast)",
    "ec384": "EC P-384",
    "rsa2048": "RSA 2048 (for older programs)",
    "rsa3072": "RSA 3072",
    "rsa4096": "RSA 4096 (slow to create)",
}
MAX_FIELDS = 16


@router.get(STYLESHEET_PATH)
def stylesheet() -> Response:
    return stylesheet_response(STYLESHEET)


def error_page(request: Request, status: int, message: str) -> Response:
    """The error page for what the framework refuses before a page handler runs (a path or
    query with control characters, an unknown path): HTML like every other answer here."""
    return pages.render(Csrf(get_ports(request), request), "error.html", status, message=message)


@router.get("/enroll/{account_slug}/{form_slug}")
async def start_page(request: Request, account_slug: str, form_slug: str) -> Response:
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    try:
        form = await run_in_threadpool(
            enrollment_forms.get_form_public, ports, account_slug, form_slug
        )
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    return pages.render(csrf, "start.html", form=form, email="")


async def _posted(
    request: Request, account_slug: str, form_slug: str
) -> tuple[Csrf, FormData, enrollment_forms.PublicForm] | Response:
    """A POST's fields and its form, the CSRF token checked first; or the page refusing it."""
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    try:
        # No file parts: nothing on these pages uploads a file.
        data = await read_form(ports, request, max_fields=MAX_FIELDS)
        form = await run_in_threadpool(
            enrollment_forms.get_form_public, ports, account_slug, form_slug
        )
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    return csrf, data, form


@router.post("/enroll/{account_slug}/{form_slug}/code")
async def send_code(request: Request, account_slug: str, form_slug: str) -> Response:
    posted = await _posted(request, account_slug, form_slug)
    if isinstance(posted, Response):
        return posted
    csrf, data, form = posted
    ports = get_ports(request)
    email = ""
    try:
        email = form_field(data, "email").strip()
        sent = await run_in_threadpool(
            lambda: enrollment.send_code(
                ports,
                account_slug,
                form_slug,
                email,
                form_field(data, "access_code") or None,
                client_ip(request),
                limiter=get_limiter(request),
            )
        )
    except CertvaultError as exc:
        return pages.render(
            csrf,
            "start.html",
            exc.status,
            error_headers(exc),
            form=form,
            email=email,
            error=exc.message,
        )
    return pages.render(csrf, "code.html", form=form, email=sent.email)


@router.post("/enroll/{account_slug}/{form_slug}/enroll")
async def enroll(request: Request, account_slug: str, form_slug: str) -> Response:
    posted = await _posted(request, account_slug, form_slug)
    if isinstance(posted, Response):
        return posted
    csrf, data, form = posted
    ports = get_ports(request)
    email = key_type = first_name = last_name = ""
    try:
        email, key_type = form_field(data, "email").strip(), form_field(data, "key_type")
        first_name, last_name = form_field(data, "first_name"), form_field(data, "last_name")
        own = form_field(data, "passphrase_choice") == "own"
        result = await run_in_threadpool(
            lambda: enrollment.enroll(
                ports,
                account_slug,
                form_slug,
                email=email,
                code=form_field(data, "code"),
                key_type=key_type,
                secret_id=form_field(data, "secret_id") or None,
                passphrase=form_field(data, "passphrase") if own else None,
                passphrase_confirm=form_field(data, "passphrase_confirm") if own else None,
                first_name=first_name or None,
                last_name=last_name or None,
                ip=client_ip(request),
                limiter=get_limiter(request),
            )
        )
    except CertvaultError as exc:
        return pages.render(
            csrf,
            "code.html",
            exc.status,
            error_headers(exc),
            form=form,
            email=email,
            key_type=key_type,
            first_name=first_name,
            last_name=last_name,
            error=exc.message,
        )
    return pages.render(
        csrf,
        "result.html",
        form=form,
        result=result,
        p12_base64=base64.b64encode(result.p12).decode("ascii"),
    )
