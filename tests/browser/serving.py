"""`certvault serve` in a subprocess for the browser tests: started, waited for, stopped."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.functional import cli_env


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"certvault serve exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("certvault serve did not come up in 60 s")


@contextmanager
def serving(cli: cli_env.Cli, port: int, log: Path) -> Iterator[Path]:
    """Run `certvault serve --port PORT` with the CLI's environment until the block ends;
    yields the log file (stdout and stderr of the server)."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(cli_env.CERTVAULT), "serve", "--port", str(port)],
            env=cli.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}", proc, log)
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
