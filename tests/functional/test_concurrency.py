"""Two OS processes archiving into the same vault at once (DESIGN.md §5.3, §8): no key is lost,
no person is created twice, and the audit chain stays one unbroken chain; SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import queue

from sqlalchemy import select

from certvault.db.models import Account, AuditEvent, AuditHead, Person
from certvault.services.audit import checks as audit_checks
from certvault.services.kernel.witness import ChainHead
from certvault.services.vault.archive import ARCHIVE, IMPORTED
from certvault.services.vault.verification import verify_escrow
from tests.functional import _archiver
from tests.functional.helpers import counts

FILES = 15  # per process
WORKERS = 2


def _run_workers(settings, database_url) -> dict[int, list]:  # type: ignore[no-untyped-def]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_archiver.archive,
            args=(w, str(settings.home), database_url, FILES, barrier, results),
        )
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    outcomes: dict[int, list] = {}
    try:
        for _ in procs:
            try:
                worker, got = results.get(timeout=240)
            except queue.Empty:
                raise AssertionError(
                    f"a worker gave no result; exit codes {[p.exitcode for p in procs]}"
                ) from None
            outcomes[worker] = got
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0] * WORKERS
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
        results.join_thread()
    return outcomes


def test_two_processes_archive_into_one_vault(ports, operator, account, settings, database_url):
    before = counts(ports)
    assert before["keys"] == 0

    outcomes = _run_workers(settings, database_url)

    # Every import succeeded and got its own certificate.
    assert sorted(outcomes) == list(range(WORKERS))
    flat = [o for w in range(WORKERS) for o in outcomes[w]]
    assert len(flat) == WORKERS * FILES
    assert all(message == IMPORTED and code is None for message, code, _ in flat), flat
    assert len({cid for _, _, cid in flat}) == WORKERS * FILES

    # No lost keys, and one person per address whatever its letter case.
    after = counts(ports)
    assert after["keys"] == after["certs"] == WORKERS * FILES
    expected = {_archiver.owner_email(w, i).lower() for w in range(WORKERS) for i in range(FILES)}
    with ports.db.read() as s:
        emails = list(s.scalars(select(Person.email)))
        chain = s.scalars(select(Account.uuid).where(Account.slug == "acme")).one()
        events = list(
            s.scalars(select(AuditEvent).where(AuditEvent.chain == chain).order_by(AuditEvent.seq))
        )
        head_row = s.get_one(AuditHead, chain)
    assert sorted(emails) == sorted(expected)
    assert len(expected) < WORKERS * FILES  # some persons really were raced for

    # One chain, no gaps or duplicates, every archival in it, writes really interleaved.
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    archives = [e for e in events if e.action == ARCHIVE]
    assert len(archives) == WORKERS * FILES
    assert all(e.outcome == "success" for e in archives)
    writers = [e.actor for e in archives]
    for w in range(WORKERS):
        assert writers.count(_archiver.worker_actor(w).name) == FILES
    # The workers meet at a barrier every ROUND files, so neither can finish before the other
    # starts: each round's events hold both workers, so the writer changes at least once a round.
    switches = sum(1 for a, b in zip(writers, writers[1:], strict=False) if a != b)
    assert switches >= FILES // _archiver.ROUND

    last = events[-1]
    assert (head_row.seq, head_row.mac) == (last.seq, last.mac)
    assert ports.audit_heads.read(chain) == ChainHead(chain, last.seq, last.mac)
    report = audit_checks.verify_chains(ports)
    assert report.ok, report.problems

    drill = verify_escrow(ports, operator)
    assert drill.ok, drill.failures
    assert drill.keys == drill.certificates == WORKERS * FILES
