"""Recovery requests page (holders of recovery_approve): the requests of the Private Key Recovery
Form waiting for an administrator's approval, approved or rejected one by one. The rules (who
sees which request, what the person is mailed, the audit) live in services/vault/recovery.py."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from certvault.errors import CertvaultError, InvalidInput
from certvault.services.vault import recovery
from certvault.web.admin.console import NOTICES, open_console, post_console, redirect
from certvault.web.pages import form_field

router = APIRouter(include_in_schema=False)
SECTION = "recovery"
PATH = "/admin/recovery"
DECISIONS = {"approve": True, "reject": False}
MAX_FIELDS = 2  # the CSRF token and the decision

NOTICES.update(
    {
        "recovery_approved": "The request was approved: the person gets a one-time link by mail "
        "to finish the download.",
        "recovery_rejected": "The request was rejected: the person is told by mail.",
    }
)


class DecisionInvalid(InvalidInput):
    """Approve or reject the request."""

    code = "decision_invalid"
    status = 400


@router.get(PATH)
def requests_page(request: Request) -> Response:
    console = open_console(request)
    if isinstance(console, Response):
        return console
    try:
        waiting = recovery.pending_requests(console.ports, console.actor, console.account_slug)
    except CertvaultError as exc:
        return console.error(exc, section=SECTION)
    return console.render("recovery.html", section=SECTION, requests=waiting)


@router.post(PATH + "/{request_uuid}")
async def decide(request: Request, request_uuid: str) -> Response:
    posted = await post_console(request, max_fields=MAX_FIELDS)
    if isinstance(posted, Response):
        return posted
    console, form = posted
    try:
        decision = form_field(form, "decision")
        if decision not in DECISIONS:
            raise DecisionInvalid()
        await console.call(
            recovery.decide,
            console.ports,
            console.actor,
            console.account_slug,
            request_uuid,
            approve=DECISIONS[decision],
        )
    except CertvaultError as exc:
        return console.error(exc, section=SECTION)
    return redirect(
        PATH, notice="recovery_approved" if DECISIONS[decision] else "recovery_rejected"
    )
