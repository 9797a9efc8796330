"""The record of the verification drills: the newest ``vault.verify`` event of the installation's
audit chain, read only once its MAC and every link from it to the audit witness verify.

Why the audit chain and not a table of its own: the drill's state (the cursor that walks the key
space, the time of the last full pass, the keys found broken) decides what the next drill checks
and what every node's ``/metrics`` says. The database is not trusted (DESIGN.md §5.10): a row
saying "verified yesterday, all well" could be written to hide a broken key. An audit event is
MAC'd through the master-key provider, so it cannot be forged or edited; walking from it to the
witness outside the database proves that no newer drill event was cut off or hidden, so an older
good result cannot stand in for a newer bad one. A record that does not verify is reported as
broken and never believed: the metrics say not-ok and the next drill starts a new pass.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db.models import AuditEvent
from certvault.services.audit.log import INSTALLATION_CHAIN, audit_key, continues, event_mac
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.witness import ChainHead

VERIFY = "vault.verify"
# Stable reason codes of a key that fails the drill (also the labels of the failure metric).
REASONS = (
    "cannot_open",
    "invalid_key",
    "public_key_mismatch",
    "no_certificate",
    "certificate_mismatch",
    "tampered_row",
    "missing",
)


@dataclass(frozen=True)
class DrillRecord:
    """What the newest drill recorded. ``status``: ``intact`` (verified), ``none`` (no drill has
    run) or ``broken`` (the record or the chain after it does not verify; ``problem`` says why)."""

    status: str
    details: dict[str, Any] = field(default_factory=dict)
    problem: str = ""

    @property
    def intact(self) -> bool:
        return self.status == "intact"

    @property
    def ok(self) -> bool:
        # A run that found the record before it broken is not ok either, though its keys were.
        d = self.details
        return self.intact and d.get("failures") == 0 and d.get("previous_record") != "broken"

    def time(self, name: str) -> datetime | None:
        value = self.details.get(name) if self.intact else None
        if not isinstance(value, str) or not value:
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None

    def number(self, name: str) -> int:
        value = self.details.get(name) if self.intact else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def reasons(self) -> dict[str, int]:
        found = self.details.get("reasons") if self.intact else None
        counts = {reason: 0 for reason in REASONS}
        if isinstance(found, dict):
            for reason, count in found.items():
                if reason in counts and isinstance(count, int):
                    counts[reason] = count
        return counts


def _broken(problem: str) -> DrillRecord:
    return DrillRecord("broken", problem=problem)


def read_latest(session: Session, ports: Ports, witness: ChainHead | None) -> DrillRecord:
    """The newest drill record, proven by the chain from it to ``witness`` (read before the rows:
    it is written after its commit, so the rows read now hold it at least)."""
    key = audit_key(session, ports)
    chain = INSTALLATION_CHAIN
    newest = session.scalar(
        select(AuditEvent.seq)
        .where(AuditEvent.chain == chain, AuditEvent.action == VERIFY)
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    if witness is None or witness.seq == 0:
        if session.scalar(select(AuditEvent.id).where(AuditEvent.chain == chain).limit(1)):
            return _broken("no chain head is kept outside the database for the installation")
        return DrillRecord("none")
    start = min(newest, witness.seq) if newest else witness.seq
    tip: ChainHead | None = None
    found: AuditEvent | None = None
    witnessed = False
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.chain == chain, AuditEvent.seq >= start)
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=500)
    )
    for ev in rows:
        if tip is None:
            if ev.seq != start or not hmac.compare_digest(ev.mac, event_mac(key, ev)):
                return _broken(f"installation event {start} is missing or altered")
        elif not continues(key, tip, ev):
            return _broken(f"installation event {ev.seq} does not continue the chain")
        if ev.account_id is not None:
            return _broken(f"installation event {ev.seq} is filed under an account")
        if ev.seq == witness.seq:
            if not hmac.compare_digest(ev.mac, witness.mac):
                return _broken(f"installation event {ev.seq} differs from the audit witness")
            witnessed = True
        if ev.action == VERIFY:
            found = ev
        tip = ChainHead(chain, ev.seq, ev.mac)
    if tip is None or not witnessed:
        return _broken("installation events seen by the audit witness are missing (cut off)")
    if found is None:
        return DrillRecord("none")
    try:
        details = json.loads(found.details)
    except ValueError:  # cannot happen to a MAC-proven event; refuse rather than guess
        return _broken("the drill record is not readable")
    if not isinstance(details, dict):
        return _broken("the drill record is not readable")
    return DrillRecord("intact", details)


def latest(ports: Ports) -> DrillRecord:
    """The newest drill record, for the metrics of any node."""
    witness = ports.audit_heads.read(INSTALLATION_CHAIN)
    with ports.db.read() as session:
        return read_latest(session, ports, witness)
