"""`certvault serve` as a process a drill can start, stop, and kill -9 (the master and its
workers at once), on a free port, with the environment of a tests/functional/cli_env.Cli."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from certvault.cli.serve import metrics_parent
from tests.functional import cli_env
from tests.functional.smtp_server import free_port


@dataclass
class ServerProcess:
    """One `certvault serve`. ``command`` replaces the `certvault` executable (a launcher that
    prepares the process first, say); the rest of the command line is always ``serve ...``."""

    cli: cli_env.Cli
    log: Path
    workers: int = 2
    port: int = field(default_factory=free_port)
    command: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        """Start the server and wait until it answers /healthz; its output is appended to
        ``log``."""
        assert self.proc is None, "already running"
        argv = [*(self.command or [str(cli_env.CERTVAULT)]), "serve", "--port", str(self.port)]
        argv += ["--workers", str(self.workers)]
        with self.log.open("ab") as sink:
            sink.write(f"--- start {self.starts + 1}\n".encode())
            sink.flush()
            # A session of its own: kill() reaches the master and every worker with one signal.
            self.proc = subprocess.Popen(
                argv,
                env={**self.cli.env, **self.env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        self._wait_until_up(timeout)

    def _wait_until_up(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"certvault serve exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"certvault serve did not come up in {timeout} s: {self.log_tail()}")

    def kill(self) -> None:
        """kill -9 the server and its workers, and reap it."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server as an operator would (SIGTERM), kill -9 if it takes too long."""
        try:
            self._signal(signal.SIGTERM, wait=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def _signal(self, sig: int, wait: float = 30) -> None:
        proc, pgid = self.proc, self.proc.pid if self.proc else None
        if proc is None or pgid is None:
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=wait)
        if sig == signal.SIGKILL or proc.returncode is not None:
            # Workers reparented away from a killed master die with the same group signal.
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None
        # A killed server leaves its workers' metric files (in memory, /dev/shm): the next
        # server of this home would remove them, but a drill's home is gone by then.
        shutil.rmtree(metrics_parent(self.cli.home) / f"serve-{pgid}", ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""
