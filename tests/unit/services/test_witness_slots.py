"""The witness file's two slots: a head moves forward by overwriting the older slot in place, a
slot torn by a crash is passed over for the other one, and a file in the format before slots is
still read and rewritten in slots by its next advance."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from certvault.errors import StorageFull
from certvault.services.kernel import witness
from certvault.services.kernel.witness import SLOT_SIZE, AuditHeadStore, ChainHead

CHAIN = "chain-a"


def _head(seq: int) -> ChainHead:
    return ChainHead(CHAIN, seq, f"{seq:02x}" * 32)


@pytest.fixture
def store(tmp_path: Path) -> AuditHeadStore:
    return AuditHeadStore(tmp_path / "heads")


def _file(store: AuditHeadStore) -> Path:
    return store.directory / f"{CHAIN}.head"


def _slot_seqs(store: AuditHeadStore) -> list[int]:
    """The seq in each slot, read straight from the file: two lines, each SLOT_SIZE bytes."""
    raw = _file(store).read_bytes()
    lines = raw.splitlines(keepends=True)
    assert [len(line) for line in lines] == [SLOT_SIZE, SLOT_SIZE]
    return [json.loads(line)["seq"] for line in lines]


def _overwrite_slot(store: AuditHeadStore, index: int, data: bytes) -> None:
    with _file(store).open("r+b") as f:
        f.seek(index * SLOT_SIZE)
        f.write(data)


def test_a_head_is_read_back_and_only_moves_forward(store: AuditHeadStore) -> None:
    assert store.read(CHAIN) is None
    store.advance([_head(5)])
    assert store.read(CHAIN) == _head(5)
    store.advance([_head(3)])  # a slower writer finishing late
    assert store.read(CHAIN) == _head(5)
    assert 3 not in _slot_seqs(store)
    store.advance([_head(6)])
    assert store.read(CHAIN) == _head(6)


def test_the_slots_alternate(store: AuditHeadStore) -> None:
    store.advance([_head(1)])
    assert _slot_seqs(store) == [1, 1]  # a new file holds the head in both slots
    store.advance([_head(2)])
    assert sorted(_slot_seqs(store)) == [1, 2]
    store.advance([_head(3)])
    assert sorted(_slot_seqs(store)) == [2, 3]  # the slot holding 1 was overwritten, not 2's
    store.advance([_head(4)])
    assert sorted(_slot_seqs(store)) == [3, 4]
    assert store.read(CHAIN) == _head(4)


def test_advances_write_in_place(store: AuditHeadStore) -> None:
    store.advance([_head(1)])
    before = os.stat(_file(store))
    assert before.st_size == 2 * SLOT_SIZE
    for seq in range(2, 12):
        store.advance([_head(seq)])
        after = os.stat(_file(store))
        assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert store.read(CHAIN) == _head(11)


def _newest_slot(store: AuditHeadStore) -> int:
    seqs = _slot_seqs(store)
    return seqs.index(max(seqs))


@pytest.mark.parametrize(
    "tear",
    [
        pytest.param(lambda line: b"\0" * len(line), id="zeroed"),
        pytest.param(lambda line: line[:40].ljust(len(line)), id="cut-short"),
        # Still JSON, but of two writes: only the checksum can tell.
        pytest.param(lambda line: line.replace(b'"seq":3', b'"seq":9'), id="mixed"),
    ],
)
def test_a_torn_slot_is_passed_over_for_the_other(
    store: AuditHeadStore, tear: Callable[[bytes], bytes]
) -> None:
    for seq in (1, 2, 3):
        store.advance([_head(seq)])
    newest = _newest_slot(store)
    line = _file(store).read_bytes()[newest * SLOT_SIZE : (newest + 1) * SLOT_SIZE]
    torn = tear(line)
    assert torn != line and len(torn) == SLOT_SIZE
    _overwrite_slot(store, newest, torn)
    assert store.read(CHAIN) == _head(2)
    store.advance([_head(4)])  # the torn slot is the one written next
    assert sorted(_slot_seqs(store)) == [2, 4]
    assert store.read(CHAIN) == _head(4)


def test_a_file_with_no_valid_slot_is_refused(store: AuditHeadStore) -> None:
    store.advance([_head(1)])
    store.advance([_head(2)])
    _overwrite_slot(store, 0, b"x" * SLOT_SIZE)
    _overwrite_slot(store, 1, b"x" * SLOT_SIZE)
    with pytest.raises(ValueError, match="no valid audit chain head"):
        store.read(CHAIN)
    with pytest.raises(ValueError, match="no valid audit chain head"):
        store.advance([_head(3)])
    _file(store).write_bytes(b"not json")  # neither slots nor the format before them
    with pytest.raises(ValueError):
        store.read(CHAIN)


def test_slots_of_another_chain_are_not_read(store: AuditHeadStore) -> None:
    store.advance([ChainHead("chain-b", 7, "ab" * 32)])
    (store.directory / "chain-b.head").rename(_file(store))
    with pytest.raises(ValueError, match="no valid audit chain head"):
        store.read(CHAIN)


def test_the_format_before_slots_is_read_and_converted(store: AuditHeadStore) -> None:
    store.ensure_directory()
    legacy = json.dumps({"chain": CHAIN, "seq": 4, "mac": _head(4).mac})
    _file(store).write_text(legacy)
    assert store.read(CHAIN) == _head(4)
    assert store.all() == [_head(4)]
    store.advance([_head(3)])  # not forward: the file is left as it was
    assert _file(store).read_text() == legacy
    store.advance([_head(5)])
    assert store.read(CHAIN) == _head(5)
    assert _slot_seqs(store) == [5, 5]
    store.advance([_head(6)])
    assert sorted(_slot_seqs(store)) == [5, 6]


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each fsync and fdatasync was called on: 'file' or 'directory'."""
    calls: list[str] = []

    def recording(name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            kind = "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
            calls.append(f"{name} {kind}")
            real(fd)

        return sync

    monkeypatch.setattr(witness.os, "fsync", recording("fsync", os.fsync))
    monkeypatch.setattr(witness.os, "fdatasync", recording("fdatasync", os.fdatasync))
    return calls


def test_a_new_file_is_synced_with_its_directory_and_an_advance_syncs_only_data(
    store: AuditHeadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_syncs(monkeypatch)
    store.advance([_head(1)])
    assert calls == ["fsync file", "fsync directory"]
    calls.clear()
    store.advance([_head(2)])
    assert calls == ["fdatasync file"]


def test_a_full_disk_when_creating_is_storage_full(store: AuditHeadStore) -> None:
    store.ensure_directory()
    # The temporary file the new head is written through, on a device that is always full.
    (store.directory / f"{CHAIN}.head.tmp").symlink_to("/dev/full")
    with pytest.raises(StorageFull):
        store.advance([_head(1)])
    assert store.read(CHAIN) is None


def test_a_full_disk_when_overwriting_is_storage_full(
    store: AuditHeadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.advance([_head(1)])

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")  # ENOSPC, as a copy-on-write filesystem

    monkeypatch.setattr(witness.os, "pwrite", full)
    with pytest.raises(StorageFull):
        store.advance([_head(2)])
    monkeypatch.undo()
    assert store.read(CHAIN) == _head(1)


def test_a_write_that_takes_part_of_the_data_is_continued(
    store: AuditHeadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite

    def partial(fd: int, data: bytes, offset: int) -> int:
        return real(fd, bytes(data[:1000]), offset)

    monkeypatch.setattr(witness.os, "pwrite", partial)
    store.advance([_head(1)])
    store.advance([_head(2)])
    monkeypatch.undo()
    assert sorted(_slot_seqs(store)) == [1, 2]
    assert store.read(CHAIN) == _head(2)


def test_a_reader_meeting_a_slot_being_written_waits_for_the_writer(
    store: AuditHeadStore, tmp_path: Path
) -> None:
    store.advance([_head(1)])
    store.advance([_head(2)])
    older = 1 - _newest_slot(store)
    scratch = AuditHeadStore(tmp_path / "scratch")
    scratch.advance([_head(3)])
    written = (scratch.directory / f"{CHAIN}.head").read_bytes()[:SLOT_SIZE]

    lock = os.open(store.directory / ".lock", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a writer, halfway through the older slot
        _overwrite_slot(store, older, written[:40] + b"\0" * (SLOT_SIZE - 40))
        result: list[ChainHead | None] = []
        reader = threading.Thread(target=lambda: result.append(store.read(CHAIN)))
        reader.start()
        reader.join(timeout=0.3)
        assert reader.is_alive()  # it waits instead of answering from the other slot
        _overwrite_slot(store, older, written)  # the write completes
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    reader.join(timeout=5)
    assert result == [_head(3)]
