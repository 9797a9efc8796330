"""The audit witness: the newest audit-chain head per chain, kept outside the database.

Someone who can write the database can delete the newest events and the chain still verifies; the
head written here, after each commit, is what shows that events were cut off. Writers check that
the database still holds the witness before they append (services/audit/log.py), so a rolled-back
or edited database stops the audit log instead of being chained onto.

The witness only ever moves forward. ``AuditHeadStore`` keeps it in files for one machine; several
nodes need a store the database's credentials cannot write (DESIGN.md §8), behind the same
:class:`Witness` Protocol.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from certvault.errors import StorageFull

_CHAIN = re.compile(r"^[A-Za-z0-9-]{1,64}$")


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
        with self._locked():
            for head in newest.values():
                current = self.read(head.chain)
                if current is None or current.seq < head.seq:
                    data = {"chain": head.chain, "seq": head.seq, "mac": head.mac}
                    _replace_durably(self._path(head.chain), json.dumps(data))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time across processes: the forward-only check and the write."""
        self.ensure_directory()
        lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def read(self, chain: str) -> ChainHead | None:
        try:
            raw = json.loads(self._path(chain).read_text())
        except FileNotFoundError:
            return None
        return ChainHead(str(raw["chain"]), int(raw["seq"]), str(raw["mac"]))

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
        with self._locked():
            if self.generation(account_uuid) < generation:
                data = {"account": account_uuid, "generation": generation}
                _replace_durably(path, json.dumps(data))


def _replace_durably(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file and an atomic rename: a crash
    leaves the old content or the new, never a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # The old head stays; the next writer moves it up to the committed events.
            raise StorageFull() from exc
        raise
