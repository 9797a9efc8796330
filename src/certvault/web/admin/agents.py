"""Agents page (account administrators): the MS agents of the account, their last contact and
template maps, the CA exchange certificate with its expiry, and the trail of archival requests.
Holders of settings_manage register an agent here (its token is shown once); the rules live in
services/pki/agents.py and exchange.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from certvault.errors import CertvaultError, Forbidden
from certvault.services.kernel.actors import Privilege
from certvault.services.pki import agents, exchange
from certvault.web.admin.console import Console, open_console, post_console
from certvault.web.pages import form_field

router = APIRouter(include_in_schema=False)
SECTION = "agents"
PATH = "/admin/agents"
MAX_FIELDS = 2  # the CSRF token and the name
# The page warns this long before the current exchange certificate is replaced.
WARN_BEFORE = timedelta(days=3)


class AccountAdministratorsOnly(Forbidden):
    """Only account administrators see the account's agents."""


def _page(console: Console, status: int = 200, **extra: Any) -> Response:
    if not console.is_account_admin:
        raise AccountAdministratorsOnly()
    ports, actor, slug = console.ports, console.actor, console.account_slug
    status_now = exchange.exchange_status(ports, actor, slug)
    now = ports.clock()
    listed = agents.list_agents(ports, actor, slug)
    renews_soon = status_now.renews_at is not None and status_now.renews_at - now <= WARN_BEFORE
    return console.render(
        "agents.html",
        status,
        section=SECTION,
        agents=listed,
        agent_names=agents.agent_names(ports, actor, slug),
        maps=agents.template_maps(ports, actor, slug),
        requests=agents.recent_requests(ports, actor, slug, limit=50),
        exchange=status_now,
        renews_soon=renews_soon,
        can_manage=console.can(Privilege.SETTINGS_MANAGE, None) and console.is_account_admin,
        **extra,
    )


@router.get(PATH)
async def agents_page(request: Request) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    try:
        return await console.call(_page, console)
    except CertvaultError as exc:
        return console.error(exc, section=SECTION)


@router.post(PATH)
async def create(request: Request) -> Response:
    posted = await post_console(request, max_fields=MAX_FIELDS)
    if isinstance(posted, Response):
        return posted
    console, form = posted
    name = ""
    try:
        name = form_field(form, "name").strip()
        made = await console.call(
            agents.create_agent, console.ports, console.actor, console.account_slug, name
        )
    except CertvaultError as exc:
        try:
            return await console.call(_page, console, exc.status, error=exc.message, name=name)
        except CertvaultError as again:
            return console.error(again, section=SECTION)
    # The token is in this answer only: it is kept as a hash.
    return await console.call(_page, console, created=made)
