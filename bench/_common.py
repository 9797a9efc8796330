"""Set-up shared by the benchmarks: a throwaway installation on SQLite or PostgreSQL."""

from __future__ import annotations

import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certvault.config import Settings  # noqa: E402
from certvault.services.directory import accounts  # noqa: E402
from certvault.services.kernel.actors import Actor  # noqa: E402
from certvault.services.kernel.ports import Ports, open_ports  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
OPERATOR = Actor.operator("operator:bench@localhost")


@contextmanager
def installation(backend: str, **overrides: object) -> Iterator[Ports]:
    with tempfile.TemporaryDirectory() as tmp:
        url = None
        name = f"cvbench_{uuid.uuid4().hex[:10]}"
        if backend == "postgresql":
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        settings = Settings(home=Path(tmp) / "home", database_url=url, **overrides)  # type: ignore[arg-type]
        ports = open_ports(settings)
        try:
            accounts.initialize(ports, OPERATOR)
            accounts.create_account(ports, OPERATOR, "Bench", "bench", key_vault_enabled=True)
            yield ports
        finally:
            ports.close()
            if backend == "postgresql":
                with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
