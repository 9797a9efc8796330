"""Master-key rotation, migration to a token, and retirement of old versions (DESIGN.md §4).

Rotation rewraps, never re-encrypts: every live account key and every service key's data key is
unwrapped and wrapped again by the master key new wraps use. Rows are rewritten in small
batches, each in its own transaction, and a row is rewritten only with a complete new blob that
was checked to open, and only if its blob is still the one that was read: a run stopped at any
point (kill -9, a token pulled out) leaves every row with a blob that opens, and a rerun
rewraps what is left. One rotation at a time, across nodes and of any kind: the `key-rotation`
duty lock, shared by rotate-master, migrate, retire and rotate-account.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from certvault.crypto import envelope
from certvault.db.models import Account, AccountKey, ServiceKey
from certvault.errors import CertvaultError, ConfigurationError, Conflict, InvalidInput
from certvault.masterkey import VersionedProvider, blob_origin
from certvault.masterkey.chain import members_of
from certvault.services.audit import log as audit
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.duties import KEY_ROTATION, Duty, duty
from certvault.services.kernel.ports import Ports

DUTY = KEY_ROTATION
BATCH = 50


class MasterKeyInUse(Conflict):
    """Wrapped keys still use this master-key version; rewrap them first."""

    code = "master_key_in_use"


class MigrationNotConfigured(ConfigurationError):
    """This node does not wrap with the provider to migrate to."""

    code = "migration_not_configured"


@dataclass
class RewrapReport:
    provider: str  # the kind new wraps use
    version: int  # the version every live blob is wrapped with afterwards
    created_version: int | None = None  # made by this run (rotate-master)
    finished_earlier_run: bool = False  # this run finished what an interrupted one started
    dry_run: bool = False
    account_keys: int = 0  # rewrapped (or, in a dry run, to rewrap)
    service_keys: int = 0
    by_origin: dict[str, int] = field(default_factory=dict)  # "file v1" -> blobs moved off it

    @property
    def total(self) -> int:
        return self.account_keys + self.service_keys


Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class _Wrapped:
    table: str  # "account_keys" or "service_keys"
    id: int
    blob: bytes
    aad: bytes


def _account_keys(session: Session, after: int, limit: int) -> list[_Wrapped]:
    rows = session.execute(
        select(AccountKey.id, AccountKey.wrapped_key, AccountKey.version, Account.uuid)
        .join(Account, Account.id == AccountKey.account_id)
        .where(AccountKey.id > after, AccountKey.destroyed_at.is_(None))
        .order_by(AccountKey.id)
        .limit(limit)
    ).all()
    return [
        _Wrapped("account_keys", i, blob, envelope.account_key_aad(uuid, version))
        for i, blob, version, uuid in rows
    ]


def _service_keys(session: Session, after: int, limit: int) -> list[_Wrapped]:
    rows = session.execute(
        select(ServiceKey.id, ServiceKey.wrapped_data_key, ServiceKey.uuid, ServiceKey.purpose)
        .where(ServiceKey.id > after)
        .order_by(ServiceKey.id)
        .limit(limit)
    ).all()
    return [
        _Wrapped("service_keys", i, blob, envelope.service_key_aad(uuid, purpose))
        for i, blob, uuid, purpose in rows
    ]


_READERS = (_account_keys, _service_keys)


def _batches(ports: Ports) -> Iterator[list[_Wrapped]]:
    """Every live wrapped blob, in batches, by keyset (memory flat in the number of rows)."""
    for read in _READERS:
        after = 0
        while True:
            with ports.db.read() as session:
                batch = read(session, after, BATCH)
            if not batch:
                break
            yield batch
            after = batch[-1].id


def _stale(blob: bytes, kind: str, version: int) -> bool:
    origin_kind, origin_version = blob_origin(blob)
    return origin_kind != kind or origin_version < version


def census(ports: Ports) -> dict[tuple[str, int], int]:
    """How many live blobs each (provider kind, version) wraps."""
    counts: dict[tuple[str, int], int] = {}
    for batch in _batches(ports):
        for row in batch:
            origin = blob_origin(row.blob)
            counts[origin] = counts.get(origin, 0) + 1
    return counts


def _primary(ports: Ports) -> VersionedProvider:
    return members_of(ports.master_key)[0]


def _pending(ports: Ports, kind: str, version: int) -> tuple[int, int]:
    accounts = services = 0
    for batch in _batches(ports):
        for row in batch:
            if _stale(row.blob, kind, version):
                if row.table == "account_keys":
                    accounts += 1
                else:
                    services += 1
    return accounts, services


def _rewrap(
    ports: Ports, held: Duty, report: RewrapReport, total: int, progress: Progress | None
) -> None:
    kind, version, done = report.provider, report.version, 0
    for batch in _batches(ports):
        stale = [row for row in batch if _stale(row.blob, kind, version)]
        if not stale:
            continue
        # Wrapped outside the transaction: a token's latency does not hold the write lock.
        fresh = [(row, _rewrap_one(ports, row, kind, version)) for row in stale]

        def write(session: Session, fresh: list[tuple[_Wrapped, bytes]] = fresh) -> int:
            written = 0
            for row, blob in fresh:
                if row.table == "account_keys":
                    statement = (
                        update(AccountKey)
                        .where(AccountKey.id == row.id, AccountKey.wrapped_key == row.blob)
                        .values(wrapped_key=blob)
                    )
                else:
                    statement = (
                        update(ServiceKey)
                        .where(ServiceKey.id == row.id, ServiceKey.wrapped_data_key == row.blob)
                        .values(wrapped_data_key=blob)
                    )
                result = session.execute(statement)
                # A row changed meanwhile (destroyed, rewrapped by a takeover) is left alone.
                written += int(result.rowcount or 0)  # type: ignore[attr-defined]
            return written

        ports.db.run(write)
        for row, _ in fresh:
            origin = "{} v{}".format(*blob_origin(row.blob))
            report.by_origin[origin] = report.by_origin.get(origin, 0) + 1
            if row.table == "account_keys":
                report.account_keys += 1
            else:
                report.service_keys += 1
        done += len(fresh)
        if progress is not None:
            progress(done, total)
        held.renew()


def _rewrap_one(ports: Ports, row: _Wrapped, kind: str, version: int) -> bytes:
    plain = ports.master_key.unwrap(row.blob, row.aad)
    blob = ports.master_key.wrap(plain, row.aad)
    # The new blob must open and name the target before it replaces one that works.
    if blob_origin(blob) != (kind, version) or ports.master_key.unwrap(blob, row.aad) != plain:
        raise ConfigurationError(
            f"The master key wrapped with {blob_origin(blob)} instead of {kind} v{version}; "
            "has another node rotated meanwhile? Nothing was changed for this batch."
        )
    return blob


def _audit(ports: Ports, actor: Actor, action: str, outcome: str, details: dict[str, object]):  # type: ignore[no-untyped-def]
    def work(session: Session) -> None:
        audit.record(
            session,
            ports,
            account=None,
            actor=actor,
            action=action,
            outcome=outcome,
            details=details,
        )

    ports.db.run(work)


def _audited_failure(
    ports: Ports, actor: Actor, action: str, exc: CertvaultError, report: RewrapReport
) -> None:
    # The refusal in a transaction of its own, as every refusal is; if even that cannot be
    # written (the token that keys the audit log is gone), the error itself still reaches
    # the operator.
    try:
        _audit(
            ports,
            actor,
            action,
            "failure",
            {
                "code": exc.code,
                "provider": report.provider,
                "version": report.version,
                "account_keys": report.account_keys,
                "service_keys": report.service_keys,
            },
        )
    except CertvaultError:
        pass


def rotate_master(
    ports: Ports, actor: Actor, *, dry_run: bool = False, progress: Progress | None = None
) -> RewrapReport:
    """A new master-key version, and every live blob rewrapped to it.

    When blobs below the current version remain (a run that was stopped, or a node that wrapped
    with the old version meanwhile), this run finishes that rotation instead of starting
    another; a second run then makes the new version.
    """
    primary = _primary(ports)
    current = primary.version
    accounts, services = _pending(ports, primary.name, current)
    unfinished = accounts + services > 0
    report = RewrapReport(primary.name, current, finished_earlier_run=unfinished, dry_run=dry_run)
    if dry_run:
        if not unfinished:
            report.version = current + 1
            accounts, services = _pending(ports, primary.name, current + 1)
        report.account_keys, report.service_keys = accounts, services
        return report
    with duty(ports, DUTY) as held:
        try:
            if not unfinished:
                report.version = report.created_version = primary.create_version()
                accounts, services = _pending(ports, primary.name, report.version)
            _rewrap(ports, held, report, accounts + services, progress)
        except CertvaultError as exc:
            _audited_failure(ports, actor, "kek.rotate_master", exc, report)
            raise
        _audit(ports, actor, "kek.rotate_master", "success", _details(report))
    return report


def migrate(
    ports: Ports, actor: Actor, to: str, *, dry_run: bool = False, progress: Progress | None = None
) -> RewrapReport:
    """Rewrap every live blob into the provider ``to``, which this node must already wrap with."""
    if to != "pkcs11":
        raise InvalidInput("certvault migrates master keys to 'pkcs11' only.")
    primary = _primary(ports)
    if primary.name != to:
        raise MigrationNotConfigured(
            f"This node wraps with the {primary.name} master key. Create the token key "
            "(`certvault kek create --provider pkcs11`), set CERTVAULT_MASTER_KEY_PROVIDER=pkcs11 "
            "on every node, keeping the file master-key directory readable, restart them, and "
            "run this again."
        )
    report = RewrapReport(primary.name, primary.version, dry_run=dry_run)
    if dry_run:
        report.account_keys, report.service_keys = _pending(ports, report.provider, report.version)
        return report
    with duty(ports, DUTY) as held:
        report.version = primary.version
        accounts, services = _pending(ports, report.provider, report.version)
        try:
            _rewrap(ports, held, report, accounts + services, progress)
        except CertvaultError as exc:
            _audited_failure(ports, actor, "kek.migrate", exc, report)
            raise
        _audit(ports, actor, "kek.migrate", "success", _details(report))
    return report


def _details(report: RewrapReport) -> dict[str, object]:
    return {
        "provider": report.provider,
        "version": report.version,
        "created_version": report.created_version,
        "finished_earlier_run": report.finished_earlier_run,
        "account_keys": report.account_keys,
        "service_keys": report.service_keys,
        "from": dict(sorted(report.by_origin.items())),
    }


def retire(ports: Ports, actor: Actor, kind: str, version: int) -> None:
    """Remove master-key version ``version`` of provider ``kind`` for good.

    Refused while any live wrapped key uses it, and for the version new wraps use. Taken under
    the rotation lock, so that no rotation is rewrapping meanwhile.
    """
    members = {p.name: p for p in members_of(ports.master_key)}
    provider = members.get(kind)
    if provider is None:
        raise InvalidInput(
            f"No {kind[:20]!r} master key is configured here (configured: {', '.join(members)})."
        )
    primary = _primary(ports)
    if (kind, version) == (primary.name, primary.version):
        raise Conflict(f"{kind} v{version} is the master key new wraps use; it cannot be retired.")
    if version not in provider.versions():
        raise InvalidInput(f"There is no {kind} master key version {version}.")
    with duty(ports, DUTY):
        users = census(ports).get((kind, version), 0)
        if users:
            _audit(
                ports,
                actor,
                "kek.retire",
                "failure",
                {"provider": kind, "version": version, "in_use": users},
            )
            raise MasterKeyInUse(
                f"{users} wrapped keys still use {kind} v{version}; run `certvault kek "
                "rotate-master` (or `kek migrate`) to finish rewrapping them first."
            )
        provider.retire_version(version)
        _audit(ports, actor, "kek.retire", "success", {"provider": kind, "version": version})
