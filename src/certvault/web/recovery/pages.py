"""The Private Key Recovery Form: the address (step 1), the proof by the account's Recovery
Method (step 2: a mailed code, the code and a Secret ID, or an administrator's approval link),
then the choice of certificates and format and the download (step 3).

Server-rendered like the enrollment pages, under the same stylesheet and strict CSP, with no
script. Every POST carries the CSRF token; every answer is no-store. The page after step 1 is the
same whatever the address (services/vault/recovery.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from jinja2 import ChoiceLoader, PackageLoader
from starlette.datastructures import FormData
from starlette.responses import Response

from certvault.crypto.pkcs12.writer import EncryptionType
from certvault.errors import CertvaultError
from certvault.services.vault import recovery
from certvault.web.deps import client_ip, get_limiter, get_ports
from certvault.web.enroll.pages import STYLESHEET_PATH
from certvault.web.pages import Pages, error_headers, form_field, read_form
from certvault.web.security import CONTENT_SECURITY_POLICY, Csrf, apply_page_headers

router = APIRouter(include_in_schema=False)
pages = Pages("certvault.web.recovery", STYLESHEET_PATH)
# The enrollment pages' layout and error box, shared.
pages.templates.loader = ChoiceLoader(
    [PackageLoader("certvault.web.recovery", "templates"), PackageLoader("certvault.web.enroll")]
)
MAX_FIELDS = 40  # the certificates of one address, and the form's own fields
# (value, label, hint) of each download format the page offers.
FORMATS: tuple[tuple[str, str, str], ...] = (
    (
        "p12-" + EncryptionType.AES256_SHA256.value,
        "PKCS#12 file, AES256-SHA256",
        "for current Windows, macOS, Linux, Thunderbird and Outlook",
    ),
    (
        "p12-" + EncryptionType.TRIPLEDES_SHA1.value,
        "PKCS#12 file, TripleDES-SHA1",
        "for older devices: Windows 7 and earlier, older Apple systems and Android",
    ),
    ("mobileconfig", "iOS configuration profile", "for iPhone and iPad Mail"),
)


@router.get("/kv/{account_slug}")
async def start_page(request: Request, account_slug: str) -> Response:
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    try:
        form = await run_in_threadpool(recovery.public_form, ports, account_slug)
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    return pages.render(csrf, "start.html", form=form, email="")


async def _posted(
    request: Request, account_slug: str
) -> tuple[Csrf, FormData, recovery.RecoveryForm] | Response:
    """A POST's fields and the account's form, the CSRF token checked first."""
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    try:
        data = await read_form(ports, request, max_fields=MAX_FIELDS)
        form = await run_in_threadpool(recovery.public_form, ports, account_slug)
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    return csrf, data, form


@router.post("/kv/{account_slug}/request")
async def ask(request: Request, account_slug: str) -> Response:
    posted = await _posted(request, account_slug)
    if isinstance(posted, Response):
        return posted
    csrf, data, form = posted
    ports = get_ports(request)
    email = ""
    started = time.monotonic()
    try:
        email = form_field(data, "email").strip()
        ticket = await run_in_threadpool(
            lambda: recovery.request_recovery(
                ports, account_slug, email, client_ip(request), limiter=get_limiter(request)
            )
        )
        # The same timing class for every address: no answer before the floor.
        floor = ports.settings.recovery_answer_floor_ms / 1000
        await asyncio.sleep(max(0.0, floor - (time.monotonic() - started)))
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
    return pages.render(csrf, "sent.html", form=form, email=email, ticket=ticket.request_uuid)


@router.post("/kv/{account_slug}/verify")
async def verify(request: Request, account_slug: str) -> Response:
    posted = await _posted(request, account_slug)
    if isinstance(posted, Response):
        return posted
    csrf, data, form = posted
    ports = get_ports(request)
    email = ticket = ""
    try:
        email = form_field(data, "email").strip()
        ticket = recovery.ticket_of(form_field(data, "ticket"))
        grant = await run_in_threadpool(
            lambda: recovery.verify_code(
                ports,
                account_slug,
                ticket,
                email,
                form_field(data, "code"),
                client_ip(request),
                secret_id=form_field(data, "secret_id"),
                limiter=get_limiter(request),
            )
        )
        choices = await run_in_threadpool(recovery.choices, ports, account_slug, grant.token)
    except CertvaultError as exc:
        return pages.render(
            csrf,
            "sent.html",
            exc.status,
            error_headers(exc),
            form=form,
            email=email,
            ticket=ticket,
            error=exc.message,
        )
    return _choose(csrf, choices, grant.token)


@router.get("/kv/{account_slug}/link/{token}")
async def link_page(request: Request, account_slug: str, token: str) -> Response:
    """The approval link only shows a button: a mail scanner that opens links must not use it
    up."""
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    try:
        form = await run_in_threadpool(recovery.public_form, ports, account_slug)
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    return pages.render(csrf, "link.html", form=form, token=token[:200])


@router.post("/kv/{account_slug}/link")
async def open_link(request: Request, account_slug: str) -> Response:
    posted = await _posted(request, account_slug)
    if isinstance(posted, Response):
        return posted
    csrf, data, form = posted
    ports = get_ports(request)
    try:
        grant = await run_in_threadpool(
            lambda: recovery.open_link(
                ports,
                account_slug,
                form_field(data, "token"),
                client_ip(request),
                limiter=get_limiter(request),
            )
        )
        choices = await run_in_threadpool(recovery.choices, ports, account_slug, grant.token)
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    return _choose(csrf, choices, grant.token)


def _choose(
    csrf: Csrf,
    choices: recovery.Choices,
    token: str,
    status: int = 200,
    error: CertvaultError | None = None,
    chosen: Mapping[str, object] | None = None,
) -> Response:
    return pages.render(
        csrf,
        "choose.html",
        status,
        error_headers(error) if error is not None else None,
        form=choices.form,
        choices=choices,
        token=token,
        formats=FORMATS,
        chosen=chosen or {},
        error=error.message if error is not None else "",
    )


def _choice(data: FormData) -> recovery.DownloadChoice:
    ids = []
    for value in data.getlist("certificate"):
        if isinstance(value, str) and value.isdecimal() and len(value) <= 18:
            ids.append(int(value))
        else:
            raise recovery.NothingChosen()
    kind = form_field(data, "format")
    own = form_field(data, "passphrase_choice") == "own"
    p12 = kind.startswith("p12-")
    return recovery.DownloadChoice(
        certificate_ids=ids,
        # Anything else is passed on as it is, and refused as a format not offered.
        format="p12" if p12 else kind,
        encryption=kind.removeprefix("p12-") if p12 else "",
        own_passphrase=form_field(data, "passphrase") if own else None,
        own_passphrase_confirm=form_field(data, "passphrase_confirm") if own else None,
    )


@router.post("/kv/{account_slug}/download")
async def download(request: Request, account_slug: str) -> Response:
    posted = await _posted(request, account_slug)
    if isinstance(posted, Response):
        return posted
    csrf, data, _ = posted
    ports = get_ports(request)
    token = form_field(data, "token")
    try:
        choice = _choice(data)
        got = await run_in_threadpool(
            recovery.download, ports, account_slug, token, choice, client_ip(request)
        )
    except CertvaultError as exc:
        # Shown again with the same passphrase while the page is good; otherwise start again.
        try:
            choices = await run_in_threadpool(recovery.choices, ports, account_slug, token)
        except CertvaultError as gone:
            return pages.error(csrf, gone)
        kept = {
            "certificates": {v for v in data.getlist("certificate") if isinstance(v, str)},
            "format": form_field(data, "format")[:40],
        }
        return _choose(csrf, choices, token, exc.status, exc, kept)
    response = Response(
        got.data,
        media_type=got.media_type,
        headers={"Content-Disposition": f'attachment; filename="{got.filename}"'},
    )
    return apply_page_headers(response, CONTENT_SECURITY_POLICY)
