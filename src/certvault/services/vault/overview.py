"""An account at a glance, for the console's home page: what the vault holds, what happened
lately, when it was last checked, and what needs attention.

Everything here is counted in the database or read from the audit log; nothing is verified on
the way (a full verification is `certvault verify` or the Audit page's check, and its result is
what the last check shows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from certvault.db.models import Account, AuditEvent, Certificate, Person
from certvault.services.audit.log import chain_of
from certvault.services.audit.reading import canonical_time
from certvault.services.kernel.actors import Actor, Privilege, Role, Scope
from certvault.services.kernel.paging import count_rows
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault import recovery, settings
from certvault.services.vault.release import RELEASE

EXPIRY_WINDOW = timedelta(days=30)
RELEASE_WINDOW = timedelta(days=7)
STALE_CHECK = timedelta(days=7)  # a check older than this is worth running again


@dataclass(frozen=True)
class LastCheck:
    at: datetime
    ok: bool
    summary: str  # e.g. "1,204 events intact"


@dataclass(frozen=True)
class Attention:
    key: str  # stable, for tests and styling
    text: str
    path: str  # the console page that deals with it


@dataclass(frozen=True)
class Overview:
    persons: int
    certificates: int
    keys: int
    expiring: int  # certificates with a key in the vault that expire within EXPIRY_WINDOW
    # Only account administrators read the log: None for the others.
    releases: int | None
    last_audit_check: LastCheck | None
    last_key_check: LastCheck | None
    reads_log: bool
    signing_not_after: datetime | None
    # Recovery requests waiting for this administrator; None without recovery_approve.
    recovery_waiting: int | None = None
    attention: list[Attention] = field(default_factory=list)


def account_overview(ports: Ports, actor: Actor, account_slug: str) -> Overview:
    actor.require_scope(Scope.READ)
    now = ports.clock()
    reads_log = actor.is_operator or actor.role == Role.ACCOUNT
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        visible = _visible(actor, account)
        persons = count_rows(session, select(Person.id).where(*_visible_persons(actor, account)))
        certificates = count_rows(session, select(Certificate.id).where(*visible))
        keys = int(
            session.scalar(
                select(func.count(func.distinct(Certificate.escrowed_key_id))).where(
                    *visible, Certificate.key_in_vault
                )
            )
            or 0
        )
        expiring = count_rows(
            session,
            select(Certificate.id).where(
                *visible,
                Certificate.key_in_vault,
                Certificate.status != "revoked",
                Certificate.not_after >= now,
                Certificate.not_after < now + EXPIRY_WINDOW,
            ),
        )
        releases = audit_check = key_check = None
        if reads_log:
            releases = count_rows(
                session,
                select(AuditEvent.id).where(
                    AuditEvent.chain == chain_of(account),
                    AuditEvent.action == RELEASE,
                    AuditEvent.outcome == "success",
                    AuditEvent.occurred_at >= canonical_time(now - RELEASE_WINDOW),
                ),
            )
            audit_check = _last_check(session, account, "audit.verify")
            key_check = _last_check(session, account, "vault.verify")
    view = settings.get_key_vault_settings(ports, actor, account_slug)
    signing_not_after = view.signing.not_after if view.signing else None
    waiting = None
    if actor.is_operator or Privilege.RECOVERY_APPROVE in actor.privileges:
        waiting = recovery.requests_waiting(ports, actor, account_slug)
    overview = Overview(
        persons,
        certificates,
        keys,
        expiring,
        releases,
        audit_check,
        key_check,
        reads_log,
        signing_not_after,
        waiting,
    )
    overview.attention.extend(_attention(overview, now))
    return overview


def _visible(actor: Actor, account: Account) -> list[ColumnElement[bool]]:
    conditions = [Certificate.account_id == account.id]
    orgs = actor.visible_organizations()
    if orgs is not None:
        conditions.append(Certificate.organization_id.in_(orgs))
    return conditions


def _visible_persons(actor: Actor, account: Account) -> list[ColumnElement[bool]]:
    conditions = [Person.account_id == account.id]
    orgs = actor.visible_organizations()
    if orgs is not None:
        conditions.append(Person.organization_id.in_(orgs))
    return conditions


def _last_check(session: Session, account: Account, action: str) -> LastCheck | None:
    event = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.chain == chain_of(account), AuditEvent.action == action)
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    ).first()
    if event is None:
        return None
    try:
        details = json.loads(event.details)
    except ValueError:
        details = {}
    if not isinstance(details, dict):
        details = {}
    if action == "audit.verify":
        ok = details.get("intact") is True
        summary = f"{details.get('events', '?')} events, " + ("intact" if ok else "broken")
    else:
        ok = event.outcome == "success"
        summary = (
            f"{details.get('keys', '?')} keys, {details.get('failures', '?')} failures"
            if details
            else event.outcome
        )
    at = datetime.fromisoformat(event.occurred_at.replace("Z", "+00:00"))
    return LastCheck(at, ok, summary)


def _attention(overview: Overview, now: datetime) -> list[Attention]:
    found: list[Attention] = []
    waiting = overview.recovery_waiting
    if waiting:
        found.append(
            Attention(
                "recovery",
                f"{waiting} recovery request{'s' if waiting != 1 else ''} waiting for approval.",
                "/admin/recovery",
            )
        )
    if overview.expiring:
        found.append(
            Attention(
                "expiring",
                f"{overview.expiring} certificate{'s' if overview.expiring != 1 else ''} "
                "with a key in the vault expire within 30 days.",
                "/admin/certificates?status=issued&key=yes&sort=expires",
            )
        )
    if overview.reads_log:
        for key, label, check in (
            ("audit-check", "audit log check", overview.last_audit_check),
            ("key-check", "key verification (certvault verify)", overview.last_key_check),
        ):
            if check is None:
                found.append(Attention(key, f"The {label} has never run.", "/admin/audit"))
            elif not check.ok:
                found.append(
                    Attention(key, f"The last {label} failed: {check.summary}.", "/admin/audit")
                )
            elif now - check.at > STALE_CHECK:
                found.append(
                    Attention(key, f"The {label} last ran over 7 days ago.", "/admin/audit")
                )
    if overview.signing_not_after is not None:
        if overview.signing_not_after <= now:
            found.append(
                Attention(
                    "signing", "The profile-signing certificate has expired.", "/admin/key-vault"
                )
            )
        elif overview.signing_not_after - now < EXPIRY_WINDOW:
            found.append(
                Attention(
                    "signing",
                    "The profile-signing certificate expires within 30 days.",
                    "/admin/key-vault",
                )
            )
    return found
