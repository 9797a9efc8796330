"""Drill 2: restart PostgreSQL under load. A private cluster (pgcluster.py, never the shared
server) is restarted with `pg_ctl restart -m fast` (the long form also crashes it with `-m
immediate`, several times) while clients archive and release keys over HTTP.

Requests caught by the restart answer 503 `database_unavailable` with Retry-After (the SCM API:
code -503), never 500 and never a hang; the server recovers by itself, without a restart; nothing
acknowledged is lost. With the database stopped, the API, /readyz and the CLI say so plainly,
and the first request once it is back succeeds (the pool drops the dead connections).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from certvault.services.vault.archive import IMPORTED
from tests.faults.archiving_clients import (
    DATABASE_UNAVAILABLE,
    ArchivingClients,
    make_upload,
    post_upload,
    prepare_vault,
    statuses,
)
from tests.faults.drill import LONG, report, size
from tests.faults.escrow_checks import assert_clean, check_acknowledged
from tests.faults.pgcluster import cli_on, private_cluster
from tests.faults.servers import ServerProcess
from tests.functional import cli_env

ARCHIVERS, RELEASERS = 3, 1
MODES = ["fast", "immediate", "fast", "immediate", "immediate"] if LONG else ["fast"]
UNLIMITED = {f"CERTVAULT_DOWNLOADS_PER_HOUR_{who}": "1000000" for who in ("ADMIN", "TOKEN", "IP")}


def _unavailable(answer_status: int | None, code: object, retry_after: str | None) -> bool:
    return (
        answer_status == DATABASE_UNAVAILABLE
        and code in ("database_unavailable", -DATABASE_UNAVAILABLE)
        and retry_after is not None
        and retry_after.isdigit()
    )


# The long form runs many server starts: past the suite's 300 s per test.
@pytest.mark.timeout(size(300, 3600))
def test_restart_postgresql_under_load(tmp_path: Path) -> None:
    with private_cluster() as cluster:
        cli = cli_on(cluster, "certvault", tmp_path)
        vault = prepare_vault(cli, ARCHIVERS + RELEASERS)
        server = ServerProcess(cli, tmp_path / "serve.log", workers=size(1, 2), env=UNLIMITED)
        server.start()
        clients = ArchivingClients(
            vault, lambda _c: server.url, ARCHIVERS, releasers=RELEASERS, timeout=30
        )
        try:
            clients.start()
            assert clients.wait_for(3), server.log_tail()
            recovered = []
            for mode in MODES:
                cluster.restart(mode)  # returns once the database accepts connections again
                back_at = time.monotonic()
                # Recovered by itself: archivals are acknowledged again after the restart.
                after = len(clients.acknowledged())
                assert clients.wait_for(after + 1), (mode, server.log_tail())
                recovered.append(time.monotonic() - back_at)
                assert clients.wait_for(after + 3), (mode, server.log_tail())
            clients.stop()
            # Idle through a restart: every pooled connection is dead, and the next request is
            # answered on a fresh one (the pool checks each socket as it hands it out).
            cluster.restart("fast")
            with httpx.Client(timeout=30) as http:
                idle = post_upload(http, server.url, vault.headers, 0, make_upload(vault, 0))
            assert idle.status == 200 and idle.message == IMPORTED, (idle, server.log_tail())
            down = _while_stopped(cluster, server, vault, cli)
            # Back: the first request succeeds; the pool does not hand out a dead connection.
            cluster.start()
            with httpx.Client(timeout=30) as http:
                first = post_upload(http, server.url, vault.headers, 0, make_upload(vault, 0))
            assert first.status == 200 and first.message == IMPORTED, (first, server.log_tail())
        finally:
            clients.stop()
            server.stop()

        answers = [*clients.answers, idle, first]
        check = check_acknowledged(cli, answers)
        report(
            "restart PostgreSQL",
            restarts=len(MODES),
            modes="/".join(MODES),
            archivals=statuses(clients.answers),
            releases=statuses(clients.releases),
            keys_acknowledged=check.acknowledged,
            keys_verified=check.verified,
            keys_lost=len(check.lost),
            answers_while_stopped=down,
            slowest_recovery_s=round(max(recovered), 2),
        )
        assert check.lost == []
        assert check.verified == check.acknowledged > len(MODES) * 3
        # Every request got an answer (no hang), and every failure was the clear 503.
        for a in [*clients.answers, *clients.releases]:
            assert a.status == 200 or _unavailable(a.status, a.code, a.retry_after), a
        assert_clean(cli, commands=False)
        log = server.log_tail(1_000_000)
        assert "Traceback" not in log
        assert '"status": 500' not in log


def _while_stopped(cluster, server, vault, cli) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """With the database stopped: the REST and SCM uploads, a release and /readyz answer 503
    with a stable code; the CLI prints one clear line and exits 1. Returns what each said."""
    cluster.stop()
    upload = make_upload(vault, 0)
    with httpx.Client(timeout=30) as http:
        rest = post_upload(http, server.url, vault.headers, 0, upload)
        scm = post_upload(http, server.url, vault.headers, 0, upload, compat=True)
        release = http.post(
            f"{server.url}/api/v1/certificates/1/key",
            json={"generate_passphrase": True},
            headers=vault.headers,
        )
        ready = http.get(f"{server.url}/readyz")
    assert _unavailable(rest.status, rest.code, rest.retry_after), rest
    assert _unavailable(scm.status, scm.code, scm.retry_after), scm
    assert scm.code == -503
    assert release.status_code == 503 and release.json()["code"] == "database_unavailable"
    assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
    verify = cli.run("verify")
    assert verify.returncode == 1
    assert "[database_unavailable]" in cli_env.text(verify), cli_env.text(verify)
    assert "Traceback" not in verify.stderr
    return {
        "rest": rest.status or 0,
        "scm": scm.status or 0,
        "release": release.status_code,
        "readyz": ready.status_code,
        "cli": verify.returncode,
    }
