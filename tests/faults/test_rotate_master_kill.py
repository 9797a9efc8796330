"""kill -9 of `certvault kek rotate-master` at moments around the making of the new version, then
a rerun: it finishes the job, every blob ends on one version, and every key still opens."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from sqlalchemy import select

from certvault.db.models import AccountKey, ServiceKey
from certvault.masterkey import blob_origin
from certvault.services.audit import checks as audit_checks
from certvault.services.directory import accounts
from certvault.services.kernel import keyring
from certvault.services.vault.imports import import_p12
from certvault.services.vault.verification import verify_escrow
from tests.conftest import TEST_OPERATOR
from tests.factories import make_cert, make_p12, pool_key
from tests.faults.drill import report, size
from tests.functional import cli_env
from tests.functional.cli_env import CERTVAULT, Cli, text

PW = "setup-password-1"


@pytest.fixture
def cli(backend, tmp_path):  # type: ignore[no-untyped-def]
    yield from cli_env.cli_for(backend, tmp_path)


def _versions(cli: Cli) -> dict[int, int]:
    ports = cli.ports()
    try:
        with ports.db.read() as session:
            blobs = list(
                session.scalars(
                    select(AccountKey.wrapped_key).where(AccountKey.destroyed_at.is_(None))
                )
            )
            blobs += list(session.scalars(select(ServiceKey.wrapped_data_key)))
    finally:
        ports.close()
    found: dict[int, int] = {}
    for blob in blobs:
        version = blob_origin(blob)[1]
        found[version] = found.get(version, 0) + 1
    return found


def _rewrapped_any(cli: Cli, version: int) -> bool:
    rows = cli.sql("SELECT wrapped_key FROM account_keys")
    return any(blob_origin(bytes(blob))[1] == version for (blob,) in rows)


def _everything_opens(cli: Cli, keys: int) -> int:
    ports = cli.ports()
    try:
        drill = verify_escrow(ports, TEST_OPERATOR)
        assert drill.ok and drill.keys == keys, drill.failures
        with ports.db.read() as session:
            for row in session.scalars(select(ServiceKey)):
                keyring.open_service_key(ports, row)
        assert audit_checks.verify_chains(ports).ok
        return drill.keys
    finally:
        ports.close()


def test_kill_9_during_rotate_master_then_rerun(cli: Cli) -> None:
    cli.bootstrap()
    ports = cli.ports()
    try:
        # Enough account keys that the rewrap takes several batches.
        for n in range(size(60, 400)):
            accounts.create_account(ports, TEST_OPERATOR, f"Account {n}", f"account-{n}")
        key = pool_key("ec256")
        import_p12(ports, TEST_OPERATOR, "acme", make_p12(key, make_cert(key), PW), PW)
    finally:
        ports.close()
    rng = random.Random(1405)
    runs, midway = size(1, 8), 0
    for run in range(runs):
        before = max(_versions(cli))
        new_file = cli.master_key_dir / f"master-v{before + 1}.key"
        proc = subprocess.Popen(
            [str(CERTVAULT), "kek", "rotate-master"],
            env=cli.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120

        def waiting() -> bool:
            return proc.poll() is None and time.monotonic() < deadline

        # Even runs are killed once the first batch is rewrapped (the job half done); odd ones
        # the moment the new version exists, or a little after.
        if run % 2 == 0:
            while waiting() and not _rewrapped_any(cli, before + 1):
                time.sleep(0.001)
        else:
            while waiting() and not new_file.exists():
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        found = _versions(cli)
        if len(found) > 1:
            midway += 1
        rerun = cli.run("kek", "rotate-master")
        assert rerun.returncode == 0, text(rerun)
        after = _versions(cli)
        assert len(after) == 1, after  # every live blob on one version
        assert max(after) >= before + 1
        verified = _everything_opens(cli, keys=1)
    report(
        "rotate-master kill -9",
        runs=runs,
        killed_midway=midway,
        blobs=sum(after.values()),
        keys_verified=verified,
        keys_lost=0,
    )
