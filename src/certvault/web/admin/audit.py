"""Audit page: the account's events, newest first, with filters, and the chain verification."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.datastructures import QueryParams
from starlette.responses import Response

from certvault.db.models import AuditEvent
from certvault.errors import CertvaultError, Forbidden, InvalidInput
from certvault.services.audit import checks as audit_checks
from certvault.services.audit import reading as audit_reading
from certvault.services.kernel.paging import SortedPage
from certvault.web.admin.console import Console, open_console, post_console

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
OUTCOMES = ("success", "refused", "failure")
_MAX = {
    "action": 64,
    "actor": 320,
    "outcome": 16,
    "from": 10,
    "to": 10,
    "sort": 16,
    "cursor": 200,
}
SUMMARY = 80  # characters of an event's details shown before it is opened


@dataclass(frozen=True)
class Filters:
    """The filter fields as typed (shown back in the form), and the query they make."""

    values: dict[str, str]

    @classmethod
    def of(cls, params: QueryParams) -> Filters:
        return cls({name: params.get(name, "").strip() for name in _MAX})

    def event_filter(self) -> audit_reading.EventFilter:
        for name, most in _MAX.items():
            if len(self.values[name]) > most:
                raise InvalidInput(f"The filter {name} has at most {most} characters.")
        outcome = self.values["outcome"]
        if outcome and outcome not in OUTCOMES:
            raise InvalidInput("The outcome is one of: " + ", ".join(OUTCOMES) + ".")
        since, until = _day(self.values["from"]), _day(self.values["to"])
        return audit_reading.EventFilter(
            outcome=outcome or None,
            since=datetime.combine(since, time()) if since else None,
            # "to" names a whole day: events up to its end.
            until=datetime.combine(until, time()) + timedelta(days=1) if until else None,
            action_prefix=self.values["action"] or None,
            actor_prefix=self.values["actor"] or None,
        )

    @property
    def sort(self) -> str:
        return self.values["sort"] or "newest"

    def link(self, cursor: str | None = None, sort: str | None = None) -> str:
        kept = {k: v for k, v in self.values.items() if v and k not in ("cursor", "sort")}
        chosen = sort or self.sort
        if chosen != "newest":
            kept["sort"] = chosen
        return "/admin/audit?" + urlencode({**kept, **({"cursor": cursor} if cursor else {})})

    def time_sort_link(self) -> str:
        """The first page in the other order of time."""
        return self.link(sort="oldest" if self.sort == "newest" else "newest")


def _day(text: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput("A date looks like 2025-01-31.") from None


def _shown(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "seq": event.seq,
        # Stored as canonical RFC 3339 text; shown to the second.
        "time": event.occurred_at[:19].replace("T", " ") + " UTC",
        "actor": event.actor,
        "action": event.action,
        "outcome": event.outcome,
        "target": f"{event.target_type} {event.target_id}".strip(),
        "ip": event.ip,
        "details": (details := _details_text(event.details)),
        "summary": _summary(details),
    }


def _summary(details: str) -> str:
    """The details on one short line, for the table; the whole text opens below it."""
    line = " · ".join(part for part in details.splitlines() if part)
    return line if len(line) <= SUMMARY else line[: SUMMARY - 1] + "…"


def _details_text(stored: str) -> str:
    """The event's details as "key: value" lines (values as JSON); the stored text if it is
    not a JSON object (it may have been tampered with)."""
    try:
        details = json.loads(stored)
    except ValueError:
        return stored
    if not isinstance(details, dict):
        return stored
    return "\n".join(
        f"{key}: {value if isinstance(value, str) else json.dumps(value)}"
        for key, value in details.items()
    )


async def _page(console: Console, filters: Filters, status: int = 200, **context: Any) -> Response:
    """The page with the events ``filters`` select; a bad filter is shown with the empty list."""
    error = context.pop("error", None)
    page: SortedPage[AuditEvent] = SortedPage([], None, None)
    total = 0
    actions: list[str] = []
    try:
        actions = await console.call(
            audit_reading.known_actions, console.ports, console.actor, console.account_slug
        )
        if error is None:
            wanted = filters.event_filter()
            page = await console.call(
                audit_reading.sorted_events,
                console.ports,
                console.actor,
                console.account_slug,
                wanted,
                filters.sort,
                limit=PAGE_SIZE,
                cursor=filters.values["cursor"] or None,
            )
            total = await console.call(
                audit_reading.count_events,
                console.ports,
                console.actor,
                console.account_slug,
                wanted,
            )
    except Forbidden as exc:
        return console.error(exc, section="audit")
    except CertvaultError as exc:
        # A filter or cursor the page did not offer is the request's fault: 400, as on the
        # Persons and Client Certificates pages.
        status = 400 if isinstance(exc, InvalidInput) else exc.status
        error = exc.message
    return console.render(
        "audit.html",
        status,
        section="audit",
        events=[_shown(e) for e in page.items],
        next_link=filters.link(page.next_cursor) if page.next_cursor else None,
        previous_link=filters.link(page.previous_cursor) if page.previous_cursor else None,
        first_link=filters.link() if filters.values["cursor"] else None,
        time_sort_link=filters.time_sort_link(),
        sort=filters.sort,
        total=total,
        filters=filters.values,
        outcomes=OUTCOMES,
        actions=actions,
        error=error,
        **context,
    )


@router.get("/admin/audit")
async def audit_page(request: Request) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    return await _page(console, Filters.of(request.query_params))


@router.post("/admin/audit/verify")
async def verify_chain(request: Request) -> Response:
    posted = await post_console(request, max_fields=2)
    if isinstance(posted, Response):
        return posted
    console, _ = posted
    try:
        check = await console.call(
            audit_checks.verify_account_chain, console.ports, console.actor, console.account_slug
        )
    except CertvaultError as exc:
        return console.error(exc, section="audit")
    return await _page(console, Filters.of(QueryParams()), check=check)
