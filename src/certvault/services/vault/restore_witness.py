"""After a restore: the restored audit chains and grant generations against the witness kept
outside the database, which a restore never writes back (DESIGN.md §8). It only ever moves
forward: to the restored heads where it had none, past a gap the operator acknowledges where it
was ahead.
"""

from __future__ import annotations

from sqlalchemy import func, inspect, select

from certvault.db.models import Account, AuditEvent
from certvault.services.audit import checks as audit_checks
from certvault.services.kernel import seals
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.witness import ChainHead


def reconcile_witness(
    ports: Ports, actor: Actor, tips: dict[str, ChainHead], reason: str
) -> tuple[list[str], list[str], list[str]]:
    """Compare the restored chains (``tips``, each verified link by link) with the witness.

    Returns the chains the witness started from (it had none), those whose gap was acknowledged
    (it was ahead), and those lost whole (the witness knows them, the database does not).
    """
    witness = ports.audit_heads
    witness.ensure_directory()
    started: list[str] = []
    acknowledged: list[str] = []
    for chain, tip in tips.items():
        seen = witness.read(chain)
        if seen is None:
            if tip.seq:
                witness.advance([tip])
                started.append(chain)
        elif seen.seq <= tip.seq and _holds(ports, chain, seen):
            if seen.seq < tip.seq:
                witness.advance([tip])  # the same chain, further on: a writer would do this
        else:
            audit_checks.acknowledge_restore(ports, actor, chain, reason)
            acknowledged.append(chain)
    missing = sorted(h.chain for h in witness.all() if h.chain not in tips and h.seq)
    for chain in missing:  # accounts made after the backup: lost with it
        audit_checks.acknowledge_lost_chain(ports, actor, chain, reason)
    return started, acknowledged, missing


def _holds(ports: Ports, chain: str, seen: ChainHead) -> bool:
    """Whether the restored chain holds the witnessed event (its MAC checked by the walk)."""
    with ports.db.read() as session:
        mac = session.scalar(
            select(AuditEvent.mac).where(AuditEvent.chain == chain, AuditEvent.seq == seen.seq)
        )
    return mac is not None and mac == seen.mac


def start_generations(ports: Ports, sealed: int) -> None:
    """Where the witness has no grant generation yet (a fresh home), start it from the restored
    rows: the highest generation any of an account's grant rows was sealed at."""
    witness = ports.audit_heads
    if witness.generation(seals.INSTALLATION) == 0:
        # The seals the backed-up installation had made (``sealed``, from the authenticated
        # manifest): from here on a row without a MAC in those tables is refused, never sealed.
        witness.advance_generation(seals.INSTALLATION, min(sealed, seals.SEALS))
    with ports.db.read() as session:
        connection = session.connection()
        highest: dict[int, int] = {}
        for spec in seals.GRANTS:
            table = spec.model.__table__
            owner = table.c.id if spec.model is Account else table.c.account_id
            if "grant_generation" not in table.c or not inspect(connection).has_table(table.name):
                continue
            for account_id, generation in connection.execute(
                select(owner, func.max(table.c.grant_generation)).group_by(owner)
            ):
                if account_id is not None and generation is not None:
                    highest[account_id] = max(highest.get(account_id, 0), int(generation))
        uuids = {row.id: row.uuid for row in connection.execute(select(Account.id, Account.uuid))}
    for account_id, generation in highest.items():
        account_uuid = uuids.get(account_id)
        if account_uuid and witness.generation(account_uuid) == 0 and generation > 0:
            witness.advance_generation(account_uuid, generation)
