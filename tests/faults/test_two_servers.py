"""Drill 4: two `certvault serve` processes on one PostgreSQL database (one home: one master key,
one witness) while four clients send the same p12 files to both at the same moment, through the
REST upload and the SCM import-key.

Each key is escrowed once and each certificate stored once; of the four answers for one file
exactly one says "Imported successfully" and the others "Already exists" (what the SCM API
promises), all naming the same certificate; no 500; the audit chain verifies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from certvault.db.models import AuditEvent, Certificate, EscrowedKey
from certvault.services.vault.archive import ALREADY_EXISTS, ARCHIVE, IMPORTED
from tests.faults.archiving_clients import (
    ArchivingClients,
    Upload,
    make_upload,
    prepare_vault,
    statuses,
)
from tests.faults.drill import report, size
from tests.faults.escrow_checks import assert_clean, check_acknowledged
from tests.faults.servers import ServerProcess
from tests.functional import cli_env

CLIENTS = 4  # client c talks to server c % 2; clients 2 and 3 through the SCM API


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[cli_env.Cli]:
    yield from cli_env.cli_for("postgresql", tmp_path)


def _counts(cli: cli_env.Cli) -> tuple[int, int, int]:
    ports = cli.ports()
    try:
        with ports.db.read() as s:
            keys = s.scalar(select(func.count()).select_from(EscrowedKey))
            certs = s.scalar(select(func.count()).select_from(Certificate))
            archived = s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == ARCHIVE, AuditEvent.outcome == "success")
            )
    finally:
        ports.close()
    return int(keys or 0), int(certs or 0), int(archived or 0)


# The long form runs many server starts: past the suite's 300 s per test.
@pytest.mark.timeout(size(300, 3600))
def test_two_servers_race_on_the_same_keys(cli: cli_env.Cli, tmp_path: Path) -> None:
    vault = prepare_vault(cli, 2)
    files = size(12, 60)
    pool = [make_upload(vault, n % 2) for n in range(files)]
    servers = [
        ServerProcess(cli, tmp_path / f"serve-{name}.log", workers=size(1, 2)) for name in "ab"
    ]
    # Every client sends file n at the same moment as the others.
    barrier = threading.Barrier(CLIENTS, timeout=120)

    def same_files(_client: int, n: int) -> Upload | None:
        if n >= files:
            return None
        barrier.wait()
        return pool[n]

    clients = ArchivingClients(
        vault,
        lambda c: servers[c % 2].url,
        CLIENTS,
        next_upload=same_files,
        compat_for=lambda c: c >= 2,
    )
    try:
        for server in servers:
            server.start()
        clients.start()
        clients.stop_when_done(timeout=300)
    finally:
        for server in servers:
            server.stop()

    answers = clients.answers
    by_file: dict[bytes, list] = {}
    for a in answers:
        by_file.setdefault(a.upload.sha256, []).append(a)
    imported = sum(1 for a in answers if a.message == IMPORTED)
    keys, certs, archived = _counts(cli)
    check = check_acknowledged(cli, answers)
    report(
        "two servers on one PostgreSQL",
        files=files,
        requests=len(answers),
        answers=statuses(answers),
        imported=imported,
        already_exists=sum(1 for a in answers if a.message == ALREADY_EXISTS),
        keys_stored=keys,
        certificates_stored=certs,
        keys_acknowledged=check.acknowledged,
        keys_verified=check.verified,
        keys_lost=len(check.lost),
    )
    assert statuses(answers) == {"200": files * CLIENTS}, [a for a in answers if a.status != 200]
    for sha, got in by_file.items():
        assert len(got) == CLIENTS, sha.hex()
        assert sorted(a.message for a in got) == [ALREADY_EXISTS] * (CLIENTS - 1) + [IMPORTED]
        assert len({a.cert_id for a in got}) == 1, got
    assert keys == certs == archived == files
    assert check.lost == [] and check.verified == files
    assert_clean(cli)
    for server in servers:
        log = server.log_tail(1_000_000)
        assert "Traceback" not in log and '"status": 500' not in log
