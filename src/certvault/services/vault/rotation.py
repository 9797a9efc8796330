"""Online rotation of an account key (DESIGN.md §4): a new account-key version, the data keys of
the account's escrowed keys rewrapped under it in batches while the server keeps archiving and
releasing, and the old version retired once nothing uses it.

A run keeps no state of its own; the rule is the state. While any account-key version older than
the newest is still live, or any escrowed key is still wrapped under one, the newest version is
the rotation's target and a run goes on with it instead of making another. A run killed anywhere,
even between making the version and its first batch, leaves every row wholly on its old wrapping
or wholly on the new one, and the next run finds what is left.

Each batch is one read, the rewrapping in memory, and one set-based write with a compare-and-set
on the wrapping it read: a row that changed meanwhile is never overwritten, it is read again on
the next pass. New archivals already seal under the newest live version, so once a pass finds
nothing left the old versions are retired (their wrapped key wiped) in a transaction that counts
the keys still on them and gives up if there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import Select, func, select, text, update
from sqlalchemy.orm import Session

from certvault.db.models import Account, AccountKey, EscrowedKey
from certvault.errors import CertvaultError, InvalidInput
from certvault.services.audit import log as audit
from certvault.services.kernel import keyring
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.duties import KEY_ROTATION, Duty, database_now, duty
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account

ACTION = "kek.rotate_account"
DEFAULT_BATCH = 500
MAX_BATCH = 10_000
# Passes over what is left: a pass finds only rows that changed under the one before (a
# compare-and-set lost, an archival that began before the new version was made).
MAX_PASSES = 20


def duty_name(account_uuid: str) -> str:
    """The lock a rotation of this account holds: the one every rotation holds (two rotations
    never run at once), whatever the account."""
    return KEY_ROTATION


class RotationUnfinished(CertvaultError):
    """Keys were still being written under the old account key after every pass; run it again."""

    code = "rotation_unfinished"
    status = 409


@dataclass(frozen=True)
class RotationPlan:
    """Where an account's rotation stands: what a run would do (and a dry run prints)."""

    account: str
    account_uuid: str
    live_versions: tuple[int, ...]  # account-key versions not destroyed, oldest first
    target: int
    creates_version: bool  # False: a rotation begun before is resumed
    pending: dict[int, int]  # live old version -> escrowed keys still wrapped under it
    destroyed_skipped: int  # destroyed escrowed keys on older versions: left as they are
    # Live escrowed keys under an account-key version destroyed before (shredded): they cannot be
    # opened, so they cannot be moved; left as they are, counted as destroyed (as verify does).
    unopenable: int = 0

    @property
    def to_rewrap(self) -> int:
        return sum(self.pending.values())

    @property
    def retires(self) -> tuple[int, ...]:
        return tuple(v for v in self.live_versions if v < self.target)


@dataclass(frozen=True)
class RewrapFailure:
    escrowed_key_uuid: str
    code: str


@dataclass
class RotationResult:
    plan: RotationPlan
    rewrapped: int = 0
    batches: int = 0
    conflicts: int = 0  # rows changed under a batch, left for the next pass
    passes: int = 0
    failures: list[RewrapFailure] = field(default_factory=list)
    retired: tuple[int, ...] = ()
    finished: bool = False  # every live key on the target, the older versions retired

    @property
    def ok(self) -> bool:
        return not self.failures

    def details(self) -> dict[str, Any]:
        """What the audit event says: versions and counts, nothing secret."""
        return {
            "phase": "finished" if self.finished else "stopped",
            "from_versions": sorted(set(self.plan.retires) | set(self.plan.pending)),
            "to_version": self.plan.target,
            "resumed": not self.plan.creates_version,
            "rewrapped": self.rewrapped,
            "batches": self.batches,
            "conflicts": self.conflicts,
            "failures": len(self.failures),
            "skipped_destroyed": self.plan.destroyed_skipped,
            "under_destroyed_versions": self.plan.unopenable,
            "retired_versions": list(self.retired),
        }


def check_batch_size(batch_size: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH:
        raise InvalidInput(f"The batch size must be between 1 and {MAX_BATCH:,}.")


def plan_rotation(ports: Ports, slug: str) -> RotationPlan:
    """What a rotation of the account's key would do now; reads only (``--dry-run``)."""
    with ports.db.read() as session:
        return _plan(session, get_account(session, slug))


def _plan(session: Session, account: Account) -> RotationPlan:
    versions = session.execute(
        select(AccountKey.version, AccountKey.destroyed_at).where(
            AccountKey.account_id == account.id
        )
    ).all()
    live = tuple(sorted(v for v, destroyed in versions if destroyed is None))
    if not live:
        raise keyring.AccountKeyDestroyed(
            "This account's keys were destroyed (crypto-shredded): there is no account key to "
            "rotate. Nothing was done."
        )
    on_versions = _pending(session, account.id, below=max(v for v, _ in versions) + 1)
    pending = {v: n for v, n in on_versions.items() if v in live}
    newest = live[-1]
    resumes = len(live) > 1 or any(v < newest for v in pending)
    target = newest if resumes else max(v for v, _ in versions) + 1
    pending = {v: n for v, n in pending.items() if v < target}
    unopenable = sum(n for v, n in on_versions.items() if v not in live)
    skipped = session.scalar(
        select(func.count())
        .select_from(EscrowedKey)
        .where(
            EscrowedKey.account_id == account.id,
            EscrowedKey.account_key_version < target,
            EscrowedKey.destroyed_at.is_not(None),
        )
    )
    return RotationPlan(
        account=account.slug,
        account_uuid=account.uuid,
        live_versions=live,
        target=target,
        creates_version=not resumes,
        pending=pending,
        destroyed_skipped=int(skipped or 0),
        unopenable=unopenable,
    )


def _pending(session: Session, account_id: int, *, below: int) -> dict[int, int]:
    rows = session.execute(
        select(EscrowedKey.account_key_version, func.count())
        .where(
            EscrowedKey.account_id == account_id,
            EscrowedKey.account_key_version < below,
            EscrowedKey.destroyed_at.is_(None),
        )
        .group_by(EscrowedKey.account_key_version)
    ).all()
    return {int(v): int(n) for v, n in rows}


def rotate_account_key(
    ports: Ports,
    actor: Actor,
    slug: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_start: Callable[[RotationPlan], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> RotationResult:
    """Rotate (or go on rotating) the account's key; one run at a time per account."""
    check_batch_size(batch_size)
    with ports.db.read() as session:
        account = get_account(session, slug)
    with duty(ports, duty_name(account.uuid)) as held:
        plan = ports.db.run(lambda session: _start(session, ports, actor, account.id))
        if on_start is not None:
            on_start(plan)
        result = RotationResult(plan)
        with ports.db.read() as session:
            rewrap = keyring.DataKeyRewrap(session, ports, account, plan.target)
        batches = _Batches(ports, held, account, rewrap, result, batch_size, on_batch)
        for _ in range(MAX_PASSES):
            result.passes += 1
            batches.run_pass()
            if result.failures:
                break
            try:
                result.retired = ports.db.run(
                    lambda s: _retire(s, ports, actor, account.id, result)
                )
            except _StillInUse:
                continue
            return result
        ports.db.run(lambda s: _record_end(s, ports, actor, account.id, result))
    if not result.failures:
        raise RotationUnfinished(
            f"Keys were still being written under the old account key after {MAX_PASSES} passes;"
            " nothing is lost, run the rotation again."
        )
    return result


def _start(session: Session, ports: Ports, actor: Actor, account_id: int) -> RotationPlan:
    account = session.get_one(Account, account_id)
    plan = _plan(session, account)
    if plan.creates_version:
        row = keyring.create_account_key(session, ports, account)
        if row.version != plan.target:  # the unique (account, version) makes this unreachable
            raise RuntimeError("the new account-key version is not the planned one")
        # From this commit on, new archivals seal under the new version.
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action=ACTION,
            details={
                "phase": "started",
                "from_versions": list(plan.live_versions),
                "to_version": plan.target,
                "keys": plan.to_rewrap,
            },
        )
    return plan


class _Batches:
    """One pass over the keys still on older versions, in keyset-paged batches."""

    def __init__(
        self,
        ports: Ports,
        held: Duty,
        account: Account,
        rewrap: keyring.DataKeyRewrap,
        result: RotationResult,
        batch_size: int,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        self.ports, self.held, self.account, self.rewrap = ports, held, account, rewrap
        self.result, self.batch_size, self.on_batch = result, batch_size, on_batch
        self.failed: set[int] = set()  # ids whose wrapping did not open: not tried again

    def run_pass(self) -> None:
        target = self.result.plan.target
        with self.ports.db.read() as session:
            old = list(
                session.scalars(
                    select(AccountKey.version)
                    .where(
                        AccountKey.account_id == self.account.id,
                        AccountKey.version < target,
                        AccountKey.destroyed_at.is_(None),
                    )
                    .order_by(AccountKey.version)
                )
            )
        for version in old:
            after = 0
            while True:
                read, updates = self._read(version, after)
                if not read:
                    break
                after = read[-1]
                if updates:
                    written = self.ports.db.run(
                        partial(
                            _write,
                            held=self.held,
                            account_id=self.account.id,
                            old=version,
                            target=target,
                            updates=updates,
                        )
                    )
                    self.result.rewrapped += written
                    self.result.conflicts += len(updates) - written
                    self.result.batches += 1
                if self.on_batch is not None:
                    self.on_batch(len(read))

    def _read(self, version: int, after: int) -> tuple[list[int], list[_Update]]:
        """The ids of the next batch, and the new wrapping of each that opened."""
        updates: list[_Update] = []
        with self.ports.db.read() as session:
            rows = session.execute(
                page_of_keys(self.account.id, version, after, self.batch_size)
            ).all()
            todo = [row for row in rows if row[0] not in self.failed]
            done = self.rewrap.batch(session, version, [row[1:] for row in todo])
        for (key_id, key_uuid, nonce, _), new in zip(todo, done, strict=True):
            if isinstance(new, str):
                self.failed.add(key_id)
                self.result.failures.append(RewrapFailure(key_uuid, new))
            else:
                updates.append((key_id, nonce, *new))
        return [row[0] for row in rows], updates


def page_of_keys(
    account_id: int, version: int, after: int, limit: int
) -> Select[int, str, bytes, bytes]:
    """The next ``limit`` live keys of the account on ``version`` after id ``after`` (keyset
    paging: each page starts where the last ended, memory stays flat): id, uuid, wrapping."""
    return (
        select(
            EscrowedKey.id,
            EscrowedKey.uuid,
            EscrowedKey.data_key_nonce,
            EscrowedKey.wrapped_data_key,
        )
        .where(
            EscrowedKey.account_id == account_id,
            EscrowedKey.account_key_version == version,
            EscrowedKey.destroyed_at.is_(None),
            EscrowedKey.id > after,
        )
        .order_by(EscrowedKey.id)
        .limit(limit)
    )


# (id, the data-key nonce read, the new nonce, the new wrapped data key)
_Update = tuple[int, bytes, bytes, bytes]

# One statement per batch. The compare-and-set is on the version and the nonce read: a nonce is
# drawn afresh for every wrapping, so a row rewritten meanwhile (whatever its version) is left.
_UPDATE_POSTGRESQL = text(
    "UPDATE escrowed_keys AS e"
    " SET data_key_nonce = v.new_nonce, wrapped_data_key = v.new_wrapped,"
    " account_key_version = :target"
    " FROM unnest(CAST(:ids AS integer[]), CAST(:old_nonces AS bytea[]),"
    " CAST(:new_nonces AS bytea[]), CAST(:new_wrapped AS bytea[]))"
    " AS v(id, old_nonce, new_nonce, new_wrapped)"
    " WHERE e.id = v.id AND e.account_id = :account AND e.account_key_version = :old"
    " AND e.data_key_nonce = v.old_nonce AND e.destroyed_at IS NULL"
)
_UPDATE_SQLITE = (
    "UPDATE escrowed_keys SET data_key_nonce = ?, wrapped_data_key = ?, account_key_version = ?"
    " WHERE id = ? AND account_id = ? AND account_key_version = ? AND data_key_nonce = ?"
    " AND destroyed_at IS NULL"
)


def _write(
    session: Session,
    *,
    held: Duty | None,
    account_id: int,
    old: int,
    target: int,
    updates: Sequence[_Update],
) -> int:
    """Write one batch, the lease renewed in the same transaction; how many rows took it."""
    if held is not None:
        held.renew(session)
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        result = connection.exec_driver_sql(
            _UPDATE_SQLITE,
            [(n, w, target, i, account_id, old, o) for i, o, n, w in updates],
        )
    else:
        result = connection.execute(
            _UPDATE_POSTGRESQL,
            {
                "target": target,
                "account": account_id,
                "old": old,
                "ids": [u[0] for u in updates],
                "old_nonces": [u[1] for u in updates],
                "new_nonces": [u[2] for u in updates],
                "new_wrapped": [u[3] for u in updates],
            },
        )
    return int(result.rowcount)


class _StillInUse(Exception):
    """Keys are still on an old version: the retirement is rolled back, another pass follows."""


def _retire(
    session: Session, ports: Ports, actor: Actor, account_id: int, result: RotationResult
) -> tuple[int, ...]:
    """Wipe the wrapped key of every older live version, if no escrowed key uses one; audited."""
    result.retired, result.finished = (), False  # this attempt's, if the last was rolled back
    target = result.plan.target
    old = session.execute(
        select(AccountKey.id, AccountKey.version).where(
            AccountKey.account_id == account_id,
            AccountKey.version < target,
            AccountKey.destroyed_at.is_(None),
        )
    ).all()
    if old:
        # First the update: on PostgreSQL it waits for every transaction still sealing under an
        # old version (they hold a shared lock on it), so the count below sees their keys.
        session.execute(
            update(AccountKey)
            .where(AccountKey.id.in_([row.id for row in old]), AccountKey.destroyed_at.is_(None))
            .values(destroyed_at=database_now(session), wrapped_key=b"")
            .execution_options(synchronize_session=False)
        )
    still = (
        session.scalar(
            select(func.count())
            .select_from(EscrowedKey)
            .where(
                EscrowedKey.account_id == account_id,
                EscrowedKey.account_key_version.in_([row.version for row in old]),
                EscrowedKey.destroyed_at.is_(None),
            )
        )
        if old
        else 0
    )
    if still:
        raise _StillInUse()
    result.retired, result.finished = tuple(sorted(row.version for row in old)), True
    _record_end(session, ports, actor, account_id, result)
    return result.retired


def _record_end(
    session: Session, ports: Ports, actor: Actor, account_id: int, result: RotationResult
) -> None:
    """The event that ends a run: finished (old versions retired), or stopped short."""
    audit.record(
        session,
        ports,
        account=session.get_one(Account, account_id),
        actor=actor,
        action=ACTION,
        outcome="success" if result.finished else "failure",
        details=result.details(),
    )
