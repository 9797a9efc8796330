"""The audit witness: the newest audit-chain head per chain, kept outside the database.

Someone who can write the database can delete the newest events and the chain still verifies; the
head written here, after each commit, is what shows that events were cut off. Writers check that
the database still holds the witness before they append (services/audit/log.py), so a rolled-back
or edited database stops the audit log instead of being chained onto.

The witness only ever moves forward. ``AuditHeadStore`` keeps it in files for one machine; several
nodes need a store the database's credentials cannot write (DESIGN.md §8), behind the same
:class:`Witness` Protocol.

A chain's ``<chain>.head`` file holds two slots of ``SLOT_SIZE`` bytes, each a line of JSON padded
with spaces: the chain, its seq and MAC, and the SHA-256 of those three (``_checksum``). The
checksum is not a seal (anyone who can write the file can compute it); it tells a whole slot from
one a crash cut short. Moving a head forward overwrites, in place, the slot that does not hold the
newest head, and syncs the file's data. The file keeps its size, so the sync writes that one block
and no metadata journal commit, unlike a new file renamed into place on every advance.

Why a crash cannot lose the newest synced head: the write touches only the other slot, and each
slot is its own 4 KiB block, so the disk never rewrites the block holding the newest head. A crash
mid-write tears at most the slot being written; its checksum fails and reading takes the other
slot, which holds the head from before the write (the writer's commit is already in the database,
and the next writer moves the witness up to it, services/audit/log.py). Reading takes the valid
slot with the highest seq; a file in which no slot is valid is refused, as a file that is not JSON
always was. Readers take no lock: one that meets a slot failing its check reads again while
writers are held off, so a slot being written just then is not taken for a torn one.

A new file, and one in the format before slots (a single JSON object ``{"chain", "seq", "mac"}``,
still read), are written whole: a temporary file, synced, renamed over the name, and the directory
synced so that the rename survives a power cut. Grant generations, written rarely, are kept that
way too.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from certvault.errors import StorageFull
from certvault.services.kernel.durable import sync_directory

_CHAIN = re.compile(r"^[A-Za-z0-9-]{1,64}$")

SLOT_SIZE = 4096  # one filesystem block per slot: writing one slot never rewrites the other
_SLOTS = 2
_JSON = json.JSONDecoder()


@dataclass(frozen=True)
class ChainHead:
    chain: str
    seq: int
    mac: str


class Witness(Protocol):
    """Where chain heads and grant generations are witnessed outside the database: each is read,
    and only ever moved forward."""

    def ensure_directory(self) -> None: ...

    def read(self, chain: str) -> ChainHead | None: ...

    def advance(self, heads: Sequence[ChainHead]) -> None: ...

    def all(self) -> list[ChainHead]: ...

    def generation(self, account_uuid: str) -> int: ...

    def advance_generation(self, account_uuid: str, generation: int) -> None: ...


class AuditHeadStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, chain: str) -> Path:
        if not _CHAIN.match(chain):
            raise ValueError("bad chain name")
        return self.directory / f"{chain}.head"

    def ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def advance(self, heads: Sequence[ChainHead]) -> None:
        """Record heads; a head only ever moves forward (writers may finish out of order)."""
        newest: dict[str, ChainHead] = {}
        for head in heads:  # a bulk import commits many events of one chain at once
            if head.chain not in newest or head.seq > newest[head.chain].seq:
                newest[head.chain] = head
        if not newest:
            return
        with self._locked(fcntl.LOCK_EX):
            for head in newest.values():
                self._advance_chain(head)

    def _advance_chain(self, head: ChainHead) -> None:
        """Under the lock: overwrite the older slot in place, or write a new or old-format file
        whole."""
        path = self._path(head.chain)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            _replace_durably(path, _slot_file(head))
            return
        try:
            slots = _decode(head.chain, _read_fd(fd))
            index, current = _newest(path, slots)
            if current.seq >= head.seq:
                return
            if len(slots) < _SLOTS:  # the format before slots: rewritten whole, once
                _replace_durably(path, _slot_file(head))
            else:
                _write_slot(fd, _SLOTS - 1 - index, head)
        finally:
            os.close(fd)

    @contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        """``LOCK_EX``: one writer at a time across processes, for the forward-only check and the
        write. ``LOCK_SH``: writers held off while a reader looks again at a slot that failed."""
        self.ensure_directory()
        lock_fd = os.open(self.directory / ".lock", os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, operation)
            yield
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def read(self, chain: str) -> ChainHead | None:
        path = self._path(chain)
        try:
            slots = _decode(chain, path.read_bytes())
            if None in slots:
                # A writer may be overwriting that slot right now (readers take no lock): read
                # again with writers held off, when a slot that fails is one a crash tore.
                with self._locked(fcntl.LOCK_SH):
                    slots = _decode(chain, path.read_bytes())
        except FileNotFoundError:
            return None
        return _newest(path, slots)[1]

    def all(self) -> list[ChainHead]:
        if not self.directory.is_dir():
            return []
        heads = (self.read(p.stem) for p in sorted(self.directory.glob("*.head")))
        return [h for h in heads if h is not None]

    # --- grant generations ----------------------------------------------------------------------
    # Beside each account's chain head: the account's grant generation. A row that grants access
    # is sealed with the generation it was written at; a row older than this is a replay.

    def _generation_path(self, account_uuid: str) -> Path:
        if not _CHAIN.match(account_uuid):
            raise ValueError("bad account id")
        return self.directory / f"{account_uuid}.generation"

    def generation(self, account_uuid: str) -> int:
        """The account's grant generation; 0 when none was written."""
        try:
            raw = json.loads(self._generation_path(account_uuid).read_text())
        except FileNotFoundError:
            return 0
        return int(raw["generation"])

    def advance_generation(self, account_uuid: str, generation: int) -> None:
        """Record the account's grant generation; it only ever moves forward."""
        path = self._generation_path(account_uuid)
        with self._locked(fcntl.LOCK_EX):
            if self.generation(account_uuid) < generation:
                data = {"account": account_uuid, "generation": generation}
                _replace_durably(path, json.dumps(data).encode())


# --- the head file --------------------------------------------------------------------------------


def _checksum(head: ChainHead) -> str:
    """SHA-256 of the head's fields, one a line: a chain name holds no newline, and the MAC comes
    last."""
    return hashlib.sha256(f"{head.chain}\n{head.seq}\n{head.mac}".encode()).hexdigest()


def _encode_slot(head: ChainHead) -> bytes:
    """One slot: the head and its checksum as a line of JSON, padded to ``SLOT_SIZE``."""
    data = {"chain": head.chain, "seq": head.seq, "mac": head.mac, "sha256": _checksum(head)}
    line = json.dumps(data, separators=(",", ":")).encode()
    if len(line) >= SLOT_SIZE:
        raise ValueError("chain head too long for a slot")
    return line.ljust(SLOT_SIZE - 1) + b"\n"


def _slot_file(head: ChainHead) -> bytes:
    """A new head file: the head in both slots."""
    return _encode_slot(head) * _SLOTS


def _decode_slot(chain: str, raw: bytes) -> ChainHead | None:
    """The slot's head, or None when the slot is torn, garbled or of another chain."""
    try:
        data, _ = _JSON.raw_decode(raw.decode())  # the object; the padding after it is not read
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    name, seq, mac = data.get("chain"), data.get("seq"), data.get("mac")
    if not (isinstance(name, str) and type(seq) is int and isinstance(mac, str)):
        return None
    head = ChainHead(name, seq, mac)
    if name != chain or data.get("sha256") != _checksum(head):
        return None
    return head


def _decode(chain: str, data: bytes) -> tuple[ChainHead | None, ...]:
    """The heads a file holds, slot by slot (None for a slot that fails its check). A file in
    the format before slots holds one head, read as it always was: a file that is not that JSON
    object raises."""
    if len(data) != SLOT_SIZE * _SLOTS:
        raw = json.loads(data)
        return (ChainHead(str(raw["chain"]), int(raw["seq"]), str(raw["mac"])),)
    return tuple(
        _decode_slot(chain, data[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]) for i in range(_SLOTS)
    )


def _newest(path: Path, slots: tuple[ChainHead | None, ...]) -> tuple[int, ChainHead]:
    """The slot holding the highest seq, and its head; a file with no valid slot is refused."""
    valid = [(i, head) for i, head in enumerate(slots) if head is not None]
    if not valid:
        raise ValueError(f"{path.name} holds no valid audit chain head")
    return max(valid, key=lambda slot: slot[1].seq)


def _read_fd(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size, 0)


def _write_slot(fd: int, index: int, head: ChainHead) -> None:
    """Overwrite one slot in place and sync the data: the file's size and blocks stay as they
    are, so no metadata has to reach the disk."""
    with _storage_errors():
        _write_all(fd, _encode_slot(head), index * SLOT_SIZE)
        os.fdatasync(fd)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``: a write may take only part of it as the disk fills,
    and the next one then fails."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _replace_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file, an atomic rename and a synced
    directory: a crash leaves the old content or the new, never a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    with _storage_errors():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        sync_directory(path.parent)


@contextmanager
def _storage_errors() -> Iterator[None]:
    """A full disk or quota is ``StorageFull``. The old head stays (a torn slot is not read); the
    next writer moves it up to the committed events."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull() from exc
        raise
