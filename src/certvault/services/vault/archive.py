"""The one way in: every private key enters the vault through :func:`archive_entry`.

Callers: PKCS#12 import, web-form enrollment and agent archival. The key must match its
certificate; it is escrowed once per account and public key; the audit event and the
subscriber's notification are written in the same transaction as the key. What an archival
decides is decided in one place, :class:`bulk.BatchPlan`: one entry is a batch of one.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from certvault.db.models import Account
from certvault.services.audit import log as audit
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.vault.archive_rules import (
    ALREADY_EXISTS,
    ARCHIVE,
    ESCROW_SUBJECT,
    IMPORTED,
    CertificateConflict,
    EntryFacts,
    EntryResult,
    EscrowNotAllowed,
    EscrowRequest,
    KeyVaultDisabled,
    NoOwner,
    PersonMismatch,
    ServiceKeyRefused,
    UntrustedIssuer,
    failed_entry,
)
from certvault.services.vault.bulk import BatchPlan

__all__ = [
    "ALREADY_EXISTS",
    "ARCHIVE",
    "ESCROW_SUBJECT",
    "IMPORTED",
    "CertificateConflict",
    "EntryFacts",
    "EntryResult",
    "EscrowNotAllowed",
    "EscrowRequest",
    "KeyVaultDisabled",
    "NoOwner",
    "PersonMismatch",
    "ServiceKeyRefused",
    "UntrustedIssuer",
    "archive_entry",
    "failed_entry",
]


def archive_entry(
    session: Session, ports: Ports, account: Account, actor: Actor, req: EscrowRequest
) -> EntryResult:
    """Escrow one key with its certificate, inside the caller's transaction.

    Raises a :class:`CertvaultError` for a refusal; the caller rolls back and audits it.
    """
    plan = BatchPlan(session, ports, account, actor)
    [facts] = plan.read([req])
    planned = plan.plan(req, facts)
    if planned.refusal is not None:
        raise planned.refusal
    plan.write()
    event = plan.event(planned)
    if event is not None:
        # Last, so that nothing after it can fail and leave a head for an event never committed.
        audit.record_many(session, ports, account=account, actor=actor, planned=[event])
    return plan.result(planned)
