"""Retention: escrowed keys destroyed N days after their certificates expire, and
crypto-shredding of a whole account (DESIGN.md §4).

A policy says "destroy N days after the certificate expires" for an account, or for the
certificates issued under one profile within it (which then wins over the account's; a profile
set to off keeps its keys). A key shared by renewals is due only when EVERY certificate using it
is past its own not_after + N; a certificate with no policy keeps its key forever. Held keys
(holds.py) are never destroyed. The database's clock decides, never a node's.

Destroying a key wipes its ciphertext and wrapped data key and sets ``destroyed_at``; the row
stays, so its certificates still point at it and the console says "destroyed". Each destruction
leaves a sealed record (which key, which certificates, when, under which policy) and an audit
event. Backups taken before still hold the key (docs/retention.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from certvault.crypto.profiles import PROFILES
from certvault.db.models import (
    Account,
    AccountKey,
    Certificate,
    EscrowedKey,
    KeyDestruction,
    RetentionPolicy,
)
from certvault.errors import CertvaultError, InvalidInput
from certvault.services.audit import log as audit
from certvault.services.kernel import seals
from certvault.services.kernel.actors import Actor, Scope
from certvault.services.kernel.duties import database_now, duty
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault.holds import (
    ActiveHolds,
    LegalHoldActive,
    active_holds,
    count_active,
    lock_account,
    require_operator,
)

MAX_DAYS = 36_500  # a hundred years; anything longer is "off"
BATCH = 500
RETENTION = "retention"  # a destruction's cause: a retention policy
SHREDDING = "account destroy-keys"  # a destruction's cause: the account's keys destroyed
DESTROY = "key.destroy"


class InvalidDays(InvalidInput):
    """Days must be a whole number from 0 to 36500, or off."""

    code = "invalid_days"


class UnknownProfile(InvalidInput):
    """No such profile."""

    code = "unknown_profile"


def parse_days(text: str | int | None) -> int | None:
    """Days as typed: a whole number 0..MAX_DAYS, or "off" (None)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip() if text is not None else ""
        if raw.lower() == "off":
            return None
        if not raw.isascii() or not raw.isdigit() or len(raw) > 6:
            raise InvalidDays(f"Days must be a whole number from 0 to {MAX_DAYS}, or off.")
        value = int(raw)
    if not 0 <= value <= MAX_DAYS:
        raise InvalidDays(f"Days must be a whole number from 0 to {MAX_DAYS}, or off.")
    return value


def check_profile(name: str | None) -> str | None:
    if name is None:
        return None
    if name not in PROFILES:
        raise UnknownProfile(f"Unknown profile; one of: {', '.join(sorted(PROFILES))}.")
    return name


# --- policies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyView:
    profile: str | None  # None: the account's default
    days: int | None  # None: off, kept forever
    updated_by: str
    updated_at: datetime

    @property
    def scope(self) -> str:
        return f"profile {self.profile}" if self.profile else "account"

    @property
    def rule(self) -> str:
        if self.days is None:
            return "off: kept forever"
        return f"destroyed {self.days} days after the certificate expires"


def _view(row: RetentionPolicy) -> PolicyView:
    return PolicyView(row.profile, row.days, row.updated_by, row.updated_at)


def _policy_row(session: Session, account: Account, profile: str | None) -> RetentionPolicy | None:
    query = select(RetentionPolicy).where(RetentionPolicy.account_id == account.id)
    if profile is None:
        query = query.where(RetentionPolicy.profile.is_(None))
    else:
        query = query.where(RetentionPolicy.profile == profile)
    return session.scalars(query.order_by(RetentionPolicy.id)).first()


def set_policy(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    *,
    days: str | int | None,
    profile: str | None = None,
) -> PolicyView:
    """Set the account's policy, or one profile's within it (``days`` None: off)."""
    require_operator(actor)
    value = parse_days(days)
    profile = check_profile(profile)

    def work(session: Session) -> PolicyView:
        account = get_account(session, account_slug)
        lock_account(session, account)  # one row per account and profile
        now = database_now(session)
        row = _policy_row(session, account, profile)
        before = None if row is None else row.days
        if row is None:
            row = RetentionPolicy(
                account_id=account.id,
                profile=profile,
                created_by=actor.name[:320],
                created_at=now,
            )
            session.add(row)
        row.days, row.updated_by, row.updated_at = value, actor.name[:320], now
        session.flush()
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="retention.set",
            target_type="retention_policy",
            target_id=row.uuid,
            details={"profile": profile, "days": value, "before": before},
        )
        return _view(row)

    return ports.db.run(work)


def clear_policy(ports: Ports, actor: Actor, account_slug: str, *, profile: str | None) -> bool:
    """Remove the account's policy, or one profile's (which then follows the account's)."""
    require_operator(actor)
    profile = check_profile(profile)

    def work(session: Session) -> bool:
        account = get_account(session, account_slug)
        lock_account(session, account)
        row = _policy_row(session, account, profile)
        if row is None:
            return False
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="retention.clear",
            target_type="retention_policy",
            target_id=row.uuid,
            details={"profile": profile, "days": row.days},
        )
        session.delete(row)
        return True

    return ports.db.run(work)


def list_policies(ports: Ports, actor: Actor, account_slug: str) -> list[PolicyView]:
    """The account's policy first, then the profiles'."""
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        return [_view(row) for row in _policies(session, account)]


def _policies(session: Session, account: Account) -> list[RetentionPolicy]:
    rows = session.scalars(
        select(RetentionPolicy).where(RetentionPolicy.account_id == account.id)
    ).all()
    return sorted(rows, key=lambda r: (r.profile is not None, r.profile or ""))


# --- when a key is due --------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    """A certificate using a key, as the policy sees it."""

    id: int
    sha256: bytes
    not_after: datetime
    profile: str | None
    person_id: int | None


@dataclass(frozen=True)
class Due:
    at: datetime  # when the last certificate using the key is past its retention
    profile: str | None  # the policy that decided that time: a profile's, or the account's
    days: int


def days_for(use: Use, policies: dict[str | None, int | None]) -> tuple[str | None, int] | None:
    """The policy that applies to a certificate, as (profile or None, days); None: kept."""
    if use.profile is not None and use.profile in policies:
        days = policies[use.profile]
        return None if days is None else (use.profile, days)
    days = policies.get(None)
    return None if days is None else (None, days)


def due_at(uses: Sequence[Use], policies: dict[str | None, int | None]) -> Due | None:
    """When a key is due: once every certificate using it is past its own not_after + N.
    None when any of them has no policy (its key is kept forever), or no certificate uses it."""
    latest: Due | None = None
    for use in uses:
        found = days_for(use, policies)
        if found is None:
            return None
        profile, days = found
        at = use.not_after + timedelta(days=days)
        if latest is None or at > latest.at:
            latest = Due(at, profile, days)
    return latest


# --- the run ------------------------------------------------------------------------------------


@dataclass
class AccountRun:
    slug: str
    due: int = 0  # keys due, held ones included
    destroyed: int = 0
    held: int = 0  # due but held back by a legal hold
    refused: int = 0  # left alone: a certificate using them failed its integrity check


@dataclass
class RunReport:
    dry_run: bool
    accounts: list[AccountRun] = field(default_factory=list)
    at: datetime | None = None  # the database's time the run went by

    @property
    def due(self) -> int:
        return sum(a.due for a in self.accounts)

    @property
    def destroyed(self) -> int:
        return sum(a.destroyed for a in self.accounts)

    @property
    def held(self) -> int:
        return sum(a.held for a in self.accounts)

    @property
    def refused(self) -> int:
        return sum(a.refused for a in self.accounts)


def run_retention(
    ports: Ports,
    actor: Actor,
    account_slug: str | None = None,
    *,
    dry_run: bool = False,
    batch: int = BATCH,
) -> RunReport:
    """Destroy every escrowed key that is due and not held, in batches (one transaction each).
    One run at a time across nodes (the "retention" duty); a rerun destroys nothing twice."""
    require_operator(actor)
    report = RunReport(dry_run)
    with ports.db.read() as session:
        if account_slug is not None:
            slugs = [get_account(session, account_slug).slug]
        else:
            slugs = list(
                session.scalars(
                    select(Account.slug)
                    .where(Account.id.in_(select(RetentionPolicy.account_id)))
                    .order_by(Account.id)
                )
            )
    if dry_run:
        for slug in slugs:
            report.accounts.append(_run_account(ports, actor, slug, report, True, batch, None))
        return report
    with duty(ports, "retention") as held:
        for slug in slugs:
            report.accounts.append(
                _run_account(ports, actor, slug, report, False, batch, held.renew)
            )
    return report


def _run_account(
    ports: Ports,
    actor: Actor,
    slug: str,
    report: RunReport,
    dry_run: bool,
    batch: int,
    renew: Callable[[], None] | None,
) -> AccountRun:
    run = AccountRun(slug)
    after = 0
    while True:
        last, counts = ports.db.run(
            partial(
                _batch,
                ports=ports,
                actor=actor,
                slug=slug,
                after=after,
                size=batch,
                report=report,
                dry_run=dry_run,
            )
        )
        run.due += counts.due
        run.held += counts.held
        run.refused += counts.refused
        run.destroyed += counts.destroyed
        if last is None:
            break
        after = last
        if renew is not None:
            renew()  # between batches: a run that lost its lock stops here
    if run.destroyed and not dry_run:

        def summary(session: Session) -> None:
            account = get_account(session, slug)
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action="retention.run",
                details={"due": run.due, "destroyed": run.destroyed, "held": run.held},
            )

        ports.db.run(summary)
    return run


def _batch(
    session: Session,
    ports: Ports,
    actor: Actor,
    slug: str,
    after: int,
    size: int,
    report: RunReport,
    dry_run: bool,
) -> tuple[int | None, AccountRun]:
    """One batch of candidate keys after id ``after``: the last id looked at (None when there
    were none) and what became of them."""
    counts = AccountRun(slug)
    account = get_account(session, slug)
    if not dry_run:
        lock_account(session, account)
    now = database_now(session)
    report.at = now
    policies = {row.profile: row.days for row in _policies(session, account)}
    shortest = min((d for d in policies.values() if d is not None), default=None)
    if shortest is None:
        return None, counts
    # A cheap first cut in SQL: keys whose certificates all expired at least the shortest
    # retention ago. The rules above decide, per certificate, below.
    candidates = [
        key_id
        for key_id in session.scalars(
            select(Certificate.escrowed_key_id)
            .join(EscrowedKey, EscrowedKey.id == Certificate.escrowed_key_id)
            .where(
                Certificate.account_id == account.id,
                EscrowedKey.destroyed_at.is_(None),
                Certificate.escrowed_key_id > after,
            )
            .group_by(Certificate.escrowed_key_id)
            .having(func.max(Certificate.not_after) <= now - timedelta(days=shortest))
            .order_by(Certificate.escrowed_key_id)
            .limit(size)
        )
        if key_id is not None
    ]
    if not candidates:
        return None, counts
    if not dry_run:
        # The keys first, then who uses them: an archival linking a renewal to one of them
        # (archive.py reads the key FOR SHARE) either commits before, and is seen below, or
        # waits and then finds the key destroyed.
        session.execute(
            select(EscrowedKey.id).where(EscrowedKey.id.in_(candidates)).with_for_update()
        )
    with seals.lenient(session) as refused:
        certs = list(
            session.scalars(
                select(Certificate).where(
                    Certificate.account_id == account.id,
                    Certificate.escrowed_key_id.in_(candidates),
                )
            )
        )
    bad_keys = {c.escrowed_key_id for c in refused if isinstance(c, Certificate)}
    holds = active_holds(session, account)
    uses: dict[int, list[Use]] = {}
    for c in certs:
        if c.escrowed_key_id is not None:
            uses.setdefault(c.escrowed_key_id, []).append(
                Use(c.id, c.sha256, c.not_after, c.profile, c.person_id)
            )
    due: list[tuple[int, Due]] = []
    for key_id in candidates:
        if key_id in bad_keys:
            counts.refused += 1
            continue
        found = due_at(uses.get(key_id, []), policies)
        if found is None or found.at > now:
            continue
        counts.due += 1
        if _held(uses[key_id], holds):
            counts.held += 1
            continue
        due.append((key_id, found))
    if due and not dry_run:
        counts.destroyed = _destroy(
            session,
            ports,
            actor,
            account,
            now,
            {key_id: (uses[key_id], found) for key_id, found in due},
            RETENTION,
            per_key_events=True,
        )
    return candidates[-1], counts


def _held(uses: Sequence[Use], holds: ActiveHolds) -> bool:
    return any(holds.covers(u.id, u.person_id) for u in uses)


def _destroy(
    session: Session,
    ports: Ports,
    actor: Actor,
    account: Account,
    now: datetime,
    keys: dict[int, tuple[Sequence[Use], Due | None]],
    cause: str,
    *,
    per_key_events: bool,
) -> int:
    """Wipe ``keys`` (those not destroyed yet) and leave a record of each; the number wiped."""
    if not keys:
        return 0
    rows = session.execute(
        select(EscrowedKey.id, EscrowedKey.uuid, EscrowedKey.spki_sha256).where(
            EscrowedKey.id.in_(list(keys)), EscrowedKey.destroyed_at.is_(None)
        )
    ).all()
    live = [row.id for row in rows]
    if not live:
        return 0
    overwrite_freed(session)
    result = session.execute(
        update(EscrowedKey)
        .where(EscrowedKey.id.in_(live), EscrowedKey.destroyed_at.is_(None))
        .values(ciphertext=b"", wrapped_data_key=b"", destroyed_at=now)
    )
    if result.rowcount != len(live):  # type: ignore[attr-defined]
        # Another writer destroyed some of them meanwhile (the duty should make this
        # impossible): give up this batch, a rerun finds the rest.
        raise seals.RowChanged()
    planned = []
    for row in rows:
        uses, found = keys[row.id]
        certificates = [
            {
                "id": u.id,
                "sha256": u.sha256.hex(),
                "not_after": u.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            for u in sorted(uses, key=lambda u: u.id)
        ]
        record = KeyDestruction(
            account_id=account.id,
            escrowed_key_id=row.id,
            key_uuid=row.uuid,
            spki_sha256=row.spki_sha256.hex(),
            certificates=json.dumps(certificates, separators=(",", ":")),
            destroyed_at=now,
            cause=cause,
            policy_profile=found.profile if found else None,
            policy_days=found.days if found else None,
            destroyed_by=actor.name[:320],
        )
        session.add(record)
        if per_key_events:
            details: dict[str, Any] = {
                "spki_sha256": record.spki_sha256,
                "certificates": [c["sha256"] for c in certificates],
                "cause": cause,
                "policy": found.profile or "account" if found else None,
                "days": found.days if found else None,
            }
            planned.append(
                audit.Planned(
                    DESTROY, target_type="escrowed_key", target_id=row.uuid, details=details
                )
            )
    session.flush()
    audit.record_many(session, ports, account=account, actor=actor, planned=planned)
    return len(live)


def overwrite_freed(session: Session) -> None:
    """On SQLite, have the bytes a wipe frees overwritten with zeros, not left in free space in
    the database file (the connection keeps the setting). PostgreSQL keeps old row versions
    until VACUUM reuses them (docs/retention.md)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("PRAGMA secure_delete = ON"))


# --- crypto-shredding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShredPlan:
    slug: str
    account_key_versions: int  # alive, to be destroyed
    escrowed_keys: int  # not yet destroyed
    active_holds: int


@dataclass(frozen=True)
class ShredResult:
    slug: str
    account_key_versions: int
    escrowed_keys: int
    at: datetime  # the database's time; backups taken before it still hold the keys


SHRED = "account.destroy_keys"


def shred_plan(ports: Ports, actor: Actor, account_slug: str) -> ShredPlan:
    """What `account destroy-keys` would destroy, and whether a hold stops it."""
    require_operator(actor)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        versions = session.scalar(
            select(func.count(AccountKey.id)).where(
                AccountKey.account_id == account.id, AccountKey.destroyed_at.is_(None)
            )
        )
        keys = session.scalar(
            select(func.count(EscrowedKey.id)).where(
                EscrowedKey.account_id == account.id, EscrowedKey.destroyed_at.is_(None)
            )
        )
        return ShredPlan(
            account.slug, int(versions or 0), int(keys or 0), count_active(session, account)
        )


def destroy_account_keys(ports: Ports, actor: Actor, account_slug: str) -> ShredResult:
    """Crypto-shredding: every account-key version of the account wiped and marked destroyed,
    and every escrowed key of it with them, in one transaction; refused while any legal hold of
    the account is active. Afterwards nothing of the account opens from the live system, and the
    account takes no new keys."""
    require_operator(actor)
    account_id: int | None = None  # known once read, for the refusal's chain

    def work(session: Session) -> ShredResult:
        nonlocal account_id
        account = get_account(session, account_slug)
        account_id = account.id
        lock_account(session, account)
        active = count_active(session, account)
        if active:
            raise LegalHoldActive(
                f"{active} legal hold{'s are' if active != 1 else ' is'} active in this account;"
                " nothing was destroyed. See `certvault hold list`."
            )
        now = database_now(session)
        overwrite_freed(session)
        versions = session.execute(
            update(AccountKey)
            .where(AccountKey.account_id == account.id, AccountKey.destroyed_at.is_(None))
            .values(wrapped_key=b"", destroyed_at=now)
        ).rowcount  # type: ignore[attr-defined]
        destroyed = 0
        after = 0
        while True:
            ids = list(
                session.scalars(
                    select(EscrowedKey.id)
                    .where(
                        EscrowedKey.account_id == account.id,
                        EscrowedKey.destroyed_at.is_(None),
                        EscrowedKey.id > after,
                    )
                    .order_by(EscrowedKey.id)
                    .limit(BATCH)
                )
            )
            if not ids:
                break
            after = ids[-1]
            uses: dict[int, list[Use]] = {key_id: [] for key_id in ids}
            for c in session.execute(
                select(
                    Certificate.id,
                    Certificate.sha256,
                    Certificate.not_after,
                    Certificate.profile,
                    Certificate.person_id,
                    Certificate.escrowed_key_id,
                ).where(
                    Certificate.account_id == account.id,
                    Certificate.escrowed_key_id.in_(ids),
                )
            ):
                uses[c.escrowed_key_id].append(
                    Use(c.id, c.sha256, c.not_after, c.profile, c.person_id)
                )
            destroyed += _destroy(
                session,
                ports,
                actor,
                account,
                now,
                {key_id: (found, None) for key_id, found in uses.items()},
                SHREDDING,
                per_key_events=False,
            )
        # The account keys of this transaction's cache are gone with their rows.
        session.info.pop("certvault_account_keys", None)
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action=SHRED,
            target_type="account",
            target_id=account.uuid,
            details={
                "account_key_versions": int(versions or 0),
                "escrowed_keys": destroyed,
                "destroyed_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        )
        return ShredResult(account.slug, int(versions or 0), destroyed, now)

    try:
        return ports.db.run(work)
    except CertvaultError as exc:
        audit.record_refusal(
            ports,
            account_id=account_id,
            actor=actor,
            action=SHRED,
            reason_code=exc.code,
            target_type="account",
            target_id=account_slug[:64],
        )
        raise


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DestructionView:
    key_uuid: str
    spki_sha256: str
    certificates: list[dict[str, Any]]
    destroyed_at: datetime
    cause: str
    policy_profile: str | None
    policy_days: int | None
    destroyed_by: str

    @property
    def under(self) -> str:
        if self.cause == SHREDDING:
            return "account destroy-keys (all keys of the account)"
        scope = f"of profile {self.policy_profile}" if self.policy_profile else "of the account"
        return f"the retention policy {scope}, {self.policy_days} days after expiry"


def destructions_of(
    ports: Ports, actor: Actor, account_slug: str, escrowed_key_ids: Sequence[int]
) -> dict[int, DestructionView]:
    """The destruction records of these keys, by key id (those destroyed)."""
    actor.require_scope(Scope.READ)
    if not escrowed_key_ids:
        return {}
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        rows = session.scalars(
            select(KeyDestruction).where(
                KeyDestruction.account_id == account.id,
                KeyDestruction.escrowed_key_id.in_(list(escrowed_key_ids)),
            )
        )
        return {row.escrowed_key_id: _destruction(row) for row in rows}


def list_destructions(
    ports: Ports, actor: Actor, account_slug: str, *, limit: int = 1000
) -> list[DestructionView]:
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        rows = session.scalars(
            select(KeyDestruction)
            .where(KeyDestruction.account_id == account.id)
            .order_by(KeyDestruction.id)
            .limit(limit)
        )
        return [_destruction(row) for row in rows]


def _destruction(row: KeyDestruction) -> DestructionView:
    return DestructionView(
        row.key_uuid,
        row.spki_sha256,
        json.loads(row.certificates),
        row.destroyed_at,
        row.cause,
        row.policy_profile,
        row.policy_days,
        row.destroyed_by,
    )
