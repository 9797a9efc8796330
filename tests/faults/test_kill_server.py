"""Drill 1: kill -9 `certvault serve` at random (seeded) moments while four clients archive keys
over HTTP, restart it, and again; then every key answered 2xx is present, opens and is the key
that was sent, no record is partial, and `certvault verify` / `certvault audit verify` are clean
(DESIGN.md §5.6: acknowledged means durable). SQLite and PostgreSQL.

A kill between a commit and the audit witness write leaves the database one event ahead of the
witness: the next writer proves those events extend the witnessed chain and moves the witness
up (services/audit/log.py), so the log verifies clean after the restart.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from certvault.services.vault.archive import IMPORTED
from tests.faults.archiving_clients import (
    ArchivingClients,
    make_upload,
    post_upload,
    prepare_vault,
    statuses,
)
from tests.faults.drill import report, size
from tests.faults.escrow_checks import assert_clean, check_acknowledged, records
from tests.faults.servers import ServerProcess
from tests.functional import cli_env

CLIENTS = 4


@pytest.fixture
def cli(backend: str, tmp_path: Path) -> Iterator[cli_env.Cli]:
    yield from cli_env.cli_for(backend, tmp_path)


# The long form runs many server starts: past the suite's 300 s per test.
@pytest.mark.timeout(size(300, 3600))
def test_kill_9_the_server_while_clients_archive(
    cli: cli_env.Cli, backend: str, tmp_path: Path
) -> None:
    vault = prepare_vault(cli, CLIENTS)
    # The long form kills a master and its two workers; the short one a single process.
    server = ServerProcess(cli, tmp_path / "serve.log", workers=size(1, 2))
    rng = random.Random(f"kill-9-{backend}")
    runs = size(2, 10)
    answers = []
    try:
        for _ in range(runs):
            server.start()
            clients = ArchivingClients(vault, lambda _c: server.url, CLIENTS)
            clients.start()
            # A random moment, but never before the run has archived something.
            assert clients.wait_for(len(clients.acknowledged()) + 1), server.log_tail()
            time.sleep(rng.uniform(0.0, 1.5))
            server.kill()
            clients.stop()
            answers += clients.answers
        # Back up after the last kill: the audit log goes on, archival works.
        server.start()
        with httpx.Client(timeout=30) as http:
            after = post_upload(http, server.url, vault.headers, 0, make_upload(vault, 0))
        server.stop()
    finally:
        server.kill()
    assert after.status == 200 and after.message == IMPORTED, (after, server.log_tail())
    answers.append(after)

    check = check_acknowledged(cli, answers)
    found = records(cli)
    report(
        f"kill -9 the server ({backend})",
        runs=runs,
        requests=len(answers),
        answers=statuses(answers),
        keys_acknowledged=check.acknowledged,
        keys_verified=check.verified,
        keys_lost=len(check.lost),
        keys_stored_unacknowledged=found.keyed_certificates - check.acknowledged,
    )
    assert check.lost == []
    assert check.verified == check.acknowledged >= runs + 1
    # A request the kill cut off has no answer at all; one that was answered was answered well.
    assert {a.status for a in answers} <= {200, None}, statuses(answers)
    assert_clean(cli)
    assert "Traceback" not in server.log_tail(200_000)
