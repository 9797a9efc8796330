"""What every console page shares: the signed-in session and its actor, forms whose CSRF token is
checked before anything else, the page renderer with the navigation, redirects with a notice.

A GET handler starts with ``open_console(request)``; a POST handler with
``await post_console(request)``. Both return a ``Response`` (the sign-in page, or the error page
of a stale form) when the request cannot go on, and the caller returns it as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from certvault.errors import CertvaultError
from certvault.services.access import web_sessions
from certvault.services.access.web_sessions import SESSION_COOKIE, ConsoleSession, SessionInvalid
from certvault.services.kernel.actors import Actor, Privilege, Role
from certvault.services.kernel.ports import Ports
from certvault.services.vault import recovery
from certvault.web.control_characters import ControlCharacters
from certvault.web.deps import client_ip, get_limiter, get_ports
from certvault.web.pages import Pages, error_headers, form_field, read_form
from certvault.web.security import (
    CONSOLE_CONTENT_SECURITY_POLICY,
    Csrf,
    apply_page_headers,
)

STATIC = Path(__file__).parent / "static"
STYLESHEET_PATH = "/admin/static/admin.css"
SCRIPT_PATH = "/admin/static/admin.js"
pages = Pages("certvault.web.admin", STYLESHEET_PATH, CONSOLE_CONTENT_SECURITY_POLICY)
MAX_FIELDS = 40


@dataclass(frozen=True)
class Section:
    """An entry of the navigation, and who sees it."""

    key: str
    label: str
    path: str
    account_only: bool = False  # account administrators only
    privilege: Privilege | None = None  # holders only
    # How many things wait there for this administrator, shown beside the label.
    waiting: Callable[[Ports, Actor, str], int] | None = None


@dataclass(frozen=True)
class NavigationEntry:
    key: str
    label: str
    path: str
    count: int | None = None  # shown beside the label (what waits there)


NAVIGATION: tuple[Section, ...] = (
    Section("persons", "Persons", "/admin/persons"),
    Section("certificates", "Client Certificates", "/admin/certificates"),
    Section("key-vault", "Key Vault", "/admin/key-vault"),
    Section(
        "recovery",
        "Recovery requests",
        "/admin/recovery",
        privilege=Privilege.RECOVERY_APPROVE,
        waiting=recovery.requests_waiting,
    ),
    Section("about", "About", "/admin/about"),
    Section("audit", "Audit", "/admin/audit", account_only=True),
    Section("admins", "Admins", "/admin/admins", account_only=True),
    Section("forms", "Enrollment forms", "/admin/forms", privilege=Privilege.SETTINGS_MANAGE),
    Section("agents", "Agents", "/admin/agents", account_only=True),
)

# Notices shown after a redirect, by key: the query string never carries text to show.
NOTICES: dict[str, str] = {}

T = TypeVar("T")


def redirect(path: str, notice: str | None = None) -> Response:
    """A 303 to ``path`` (a console path, never taken from the request), with a notice key."""
    assert path.startswith("/admin/")
    if notice is not None:
        assert notice in NOTICES, notice
        path += ("&" if "?" in path else "?") + urlencode({"notice": notice})
    return apply_page_headers(
        RedirectResponse(path, status_code=303), CONSOLE_CONTENT_SECURITY_POLICY
    )


@dataclass(frozen=True)
class Console:
    """One signed-in request: who is asking, from where, and how to answer with a page."""

    request: Request
    ports: Ports
    csrf: Csrf
    session: ConsoleSession
    actor: Actor  # the session's administrator, with this request's address

    @property
    def account_slug(self) -> str:
        return self.session.account_slug

    @property
    def is_account_admin(self) -> bool:
        return self.actor.role == Role.ACCOUNT

    def can(self, privilege: Privilege | str, organization_id: int | None = None) -> bool:
        """Whether the administrator holds ``privilege`` (for that organization, when given)."""
        if not self.actor.can_see(self.session.account_id, organization_id):
            return False
        return Privilege(privilege) in self.actor.privileges

    def render(
        self,
        template: str,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        section: str = "",
        counted: Mapping[str, int | None] | None = None,
        **context: Any,
    ) -> Response:
        """The page; ``counted``: what waits in a section (by key), already counted for this
        page, so that the navigation does not count it again."""
        notice = NOTICES.get(self.request.query_params.get("notice", ""))
        return pages.render(
            self.csrf,
            template,
            status,
            headers,
            console=self.session,
            me=self,
            section=section,
            navigation=self.navigation(counted or {}),
            notice=notice,
            script=SCRIPT_PATH,
            **context,
        )

    def navigation(self, counted: Mapping[str, int | None]) -> list[NavigationEntry]:
        """The sections this administrator may open, with what waits in them."""
        entries = []
        for section in NAVIGATION:
            if section.account_only and not self.is_account_admin:
                continue
            if section.privilege is not None and not self.can(section.privilege):
                continue
            count = counted[section.key] if section.key in counted else self._waiting(section)
            entries.append(NavigationEntry(section.key, section.label, section.path, count))
        return entries

    def _waiting(self, section: Section) -> int | None:
        if section.waiting is None:
            return None
        try:
            return section.waiting(self.ports, self.actor, self.account_slug)
        except CertvaultError:
            return None  # the section's own page says what is wrong

    def error(self, exc: CertvaultError, section: str = "") -> Response:
        return self.render(
            "error.html", exc.status, error_headers(exc), section=section, message=exc.message
        )

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a service call (blocking database and crypto work) off the event loop."""
        return await run_in_threadpool(fn, *args, **kwargs)

    async def reauthenticated(self) -> bool:
        """Whether this session confirmed its password and a code within the last minutes (a
        sign-in does not count)."""
        sid = self.session.session_id
        return await self.call(web_sessions.reauthenticated_recently, self.ports, sid)

    async def reauthenticate(self, form: FormData, prefix: str = "") -> None:
        """Confirm the password and code posted in ``form`` (fields ``<prefix>password`` and
        ``<prefix>code``), unless the session did lately; raises ReauthenticationFailed or
        RateLimited (audited) when they are not right."""
        if await self.reauthenticated():
            return
        await self.call(
            web_sessions.reauthenticate,
            self.ports,
            get_limiter(self.request),
            self.session.session_id,
            form_field(form, prefix + "password"),
            form_field(form, prefix + "code").strip(),
            self.actor.ip,
        )


def _session(request: Request, ports: Ports, csrf: Csrf) -> Console | None:
    try:
        found = web_sessions.current(ports, request.cookies.get(SESSION_COOKIE))
    except SessionInvalid:
        return None
    request.state.actor_name = found.actor.name
    actor = dataclasses.replace(found.actor, ip=client_ip(request))
    return Console(request, ports, csrf, found, actor)


def open_console(request: Request) -> Console | Response:
    """The signed-in console of a GET, or the redirect to the sign-in page."""
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    console = _session(request, ports, csrf)
    return redirect("/admin/login") if console is None else console


async def post_console(
    request: Request,
    *,
    max_fields: int = MAX_FIELDS,
    max_files: int = 0,
    multiline: Collection[str] = (),
) -> tuple[Console, FormData] | Response:
    """The signed-in console of a POST and its fields. The CSRF token is checked first, before
    the session is looked up; a stale or forged form gets the error page (403), a field with
    control characters too (422; only the fields in ``multiline`` may hold line breaks)."""
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    try:
        form = await read_form(
            ports, request, max_fields=max_fields, max_files=max_files, multiline=multiline
        )
    except ControlCharacters as exc:
        # A good form with a bad field: the signed-in administrator's error page.
        console = _session(request, ports, csrf)
        return pages.error(csrf, exc) if console is None else console.error(exc)
    except CertvaultError as exc:
        return pages.error(csrf, exc)
    console = _session(request, ports, csrf)
    if console is None:
        return redirect("/admin/login")
    return console, form


def error_page(request: Request, status: int, message: str) -> Response:
    """The console's error page for what the framework refuses before a page handler runs (an
    id that is not a number, an unknown path): HTML like every other console answer."""
    ports = get_ports(request)
    csrf = Csrf(ports, request)
    console = _session(request, ports, csrf)
    if console is None:
        return pages.render(csrf, "error.html", status, message=message)
    return console.render("error.html", status, message=message)
