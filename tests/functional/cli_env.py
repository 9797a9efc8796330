"""The real `certvault` command in a subprocess, with its own home and an EMPTY database.

Use it from a test module through a two-line fixture::

    @pytest.fixture
    def cli(backend, tmp_path):
        yield from cli_env.cli_for(backend, tmp_path)
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certvault.services.directory import accounts
from certvault.services.kernel.ports import Ports, open_ports
from tests.conftest import (
    IN_CI,
    PG_ADMIN,
    PG_COPIES,
    TEST_OPERATOR,
    _pg_available,
    _sqla_url,
)
from tests.conftest import make_settings as _make_settings
from tests.functional.helpers import import_ec_keys

CERTVAULT = Path(sys.executable).parent / "certvault"
# Wide enough that rich never wraps a line: a wrapped message could hide what a test greps for.
COLUMNS = "400"


@dataclass
class Cli:
    home: Path
    database_url: str | None  # None: SQLite under the home
    pg_dsn: str | None  # the same PostgreSQL database, for psycopg
    env: dict[str, str] = field(default_factory=dict)
    calls: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def run(
        self, *args: str | Path, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(CERTVAULT), *(str(a) for a in args)],
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.calls.append(proc)
        return proc

    @property
    def sqlite_path(self) -> Path:
        return self.home / "db" / "certvault.sqlite3"

    @property
    def master_key_dir(self) -> Path:
        return self.home / "master-key"

    def sql(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement straight on the database (``?`` placeholders), committed."""
        if self.pg_dsn is None:
            conn = sqlite3.connect(self.sqlite_path)
            try:
                with conn:
                    rows = conn.execute(statement, tuple(params)).fetchall()
            finally:
                conn.close()
            return rows
        with psycopg.connect(self.pg_dsn, autocommit=True) as pg:
            cur = pg.execute(statement.replace("?", "%s"), tuple(params))  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def settings(self, **overrides: object):  # type: ignore[no-untyped-def]
        return _make_settings(self.home, self.database_url, **overrides)

    def ports(self) -> Ports:
        return open_ports(self.settings())

    def bootstrap(self, *, key_vault: bool = True, keys: int = 0) -> None:
        """What `init` and `account create` do, in-process (cheaper where they are not tested),
        and ``keys`` EC keys archived in the account."""
        ports = self.ports()
        try:
            accounts.initialize(ports, TEST_OPERATOR)
            accounts.create_account(
                ports, TEST_OPERATOR, "Acme Corp", "acme", key_vault_enabled=key_vault
            )
            if keys:
                import_ec_keys(ports, TEST_OPERATOR, keys)
        finally:
            ports.close()


def text(proc: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr, whitespace collapsed (rich may still break a long line)."""
    return " ".join((proc.stdout + "\n" + proc.stderr).split())


def cli_for(backend: str, tmp_path: Path) -> Iterator[Cli]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTVAULT_")}
    home = tmp_path / "home"
    env.update(
        CERTVAULT_HOME=str(home),
        CERTVAULT_P12_KDF_ROUNDS="2048",
        CERTVAULT_ARGON2_TIME_COST="1",
        CERTVAULT_ARGON2_MEMORY_KIB="8",
        COLUMNS=COLUMNS,
        NO_COLOR="1",
    )
    if backend == "sqlite":
        yield Cli(home, None, None, env)
        return
    if not _pg_available():
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}")
        pytest.skip("PostgreSQL is not reachable")
    name = PG_COPIES.take("template1")  # empty: the command under test must create the schema
    url = _sqla_url(name)
    env["CERTVAULT_DATABASE_URL"] = url
    try:
        yield Cli(home, url, url.replace("postgresql+psycopg://", "postgresql://", 1), env)
    finally:
        PG_COPIES.drop(name)


# --- inputs made with the real openssl -------------------------------------------------------


def write_secret(path: Path, value: str) -> Path:
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def write_key_and_cert(  # type: ignore[no-untyped-def]
    directory: Path, stem: str, key, cert: x509.Certificate
) -> tuple[Path, Path]:
    key_path, cert_path = directory / f"{stem}.key.pem", directory / f"{stem}.cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["openssl", *(str(a) for a in args)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"openssl {args[0]} failed: {proc.stderr}"
    return proc


def openssl_p12(
    key_path: Path, cert_path: Path, out: Path, password_file: Path, name: str | None = None
) -> Path:
    """A .p12 made by ``openssl pkcs12 -export`` (the password is read from a file)."""
    args: list[str | Path] = [
        "pkcs12",
        "-export",
        "-inkey",
        key_path,
        "-in",
        cert_path,
        "-out",
        out,
        "-passout",
        f"file:{password_file}",
    ]
    if name:
        args += ["-name", name]
    openssl(*args)
    return out
