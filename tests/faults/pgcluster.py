"""A private PostgreSQL cluster a drill may restart or crash: `initdb` into a temporary folder,
`pg_ctl` on a spare port, never the shared server (DESIGN.md §9).

PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres`` user and every
command runs through ``runuser``; its folder lives directly under the system's temporary folder,
which that user can reach (pytest's folders are private to root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.functional import cli_env
from tests.functional.smtp_server import free_port

OWNER = "postgres"


def postgres_bin() -> Path:
    """The newest PostgreSQL server binaries installed (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not found:
        raise AssertionError("no PostgreSQL server binaries (Debian package postgresql)")
    return Path(found[-1]).parent


@dataclass
class PrivateCluster:
    root: Path
    port: int
    bin: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` in this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", OWNER, "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"{Path(argv[0]).name} failed: {proc.stdout}{proc.stderr}")
        return proc

    def pg_ctl(self, *args: str, timeout: float = 120) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-w", "-t", "90", *args, timeout=timeout)

    def initdb(self) -> None:
        # --no-sync only spares initdb's own fsyncs; the running cluster keeps fsync on, so that
        # what it acknowledged survives a crash as it would in production.
        self._run(
            self.bin / "initdb",
            "-D",
            self.data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"port = {self.port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.root}'\n"
            "max_connections = 60\n"
            "shared_buffers = 16MB\n"
            "fsync = on\n"
            "synchronous_commit = on\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(options)

    def start(self) -> None:
        self.pg_ctl("-l", str(self.root / "server.log"), "start")

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart -m MODE`: fast (sessions ended, a clean checkpoint) or immediate (a
        crash: the server recovers from its WAL)."""
        self.pg_ctl("-m", mode, "-l", str(self.root / "server.log"), "restart")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextmanager
def private_cluster(databases: Sequence[str] = ()) -> Iterator[PrivateCluster]:
    """A running private cluster with ``databases`` created; stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="certvault-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(OWNER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = PrivateCluster(root, free_port(), postgres_bin())
    try:
        cluster.initdb()
        cluster.start()
        for name in databases:
            cluster.create_database(name)
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except AssertionError:
            pass  # not running
        shutil.rmtree(root, ignore_errors=True)


def cli_on(cluster: PrivateCluster, database: str, tmp_path: Path) -> cli_env.Cli:
    """A `certvault` command environment (tests/functional/cli_env.py) whose database is a new
    ``database`` in ``cluster``, with its home under ``tmp_path``."""
    url = cluster.create_database(database)
    local = next(cli_env.cli_for("sqlite", tmp_path))
    env = {**local.env, "CERTVAULT_DATABASE_URL": url}
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    return cli_env.Cli(local.home, url, dsn, env)
