"""A child process for the concurrency tests: archives its own PKCS#12 files into a shared vault.

Runs under the multiprocessing "spawn" context, so it builds its own Ports from the shared home
(master key, audit heads) and database URL, exactly as a second app process would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import open_ports
from certvault.services.vault.imports import import_p12
from tests.conftest import make_settings
from tests.factories import make_cert, make_p12, new_key

PW = "import-password-1"
ROUND = 5  # the workers meet at a barrier before every ROUND files


def worker_actor(worker: int) -> Actor:
    return Actor.operator(f"operator:worker{worker}@localhost")


def owner_email(worker: int, index: int) -> str:
    """Every third file belongs to a person both workers archive for (in different letter case)."""
    if index % 3 == 0:
        return f"Shared{index}@Example.org" if worker == 0 else f"shared{index}@EXAMPLE.ORG"
    return f"w{worker}-{index}@example.org"


def archive(
    worker: int,
    home: str,
    database_url: str | None,
    count: int,
    barrier: Any,
    results: Any,
) -> None:
    """Import ``count`` fresh EC p12 files into account "acme"; put one outcome per file."""
    files = []
    for i in range(count):
        key = new_key("ec256")
        files.append(make_p12(key, make_cert(key, owner_email(worker, i)), PW))
    ports = open_ports(make_settings(Path(home), database_url))
    actor = worker_actor(worker)
    outcomes: list[tuple[str, str | None, int | None]] = []
    try:
        ports.db.ping()  # connected before the start, so both begin writing at once
        for i, data in enumerate(files):
            if i % ROUND == 0:
                barrier.wait(timeout=120)
            try:
                [entry] = import_p12(ports, actor, "acme", data, PW, name=f"w{worker}-{i}.p12")
                outcomes.append((entry.message, entry.code, entry.client_cert_id))
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
                outcomes.append(("error", type(exc).__name__, None))
    finally:
        results.put((worker, outcomes))
        ports.close()
