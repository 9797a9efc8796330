"""Console sign-in pages: /admin/login, the TOTP enrollment step, /admin/logout, /admin/.

Every POST checks its CSRF token before anything else; the session cookie is a ``__Host-``
cookie (Secure, HttpOnly, SameSite=Strict, Path=/) holding a token the database knows only hashed.
"""

from __future__ import annotations

import segno
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.responses import Response

from certvault.errors import CertvaultError
from certvault.services.access import totp, web_sessions
from certvault.services.access.web_sessions import SESSION_COOKIE, SessionInvalid
from certvault.web.admin.console import (
    SCRIPT_PATH,
    STATIC,
    STYLESHEET_PATH,
    pages,
)
from certvault.web.admin.console import redirect as _redirect
from certvault.web.deps import client_ip, get_limiter, get_ports
from certvault.web.pages import error_headers, form_field, read_form, stylesheet_response
from certvault.web.security import Csrf

router = APIRouter(include_in_schema=False)
MAX_FIELDS = 8


def _set_session(response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, token, secure=True, httponly=True, samesite="strict", path="/"
    )


def _clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, secure=True, httponly=True, samesite="strict", path="/")


async def _checked_form(request: Request) -> FormData:
    """The POST's fields, its CSRF token checked first: before sessions, limits or passwords."""
    return await read_form(get_ports(request), request, max_fields=MAX_FIELDS)


@router.get(STYLESHEET_PATH)
def stylesheet() -> Response:
    return stylesheet_response(STATIC / "admin.css")


@router.get(SCRIPT_PATH)
def script() -> Response:
    return Response(
        (STATIC / "admin.js").read_bytes(),
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/admin/login")
def login_page(request: Request) -> Response:
    csrf = Csrf(get_ports(request), request)
    return pages.render(csrf, "login.html", account_slug="", login="")


@router.post("/admin/login")
async def login(request: Request) -> Response:
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    try:
        form = await _checked_form(request)
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    slug = login_name = ""
    try:
        slug, login_name = form_field(form, "account").strip(), form_field(form, "login").strip()
        password, code = form_field(form, "password"), form_field(form, "code").strip()
        signed = await run_in_threadpool(
            lambda: web_sessions.sign_in(
                ports,
                get_limiter(request),
                account_slug=slug,
                login=login_name,
                password=password,
                code=code,
                ip=client_ip(request),
                previous_token=request.cookies.get(SESSION_COOKIE),
            )
        )
    except CertvaultError as exc:
        return pages.render(
            csrf,
            "login.html",
            exc.status,
            error_headers(exc),
            account_slug=slug,
            login=login_name,
            error=exc.message,
            script=SCRIPT_PATH,
        )
    target = "/admin/totp" if signed.stage == web_sessions.STAGE_ENROLL else "/admin/"
    response = _redirect(target)
    _set_session(response, signed.token)
    return response


@router.get("/admin/totp")
def totp_page(request: Request) -> Response:
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    try:
        pending = web_sessions.pending_totp(ports, request.cookies.get(SESSION_COOKIE))
    except SessionInvalid:
        return _redirect("/admin/login")
    return _totp_page(csrf, pending)


def _totp_page(
    csrf: Csrf, pending: web_sessions.PendingTotp, status: int = 200, error: str = ""
) -> Response:
    qr = segno.make(pending.uri, error="m")
    # segno writes the SVG itself from the URI: nothing in it comes from user input unescaped.
    svg = Markup(qr.svg_inline(scale=4, border=2, omitsize=True))  # noqa: S704
    return pages.render(
        csrf,
        "totp.html",
        status,
        pending=pending,
        qr_svg=svg,
        secret_text=totp.base32_text(pending.secret),
        error=error,
        script=SCRIPT_PATH,
    )


@router.post("/admin/totp")
async def confirm_totp(request: Request) -> Response:
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    token = request.cookies.get(SESSION_COOKIE)
    try:
        form = await _checked_form(request)
        code = form_field(form, "code").strip()
        signed = await run_in_threadpool(
            web_sessions.confirm_totp, ports, token, code, client_ip(request)
        )
    except SessionInvalid:
        return _redirect("/admin/login")
    except web_sessions.SignInFailed as exc:
        pending = await run_in_threadpool(web_sessions.pending_totp, ports, token)
        return _totp_page(csrf, pending, exc.status, exc.message)
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    response = _redirect("/admin/")
    _set_session(response, signed.token)
    return response


@router.post("/admin/logout")
async def logout(request: Request) -> Response:
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    try:
        await _checked_form(request)
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    await run_in_threadpool(
        web_sessions.sign_out, ports, request.cookies.get(SESSION_COOKIE), client_ip(request)
    )
    response = _redirect("/admin/login")
    _clear_session(response)
    return response
