"""PKCS#12 import: files in, keys through the one way in (vault.archive_entry), results per
entry in the SCM shape. Parsing (the KDF and key validation) runs outside any transaction; bulk
imports commit in batches (DESIGN.md §10)."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import chain, islice

from cryptography.hazmat.primitives import hashes
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from certvault.crypto.pkcs12.limits import P12Limits
from certvault.crypto.pkcs12.portable import Portable, ReaderPool, contents_of
from certvault.crypto.pkcs12.reader import WARNINGS, P12Contents, read_pkcs12
from certvault.db.engine import failure_of, is_retryable
from certvault.db.models import Account
from certvault.errors import CertvaultError, InvalidInput
from certvault.services.audit import log as audit
from certvault.services.kernel.actors import Actor, Scope
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault.archive import (
    ARCHIVE,
    EntryResult,
    EscrowRequest,
    KeyVaultDisabled,
    archive_entry,
    failed_entry,
)
from certvault.services.vault.bulk import BatchPlan

log = logging.getLogger("certvault.import")

# In the audit details of a key from a file whose password only opened in OpenSSL 1.0's form.
OPENSSL_1_0 = "openssl-1.0"


class UnreadableFile(InvalidInput):
    """The file could not be read."""

    code = "unreadable"


class EntryNotStored(InvalidInput):
    """The database refused this entry; nothing of it was stored, the other entries were."""

    code = "entry_not_stored"


@dataclass
class ImportItem:
    name: str
    load: Callable[[], bytes]
    password: str
    person_email: str | None = None
    organization: str | None = None
    person_id: int | None = None


@dataclass
class FileResult:
    name: str
    entries: list[EntryResult] = field(default_factory=list)
    error: CertvaultError | None = None  # the file could not be read at all
    warnings: list[str] = field(default_factory=list)  # the reader's codes (reader.WARNINGS)

    @property
    def warning_messages(self) -> list[tuple[str, str]]:
        """Each warning as its code and the text for people."""
        return [(code, WARNINGS[code]) for code in self.warnings]

    @property
    def error_code(self) -> str | None:
        return self.error.code if self.error else None

    @property
    def ok(self) -> bool:
        return self.error is None and all(e.ok for e in self.entries)


_Batch = list[tuple[ImportItem, FileResult, P12Contents | None]]


def upload_limits(ports: Ports) -> P12Limits:
    """The ceilings every uploaded PKCS#12 file is read with (CERTVAULT_P12_MAX_*)."""
    return P12Limits(
        max_bytes=ports.settings.p12_max_bytes, max_iterations=ports.settings.p12_max_iterations
    )


_Read = tuple[FileResult, P12Contents | None]


def _parse(ports: Ports, item: ImportItem) -> _Read:
    loaded = _load(item)
    if isinstance(loaded, FileResult):
        return loaded, None
    return _read(ports, item.name, loaded, item.password)


def _load(item: ImportItem) -> bytes | FileResult:
    """The file's bytes, or its result when it cannot be read."""
    try:
        return item.load()
    except CertvaultError as exc:
        return FileResult(item.name, error=exc)
    except OSError as exc:
        return FileResult(item.name, error=UnreadableFile(f"Cannot read the file: {exc.strerror}."))


def _read(ports: Ports, name: str, data: bytes, password: str) -> _Read:
    result = FileResult(name)
    try:
        contents = read_pkcs12(data, password, upload_limits(ports))
    except CertvaultError as exc:
        result.error = exc
        return result, None
    result.warnings = list(contents.warnings)
    return result, contents


def _read_ahead(ports: Ports, items: Iterable[ImportItem]) -> Iterator[tuple[ImportItem, _Read]]:
    """Each item with what reading it gave, in the order given.

    Reading a file (the KDFs, decryption, key checks) is mostly Python work, so a bulk import
    reads on a pool of worker processes, one per core (CERTVAULT_IMPORT_WORKERS), a bounded
    number of files ahead of the batches being written (crypto/pkcs12/portable.py). Fewer files
    than CERTVAULT_IMPORT_POOL_FROM (a REST upload, a folder of a few hundred) are read in this
    process: starting the workers costs more than they would save.
    """
    workers = ports.settings.import_workers or os.cpu_count() or 1
    pool_from = ports.settings.import_pool_from
    rest = iter(items)
    first = list(islice(rest, pool_from))
    if len(first) < pool_from:
        for item in chain(first, rest):
            yield item, _parse(ports, item)
        return
    limits = upload_limits(ports)
    # A batch and then some, in chunks: the workers go on while a batch is written. Bounded,
    # so memory stays flat however many files there are.
    window = max(2 * workers + 1, -(-(2 * ports.settings.import_batch_size + 2 * CHUNK) // CHUNK))
    pending: deque[_Chunk] = deque()

    def finish() -> Iterator[tuple[ImportItem, _Read]]:
        loaded, future = pending.popleft()
        portables = iter(future.result() if future is not None else [])
        for item, data in loaded:
            if isinstance(data, FileResult):
                yield item, (data, None)
                continue
            portable: Portable | None = next(portables)
            if portable is None:  # refused: read again here, for the reader's own refusal
                yield item, _read(ports, item.name, data, item.password)
                continue
            contents = contents_of(portable)
            yield item, (FileResult(item.name, warnings=list(contents.warnings)), contents)

    # The caller stopping early or a read failing ends the workers: nothing more is read.
    with ReaderPool(workers) as pool:
        for chunk in _chunks(chain(first, rest)):
            loaded = [(item, _load(item)) for item in chunk]
            files = [(d, item.password) for item, d in loaded if not isinstance(d, FileResult)]
            future = pool.submit(files, limits) if files else None
            pending.append((loaded, future))
            if len(pending) >= window:
                yield from finish()
        while pending:
            yield from finish()


# Files per task of a worker.
CHUNK = 16
# A chunk's items, each with its bytes (or its result when they could not be loaded), and the
# worker's reading of those that loaded.
_Chunk = tuple[list[tuple[ImportItem, bytes | FileResult]], Future[list[Portable | None]] | None]


def _chunks(items: Iterator[ImportItem]) -> Iterator[list[ImportItem]]:
    while chunk := list(islice(items, CHUNK)):
        yield chunk


def import_files(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    items: Iterable[ImportItem],
    *,
    on_file: Callable[[FileResult], None] | None = None,
    keep: bool = True,
) -> list[FileResult]:
    """Import many PKCS#12 files, committing in batches (DESIGN.md §10).

    Parsing (the KDF and key validation) runs outside any transaction, on worker processes once
    the import has CERTVAULT_IMPORT_POOL_FROM files (``_read_ahead``); the entries of a batch
    are written set-based (bulk.py), so one bad entry or file never stops the others. With
    ``keep=False`` the results go only to ``on_file`` and nothing is kept per file: memory
    stays flat however many files there are.
    """
    with audit.refusals_audited(ports, account_id=None, actor=actor, action=ARCHIVE):
        actor.require_scope(Scope.KEYS_UPLOAD)
        with ports.db.read() as session:  # an unknown account is refused on the installation chain
            account = get_account(session, account_slug)
            actor.require_visible(account.id, None, "Account")
            account_id, enabled = account.id, account.key_vault_enabled
    if not enabled:
        audit.record_refusal(
            ports,
            account_id=account_id,
            actor=actor,
            action=ARCHIVE,
            reason_code=KeyVaultDisabled.code,
        )
        raise KeyVaultDisabled()
    results: list[FileResult] = []
    batch: _Batch = []
    size = 0

    def flush() -> None:
        nonlocal size
        if batch:
            _store(ports, account_id, actor, batch)
            for _, result, _ in batch:
                if keep:
                    results.append(result)
                if on_file:
                    on_file(result)
        batch.clear()
        size = 0

    for item, (result, contents) in _read_ahead(ports, items):
        batch.append((item, result, contents))
        size += len(contents.entries) if contents else 1
        if size >= ports.settings.import_batch_size:
            flush()
    flush()
    return results


def _store(ports: Ports, account_id: int, actor: Actor, batch: _Batch) -> None:
    """Archive ``batch`` in one transaction. Should the transaction fail as a whole (a database
    error that neither the entry's savepoint nor a retry cures), each file is stored again in a
    transaction of its own, so that one file never takes the others down with it."""
    try:
        ports.db.run(lambda s: _archive_batch(s, ports, account_id, actor, batch))
        return
    except DBAPIError as exc:
        if failure_of(exc) is not None:
            raise  # the database is down or full: no file is stored, the caller is told so
        if len(batch) > 1:
            for one in batch:
                _store(ports, account_id, actor, [one])
            return
        log.warning("import of one file failed in the database: %s", type(exc).__name__)
    [(item, result, contents)] = batch
    refusal = EntryNotStored()
    result.entries = [failed_entry(req, refusal) for req in _requests(item, contents)]
    audit.record_refusal(
        ports,
        account_id=account_id,
        actor=actor,
        action=ARCHIVE,
        reason_code=refusal.code,
        details={"file": item.name[-200:]},
    )


def _requests(item: ImportItem, contents: P12Contents | None) -> list[EscrowRequest]:
    if contents is None:
        return []
    return [
        EscrowRequest(
            key=entry.key,
            certificate=entry.certificate,
            chain=contents.extra_certificates,
            friendly_name=entry.friendly_name,
            person_email=item.person_email,
            organization=item.organization,
            person_id=item.person_id,
            password_encoding=OPENSSL_1_0 if contents.legacy_password_encoding else None,
        )
        for entry in contents.entries
    ]


def _archive_batch(
    session: Session, ports: Ports, account_id: int, actor: Actor, batch: _Batch
) -> None:
    """Plan every entry of the batch, then write the rows with set-based statements (bulk.py).
    Should the database refuse those writes, the savepoint undoes them and each entry is
    archived again in a savepoint of its own, so that one entry never takes the others down."""
    account = session.get_one(Account, account_id)
    audit.lock_chain(session, ports, account)  # before the savepoint: kept should it roll back
    try:
        with session.begin_nested():
            _archive_set_based(session, ports, account, actor, batch)
        return
    except DBAPIError as exc:
        if is_retryable(exc) or failure_of(exc) is not None:
            # A race: the whole batch runs again and finds what the other wrote. A database
            # that is down or full: no entry can be stored.
            raise
        log.warning("a set-based import write failed in the database: %s", type(exc).__name__)
    except CertvaultError as exc:  # say, a stored row that does not verify: the entry's refusal
        log.warning("a set-based import was refused: %s", exc.code)
    _archive_one_by_one(session, ports, account, actor, batch)


def _archive_set_based(
    session: Session, ports: Ports, account: Account, actor: Actor, batch: _Batch
) -> None:
    plan = BatchPlan(session, ports, account, actor)
    files = [
        (item, result, contents, _requests(item, contents)) for item, result, contents in batch
    ]
    facts = iter(plan.read([req for *_, reqs in files for req in reqs]))
    planned = [
        (item, result, contents, [plan.plan(req, next(facts)) for req in reqs])
        for item, result, contents, reqs in files
    ]
    plan.write()
    events: list[audit.Planned] = []
    for item, result, contents, entries in planned:
        result.entries = []
        if contents is None:
            events.append(
                audit.Planned(
                    ARCHIVE,
                    outcome="refused",
                    details={"reason": result.error_code, "file": item.name[-200:]},
                )
            )
            continue
        result.entries = [plan.result(entry) for entry in entries]
        events += [event for entry in entries if (event := plan.event(entry)) is not None]
    audit.record_many(session, ports, account=account, actor=actor, planned=events)


def _archive_one_by_one(
    session: Session, ports: Ports, account: Account, actor: Actor, batch: _Batch
) -> None:
    for item, result, contents in batch:
        result.entries = []  # the whole batch runs again after a retryable conflict
        if contents is None:
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action=ARCHIVE,
                outcome="refused",
                details={"reason": result.error_code, "file": item.name[-200:]},
            )
            continue
        for req in _requests(item, contents):
            try:
                with session.begin_nested():
                    result.entries.append(archive_entry(session, ports, account, actor, req))
                continue
            except CertvaultError as exc:
                refusal = exc
            except DBAPIError as exc:
                if is_retryable(exc) or failure_of(exc) is not None:
                    raise  # a race (the batch runs again), or a database down or full
                # Say, a value the database will not take. Only the type is logged: the
                # statement's text and parameters may carry what the file held.
                log.warning("an import entry failed in the database: %s", type(exc).__name__)
                refusal = EntryNotStored()
            # The savepoint undid the entry's work; the refusal is recorded in the batch.
            result.entries.append(failed_entry(req, refusal))
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action=ARCHIVE,
                outcome="refused",
                target_type="certificate",
                details={
                    "reason": refusal.code,
                    "certificate_sha256": req.certificate.fingerprint(hashes.SHA256()).hex(),
                },
            )


def import_p12(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    data: bytes,
    password: str,
    *,
    person_id: int | None = None,
    name: str = "upload.p12",
) -> list[EntryResult]:
    """Import one PKCS#12 file (the REST upload). A file that cannot be read raises."""
    return import_p12_file(
        ports, actor, account_slug, data, password, person_id=person_id, name=name
    ).entries


def import_p12_file(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    data: bytes,
    password: str,
    *,
    person_id: int | None = None,
    name: str = "upload.p12",
) -> FileResult:
    """As :func:`import_p12`, with the reader's warnings. A file that cannot be read raises."""
    item = ImportItem(name=name, load=lambda: data, password=password, person_id=person_id)
    [result] = import_files(ports, actor, account_slug, [item])
    if result.error is not None:
        raise result.error
    return result
