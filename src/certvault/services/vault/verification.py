"""The verification drill: decrypt escrowed keys in memory, validate each in full, and check it
against its certificates. Nothing decrypted ever leaves this module; only counts, key uuids and
reason codes do.

A full pass checks every key. A sample (``sample=N``) checks the next keys after a cursor that
walks the key space in uuid order (random, so a sample is spread over accounts and ages) and a
tenth drawn uniformly at random, so that a key damaged just behind the cursor does not wait a
whole pass; each run also checks again the keys the last run found broken. When the cursor wraps,
every key that existed when its pass began has been checked: a full pass, recorded with its time.
The cursor and those times live in the drill's audit record (drill_record.py), never in a plain
row. One drill runs at a time across nodes (the ``verify`` duty)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from certvault.crypto import keys as keylib
from certvault.db.models import Account, Certificate, EscrowedKey
from certvault.errors import CertvaultError, InvalidInput
from certvault.services.audit import log as audit
from certvault.services.audit.log import INSTALLATION_CHAIN
from certvault.services.kernel import keyring
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.duties import Duty, database_now, duty
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.seals import TamperedRow
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault.drill_record import VERIFY, DrillRecord, read_latest

DUTY = "verify"
RANDOM_SHARE = 10  # one key in ten of a sample is drawn at random
BATCH = 100  # keys read per transaction
KEPT_FAILURES = 100  # broken keys named in the record and checked again by the next run
RENEW_SECONDS = 30.0  # well inside the duty's lease
# What each reason code means, for people (the codes are stable; these words may change).
REASON_TEXT = {
    "cannot_open": "cannot be opened",
    "invalid_key": "decrypts to an invalid key",
    "public_key_mismatch": "public key differs from the one recorded",
    "no_certificate": "no certificate refers to this key",
    "certificate_mismatch": "does not match its certificate",
    "tampered_row": "its account or certificate row fails its seal",
    "missing": "was found broken before and its row is gone",
}


@dataclass(frozen=True)
class DrillFailure:
    account: str
    escrowed_key_uuid: str
    reason: str  # a code of REASON_TEXT
    detail: str = ""  # an error code or certificate id; never key material


@dataclass
class DrillReport:
    keys: int = 0  # keys opened and checked
    certificates: int = 0
    destroyed: int = 0  # destroyed keys met (not failures)
    failures: list[DrillFailure] = field(default_factory=list)
    mode: str = "full"
    rechecked: int = 0  # keys found broken by the last run, checked again
    full_pass: bool = False  # this run completed a pass over every key of the installation
    cursor: str = ""
    previous: DrillRecord = field(default_factory=lambda: DrillRecord("none"))
    last_full_pass_at: str | None = None
    sampled: list[str] = field(default_factory=list)  # a sample's keys (uuids), in visit order

    @property
    def ok(self) -> bool:
        return not self.failures and self.previous.status != "broken"

    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f.reason] = counts.get(f.reason, 0) + 1
        return counts


def verify_escrow(
    ports: Ports, actor: Actor, account_slug: str | None = None, *, sample: int | None = None
) -> DrillReport:
    """Run the drill (a full pass, or a sample of ``sample`` keys), audit it per account and in
    the installation's record. Raises DutyRunning while another node runs it."""
    if sample is not None and sample < 1:
        raise InvalidInput("The sample must be at least 1 key.")
    with duty(ports, DUTY) as held:
        return _Drill(ports, held, account_slug, sample).run(actor)


class _Drill:
    def __init__(self, ports: Ports, held: Duty, account_slug: str | None, sample: int | None):
        self.ports, self.held, self.sample = ports, held, sample
        self.account_slug = account_slug
        self.report = DrillReport(mode="full" if sample is None else "sample")
        self.per_account: dict[int, DrillReport] = {}
        self.slugs: dict[int, str] = {}
        # A sample remembers its keys, so the random draws and the checks again of broken keys
        # skip them; a walk over every key meets each once and keeps nothing (memory stays flat).
        self.seen: set[str] = set()
        self.tracked = sample is not None
        self.scope_id: int | None = None
        self.renewed = time.monotonic()

    def run(self, actor: Actor) -> DrillReport:
        witness = self.ports.audit_heads.read(INSTALLATION_CHAIN)
        with self.ports.db.read() as session:
            previous = read_latest(session, self.ports, witness)
            started = database_now(session)
            scope_id: int | None = None
            scope_uuid = ""
            if self.account_slug:
                account = get_account(session, self.account_slug)
                scope_id, scope_uuid = account.id, account.uuid
                self.scope_id = scope_id
                self.slugs[account.id] = account.slug
            everything = list(session.execute(select(Account.id, Account.slug)))
        self.report.previous = previous
        state = dict(previous.details) if previous.intact else {}
        scope = [EscrowedKey.account_id == scope_id] if scope_id is not None else []
        cursors = state.get("account_cursors")
        cursors = dict(cursors) if isinstance(cursors, dict) else {}
        cursor = _text(cursors.get(scope_uuid) if scope_id is not None else state.get("cursor"))
        wrapped = False
        if self.sample is None:
            self._walk(scope, "", None)
            wrapped = True
        else:
            cursor, wrapped = self._sample(scope, cursor, self.sample)
        self._recheck(state.get("failing"))
        with self.ports.db.read() as session:
            finished = database_now(session)
        # The cursor and the time of the last full pass go on from the record they continue.
        record: dict[str, Any] = {
            "cursor": _text(state.get("cursor")),
            "pass_started_at": _text(state.get("pass_started_at")) or _iso(started),
            "last_full_pass_at": state.get("last_full_pass_at"),
            "last_full_pass_started_at": state.get("last_full_pass_started_at"),
            "account_cursors": cursors,
        }
        if scope_id is not None:
            if self.sample is not None:
                cursors[scope_uuid] = cursor
        else:
            if self.sample is not None:
                record["cursor"] = cursor
            if wrapped:
                self.report.full_pass = True
                record["last_full_pass_at"] = _iso(finished)
                record["last_full_pass_started_at"] = (
                    _iso(started) if self.sample is None else record["pass_started_at"]
                )
                if self.sample is not None:
                    record["pass_started_at"] = _iso(started)
        self.report.cursor = cursor
        self.report.last_full_pass_at = record["last_full_pass_at"]
        if self.sample is None:  # a full pass reports every account in scope, even an empty one
            for account_id, slug in everything:
                if scope_id is None or account_id == scope_id:
                    self.per_account.setdefault(account_id, DrillReport(mode="full"))
                    self.slugs[account_id] = slug
        self._audit(actor, record, started, finished)
        return self.report

    # --- choosing keys ---------------------------------------------------------------------

    def _walk(
        self, scope: list[ColumnElement[bool]], after: str, limit: int | None
    ) -> tuple[str, int]:
        """Visit keys in uuid order after ``after``, at most ``limit`` not yet visited; the last
        uuid read (``""`` when the end of the key space came first) and how many were visited."""
        visited = 0
        while limit is None or visited < limit:
            size = BATCH if limit is None else min(BATCH, limit - visited)
            with self.ports.db.read() as session:
                rows = session.scalars(
                    select(EscrowedKey)
                    .where(*scope, EscrowedKey.uuid > after)
                    .order_by(EscrowedKey.uuid)
                    .limit(size)
                ).all()
                for row in rows:
                    visited += self._visit(session, row)
            if not rows:
                return "", visited
            after = rows[-1].uuid
        return after, visited

    def _sample(self, scope: list[ColumnElement[bool]], cursor: str, n: int) -> tuple[str, bool]:
        """Check ``n`` keys: the next ones after ``cursor`` and a share at random; the new cursor
        and whether it wrapped (a pass is complete)."""
        with self.ports.db.read() as session:
            total = session.scalar(select(func.count(EscrowedKey.id)).where(*scope)) or 0
        if n >= total:  # the whole key space: a pass of its own
            self.tracked = False
            self._walk(scope, "", None)
            return "", True
        at_random = n // RANDOM_SHARE
        in_order = n - at_random
        end, done = self._walk(scope, cursor, in_order)
        wrapped = end == ""
        if wrapped:  # the cursor ran off the end: the pass is complete, the next one begins
            end, _ = self._walk(scope, "", in_order - done)
        drawn, attempts = 0, 0
        while drawn < at_random and attempts < 4 * at_random + 16:
            attempts += 1  # a uniform draw among the keys not visited yet (uuids are uniform)
            with self.ports.db.read() as session:
                query = select(EscrowedKey).where(*scope).order_by(EscrowedKey.uuid).limit(1)
                row = session.scalars(query.where(EscrowedKey.uuid >= str(uuid.uuid4()))).first()
                row = row or session.scalars(query).first()
                if row is not None:
                    drawn += self._visit(session, row)
        if drawn < at_random:  # most keys visited already (a small vault): the next unvisited
            _, got = self._walk(scope, str(uuid.uuid4()), at_random - drawn)
            self._walk(scope, "", at_random - drawn - got)
        return end, wrapped

    def _recheck(self, failing: object) -> None:
        """Check again the keys the last run found broken, whatever this run's scope."""
        if not isinstance(failing, list):
            return
        for item in failing[:KEPT_FAILURES]:
            key_uuid = item.get("key") if isinstance(item, dict) else None
            if not isinstance(key_uuid, str) or key_uuid in self.seen:
                continue
            self.report.rechecked += 1
            with self.ports.db.read() as session:
                row = session.scalars(
                    select(EscrowedKey).where(EscrowedKey.uuid == key_uuid)
                ).first()
                if row is not None:
                    # Untracked, the walk has just checked every key of its scope.
                    outside = self.scope_id is not None and row.account_id != self.scope_id
                    if self.tracked or outside:
                        self._visit(session, row)
                    continue
            self.seen.add(key_uuid)
            self.report.failures.append(
                DrillFailure(_text(item.get("account")), key_uuid, "missing")
            )

    # --- checking one key ------------------------------------------------------------------

    def _visit(self, session: Session, row: EscrowedKey) -> int:
        """Check the key unless this run has already; 1 if it did now."""
        if self.tracked:
            if row.uuid in self.seen:
                return 0
            self.seen.add(row.uuid)
            self.report.sampled.append(row.uuid)
        result = self.per_account.setdefault(row.account_id, DrillReport(mode=self.report.mode))
        outcome = _check(session, self.ports, row)
        if isinstance(outcome, _Destroyed):
            result.destroyed += 1
            self.report.destroyed += 1
        else:
            result.keys += 1
            self.report.keys += 1
            result.certificates += outcome.certificates
            self.report.certificates += outcome.certificates
            if outcome.reason:
                slug = self._slug(session, row.account_id)
                failure = DrillFailure(slug, row.uuid, outcome.reason, outcome.detail)
                result.failures.append(failure)
                self.report.failures.append(failure)
        if time.monotonic() - self.renewed > RENEW_SECONDS:
            self.held.renew()  # DutyLost stops the run: another node has taken it over
            self.renewed = time.monotonic()
        return 1

    def _slug(self, session: Session, account_id: int) -> str:
        if account_id not in self.slugs:
            slug = session.scalar(select(Account.slug).where(Account.id == account_id))
            self.slugs[account_id] = slug or ""
        return self.slugs[account_id]

    # --- the audit -------------------------------------------------------------------------

    def _audit(
        self, actor: Actor, record: dict[str, Any], started: datetime, finished: datetime
    ) -> None:
        report = self.report
        sample = None if self.sample is None else min(self.sample, 2**53)
        shared = {"mode": report.mode, "sample": sample, "cursor": report.cursor}
        for account_id, result in sorted(self.per_account.items()):
            details = {**shared, **_counts(result)}
            _record(self.ports, actor, account_id, result.ok, details, "")
        failing = [
            {"key": f.escrowed_key_uuid, "account": f.account, "reason": f.reason}
            for f in report.failures[:KEPT_FAILURES]
        ]
        summary: dict[str, Any] = {
            **shared,
            **_counts(report),
            "scope": self.account_slug or "installation",
            "rechecked": report.rechecked,
            "full_pass": report.full_pass,
            "started_at": _iso(started),
            "finished_at": _iso(finished),
            **record,
            "failing": failing,
            "previous_record": report.previous.status,
        }
        if report.previous.status == "broken":
            summary["previous_problem"] = report.previous.problem[:300]
        _record(self.ports, actor, None, report.ok, summary, self.account_slug or "installation")


@dataclass(frozen=True)
class _Checked:
    certificates: int
    reason: str | None = None
    detail: str = ""


class _Destroyed:
    pass


def _check(session: Session, ports: Ports, row: EscrowedKey) -> _Checked | _Destroyed:
    if row.destroyed_at is not None:
        return _Destroyed()
    try:
        account = session.get_one(Account, row.account_id)
        certs: Sequence[Certificate] = session.scalars(
            select(Certificate).where(
                Certificate.account_id == row.account_id, Certificate.escrowed_key_id == row.id
            )
        ).all()
    except TamperedRow as exc:
        return _Checked(0, "tampered_row", exc.code)
    try:
        der = keyring.open_private_key(session, ports, account, row)
    except keyring.AccountKeyDestroyed:
        return _Destroyed()
    except CertvaultError as exc:
        return _Checked(len(certs), "cannot_open", exc.code)
    try:
        key = keylib.load_pkcs8_der(der, validate=True)  # the drill validates in full
    except CertvaultError as exc:
        return _Checked(len(certs), "invalid_key", exc.code)
    except ValueError:
        return _Checked(len(certs), "invalid_key")
    if keylib.spki_sha256(key.public_key()) != row.spki_sha256:
        return _Checked(len(certs), "public_key_mismatch")
    if not certs:
        return _Checked(0, "no_certificate")
    for cert in certs:
        if not keylib.key_matches_certificate(key, x509.load_der_x509_certificate(cert.der)):
            return _Checked(len(certs), "certificate_mismatch", f"certificate {cert.id}")
    return _Checked(len(certs))


def _counts(result: DrillReport) -> dict[str, Any]:
    return {
        "keys": result.keys,
        "certificates": result.certificates,
        "destroyed": result.destroyed,
        "failures": len(result.failures),
        "reasons": result.reasons(),
        "failed": [{"key": f.escrowed_key_uuid, "reason": f.reason} for f in result.failures[:20]],
    }


def _record(
    ports: Ports,
    actor: Actor,
    account_id: int | None,
    ok: bool,
    details: dict[str, Any],
    target: str,
) -> None:
    def work(session: Session) -> None:
        audit.record(
            session,
            ports,
            account=session.get_one(Account, account_id) if account_id is not None else None,
            actor=actor,
            action=VERIFY,
            outcome="success" if ok else "failure",
            target_type="escrowed_keys",
            target_id=target,
            details=details,
        )

    ports.db.run(work)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
