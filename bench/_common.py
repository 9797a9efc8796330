"""Set-up shared by the benchmarks: a throwaway installation on SQLite or PostgreSQL, and the
report every benchmark writes (its figures printed, and kept in bench/results/<name>.json)."""

from __future__ import annotations

import atexit
import json
import os
import platform
import ssl
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cryptography  # noqa: E402
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend  # noqa: E402

from certvault.config import Settings  # noqa: E402
from certvault.services.directory import accounts  # noqa: E402
from certvault.services.kernel.actors import Actor  # noqa: E402
from certvault.services.kernel.ports import Ports, open_ports  # noqa: E402

# The PostgreSQL server the tests use (trust authentication); throwaway databases are made on it.
PG_ADMIN = os.environ.get("CERTVAULT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_SERVER = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
OPERATOR = Actor.operator("operator:bench@localhost")
# Where the reports go; the smoke test points it elsewhere so a tiny run never replaces a real one.
RESULTS_ENV = "CERTVAULT_BENCH_RESULTS"
RESULTS = Path(__file__).resolve().parent / "results"
_databases: set[str] = set()


@contextmanager
def throwaway_database() -> Iterator[str]:
    """An empty PostgreSQL database (its SQLAlchemy URL): certvault_bench_<pid>, made on first
    use, emptied for each later one, dropped when the process exits (a DROP DATABASE waits for a
    checkpoint, seconds each time)."""
    name = f"certvault_bench_{os.getpid()}"
    url = f"{PG_SERVER}/{name}"
    if name not in _databases:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        _databases.add(name)
        atexit.register(_drop, name)
    else:
        with psycopg.connect(f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}", autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
    yield url


def _drop(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def installation(backend: str, **overrides: object) -> Iterator[Ports]:
    """An initialized installation with one Key Vault account, "bench"."""
    with tempfile.TemporaryDirectory() as tmp, _database(backend) as url:
        settings = Settings(home=Path(tmp) / "home", database_url=url, **overrides)  # type: ignore[arg-type]
        ports = open_ports(settings)
        try:
            accounts.initialize(ports, OPERATOR)
            accounts.create_account(ports, OPERATOR, "Bench", "bench", key_vault_enabled=True)
            yield ports
        finally:
            ports.close()


@contextmanager
def _database(backend: str) -> Iterator[str | None]:
    if backend == "postgresql":
        with throwaway_database() as url:
            yield url
    else:
        yield None  # SQLite in the installation's home


class Report:
    """The figures of one run. Ratios print as ``name = 1.23x`` (the smoke test looks for them);
    every figure is also written, with what it ran on, to bench/results/<name>.json."""

    def __init__(self, name: str, sizes: dict[str, Any]) -> None:
        self.name = name
        self.sizes = sizes
        self.values: dict[str, dict[str, Any]] = {}
        self.ratios: dict[str, float] = {}

    def value(self, name: str, number: float, unit: str) -> float:
        self.values[name] = {"value": number, "unit": unit}
        return number

    def ratio(self, name: str, number: float, note: str = "") -> float:
        self.ratios[name] = number
        print(f"{name} = {number:.2f}x" + (f" ({note})" if note else ""), flush=True)
        return number

    def write(self) -> Path:
        folder = Path(os.environ.get(RESULTS_ENV) or RESULTS)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        document = {
            "benchmark": self.name,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "sizes": self.sizes,
            "values": self.values,
            "ratios": self.ratios,
            "environment": {
                "python": platform.python_version(),
                "openssl": openssl_backend.openssl_version_text(),
                "python_ssl": ssl.OPENSSL_VERSION,
                "cryptography": cryptography.__version__,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
            },
        }
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        return path


@contextmanager
def report(name: str, sizes: dict[str, Any]) -> Iterator[Report]:
    """A report written when the run finishes without an error."""
    made = Report(name, sizes)
    yield made
    print(f"figures written to {made.write()}")
