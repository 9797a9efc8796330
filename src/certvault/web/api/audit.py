"""The account's audit log."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from certvault.services.audit import reading as audit_reading
from certvault.web.api.schemas import ERRORS, AuditEventOut, AuditEventPage, Cursor, Limit
from certvault.web.deps import PortsDep, TokenCaller

router = APIRouter(tags=["audit"], responses=ERRORS)  # type: ignore[arg-type]


def _not_a_number(value: object) -> object:
    # pydantic would read a bare number as seconds since 1970; the schema promises ISO 8601.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise PydanticCustomError("datetime_format", "expected an ISO 8601 date-time")
    return value


Moment = Annotated[datetime | None, BeforeValidator(_not_a_number)]


@router.get(
    "/audit-events",
    response_model=AuditEventPage,
    description="The events of the caller's account, oldest first. Only account administrators "
    "read the audit log (it covers every organization); an organization administrator gets 403. "
    "`since` is inclusive, `until` exclusive; times without a zone are UTC.",
)
def list_audit_events(
    caller: TokenCaller,
    ports: PortsDep,
    action: Annotated[str | None, Query(max_length=64, description="e.g. key.release")] = None,
    target_type: Annotated[str | None, Query(max_length=32)] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Literal["success", "refused", "failure"] | None = None,
    since: Moment = None,
    until: Moment = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> AuditEventPage:
    page = audit_reading.list_events(
        ports,
        caller.actor,
        caller.account_slug,
        audit_reading.EventFilter(action, target_type, target_id, outcome, since, until),
        limit=limit,
        cursor=cursor,
    )
    return AuditEventPage(
        items=[
            AuditEventOut(
                id=e.id,
                seq=e.seq,
                occurred_at=datetime.fromisoformat(e.occurred_at),
                actor=e.actor,
                action=e.action,
                outcome=e.outcome,
                target_type=e.target_type,
                target_id=e.target_id,
                ip=e.ip,
                details=json.loads(e.details),
            )
            for e in page.items
        ],
        next_cursor=page.next_cursor,
    )
