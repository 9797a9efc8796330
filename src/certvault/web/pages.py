"""Server-rendered pages: one Jinja2 environment per area (enrollment, console), each page rendered
with its CSRF token and the security headers every page carries (web/security.py)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from certvault.crypto.names import subject_name
from certvault.errors import CertvaultError, InvalidInput
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import RateLimited
from certvault.web.control_characters import refuse_in_form
from certvault.web.security import (
    CONTENT_SECURITY_POLICY,
    CSRF_FIELD,
    Csrf,
    apply_page_headers,
    check_csrf,
)

MAX_FIELD = 1024


async def read_form(
    ports: Ports,
    request: Request,
    *,
    max_fields: int,
    max_files: int = 0,
    multiline: Collection[str] = (),
) -> FormData:
    """The fields of a posted page form: its CSRF token checked first, then every field against
    the control-character rule (only the fields named in ``multiline`` may hold line breaks).
    Every page reads its forms here, so a new field is checked without asking."""
    form = await request.form(max_files=max_files, max_fields=max_fields)
    check_csrf(ports, request, form)
    refuse_in_form(form, multiline)
    return form


def form_field(form: FormData, name: str) -> str:
    """A text field of a posted form: "" when absent, refused when over MAX_FIELD characters."""
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    if len(value) > MAX_FIELD:
        raise InvalidInput(f"A field may have at most {MAX_FIELD} characters.")
    return value


def stylesheet_response(path: Path) -> Response:
    return Response(
        path.read_bytes(),
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def error_headers(exc: CertvaultError) -> dict[str, str]:
    return {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else {}


def short_token(value: str, keep: int = 8) -> str:
    """A long serial number or fingerprint cut to its ends, for a table cell; the full value
    stays on the detail page and in the cell's title."""
    if len(value) <= 2 * keep + 1:
        return value
    return f"{value[:keep]}…{value[-keep // 2 :]}"


class Pages:
    def __init__(
        self, package: str, stylesheet_path: str, csp: str = CONTENT_SECURITY_POLICY
    ) -> None:
        self.templates = Environment(
            loader=PackageLoader(package, "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # Subjects as people read them: the common name in lists, the whole name on details.
        self.templates.filters["subject_label"] = lambda stored: subject_name(stored).label
        self.templates.filters["subject_dn"] = lambda stored: subject_name(stored).dn
        self.templates.filters["short_token"] = short_token
        self.stylesheet_path = stylesheet_path
        self.csp = csp

    def render(
        self,
        csrf: Csrf,
        template: str,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> Response:
        html = self.templates.get_template(template).render(
            stylesheet=self.stylesheet_path, csrf_field=CSRF_FIELD, csrf_token=csrf.token, **context
        )
        response = HTMLResponse(html, status_code=status, headers=dict(headers or {}))
        csrf.set_cookie(response)
        return apply_page_headers(response, self.csp)

    def error(self, csrf: Csrf, exc: CertvaultError) -> Response:
        """The area's error page, with the error's status and a clear message."""
        return self.render(csrf, "error.html", exc.status, error_headers(exc), message=exc.message)
