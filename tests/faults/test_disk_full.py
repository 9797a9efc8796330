"""Drill 3: the disk fills up under an SQLite installation.

Short form (`make test`): `PRAGMA max_page_count` (page_limit.py) makes the database full while
the server runs. Archival answers 507 `storage_full` with Retry-After (the SCM API: -507),
nothing is half-written, `PRAGMA integrity_check` is ok, and once the limit is raised ("space
returns") the same server archives again.

Long form (`make drills`), where the machine allows it: CERTVAULT_HOME on a small loop-mounted
ext4 filesystem that the server's own writes fill, then space is freed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from certvault.services.vault.archive import IMPORTED
from tests.faults.archiving_clients import (
    STORAGE_FULL,
    Answer,
    DrillVault,
    make_upload,
    post_upload,
    prepare_vault,
    statuses,
)
from tests.faults.drill import LONG, report
from tests.faults.escrow_checks import assert_clean, check_acknowledged, records
from tests.faults.page_limit import ENV, UNLIMITED, set_limit
from tests.faults.servers import ServerProcess
from tests.functional import cli_env

ROOT = Path(__file__).resolve().parents[2]
ATTEMPTS = 400  # archivals before a full database must have refused one


def _full(a: Answer) -> bool:
    return (
        a.status == STORAGE_FULL
        and a.code in ("storage_full", -STORAGE_FULL)
        and a.retry_after is not None
        and a.retry_after.isdigit()
    )


def _until_full(http: httpx.Client, server: ServerProcess, vault: DrillVault) -> list[Answer]:
    """Archive until the database refuses (the free room it had may take a few); every answer
    before is a 200."""
    answers = []
    for _ in range(ATTEMPTS):
        answers.append(post_upload(http, server.url, vault.headers, 0, make_upload(vault, 0)))
        if answers[-1].status != 200:
            break
    assert _full(answers[-1]), (answers[-1], server.log_tail())
    return answers


def _refused_while_full(
    http: httpx.Client, server: ServerProcess, vault: DrillVault, cli: cli_env.Cli
) -> list[Answer]:
    """While full: REST and SCM uploads answer 507 and change nothing; the file is sound."""
    before = records(cli)
    refused = [post_upload(http, server.url, vault.headers, 1, make_upload(vault, 1))]
    refused.append(
        post_upload(http, server.url, vault.headers, 1, make_upload(vault, 1), compat=True)
    )
    assert all(_full(a) for a in refused), refused
    assert refused[1].code == -STORAGE_FULL
    assert records(cli) == before
    assert cli.sql("PRAGMA integrity_check") == [("ok",)]
    return refused


def _with_tests(cli: cli_env.Cli) -> str:
    """PYTHONPATH for the launcher: this checkout's `tests` package before what was there."""
    return os.pathsep.join(p for p in (str(ROOT), cli.env.get("PYTHONPATH")) if p)


def _clean_log(server: ServerProcess) -> None:
    log = server.log_tail(1_000_000)
    assert "Traceback" not in log
    assert '"status": 500' not in log


def test_sqlite_database_full_then_space_returns(tmp_path: Path) -> None:
    cli = next(cli_env.cli_for("sqlite", tmp_path))
    vault = prepare_vault(cli, 2)
    limit = tmp_path / "page-limit"
    set_limit(limit, UNLIMITED)
    server = ServerProcess(
        cli,
        tmp_path / "serve.log",
        workers=1,
        command=[sys.executable, "-m", "tests.faults.page_limit"],
        env={ENV: str(limit), "PYTHONPATH": _with_tests(cli)},
    )
    server.start()
    try:
        with httpx.Client(timeout=30) as http:
            answers = [post_upload(http, server.url, vault.headers, 0, make_upload(vault, 0))]
            assert answers[0].status == 200, server.log_tail()
            set_limit(limit, 1)  # no page more than the database holds now
            answers += _until_full(http, server, vault)
            answers += _refused_while_full(http, server, vault, cli)
            set_limit(limit, UNLIMITED)  # space returns
            back = post_upload(http, server.url, vault.headers, 1, make_upload(vault, 1))
            answers.append(back)
            assert back.status == 200 and back.message == IMPORTED, (back, server.log_tail())
    finally:
        server.stop()
    check = check_acknowledged(cli, answers)
    report(
        "SQLite database full (max_page_count)",
        answers=statuses(answers),
        keys_acknowledged=check.acknowledged,
        keys_verified=check.verified,
        keys_lost=len(check.lost),
    )
    assert check.lost == []
    assert check.verified == check.acknowledged == records(cli).keys
    assert_clean(cli, commands=False)
    _clean_log(server)


# --- long form: a real filesystem that fills up -------------------------------------------------

IMAGE_MB = 24
ROOM_KB = 384  # left free once the ballast is written: the server's writes fill it


def _loop_mount_refusal() -> str | None:
    """Why a loop-mounted filesystem cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@contextmanager
def _small_filesystem(where: Path) -> Iterator[Path]:
    image, mountpoint = where / "fs.img", where / "mnt"
    mountpoint.mkdir()
    with image.open("wb") as f:
        f.truncate(IMAGE_MB * 1024 * 1024)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True
    )
    mounted = made.returncode == 0 and (
        subprocess.run(
            ["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True
        ).returncode
        == 0
    )
    if not mounted:
        print(
            f"DRILL disk full (loop mount): skipped, cannot mount a loop device here: {made.stderr}"
        )
        pytest.skip("cannot mount a loop device here")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def _ballast(mountpoint: Path) -> Path:
    """Fill the filesystem but for ROOM_KB."""
    ballast = mountpoint / "ballast"
    free = shutil.disk_usage(mountpoint).free
    with ballast.open("wb") as f:
        f.write(b"\0" * max(free - ROOM_KB * 1024, 0))
        f.flush()
        os.fsync(f.fileno())
    return ballast


if LONG:

    def test_filesystem_full_then_space_freed(tmp_path: Path) -> None:
        refusal = _loop_mount_refusal()
        if refusal is not None:
            print(f"DRILL disk full (loop mount): skipped, {refusal}")
            pytest.skip(refusal)
        with _small_filesystem(tmp_path) as mountpoint:
            cli = next(cli_env.cli_for("sqlite", mountpoint))
            vault = prepare_vault(cli, 2)
            server = ServerProcess(cli, tmp_path / "serve.log", workers=1)
            server.start()
            try:
                with httpx.Client(timeout=30) as http:
                    ballast = _ballast(mountpoint)
                    answers = _until_full(http, server, vault)
                    refused = _refused_while_full(http, server, vault, cli)
                    answers += refused
                    ballast.unlink()  # space freed
                    back = post_upload(http, server.url, vault.headers, 1, make_upload(vault, 1))
                    answers.append(back)
                    assert back.status == 200 and back.message == IMPORTED, (
                        back,
                        server.log_tail(),
                    )
            finally:
                server.stop()
            check = check_acknowledged(cli, answers)
            report(
                "disk full (loop-mounted ext4)",
                answers=statuses(answers),
                keys_acknowledged=check.acknowledged,
                keys_verified=check.verified,
                keys_lost=len(check.lost),
            )
            assert check.lost == []
            assert check.verified == check.acknowledged
            assert_clean(cli)
            _clean_log(server)
