"""Drill 5: kill -9 `certvault kek rotate-account` at random points, run it again until it
finishes, and find every key still there, opening and matching its certificate.

Each run rotates the account key once more. A seeded generator picks, for each kill, either a
moment (from the command's start up to the end of its work) or a point of progress (so many data
keys moved to the new version, zero meaning right after the version is made), and kills the
process with SIGKILL there; then the command is run to its end. After each run: one live
account-key version, every key on it, the older versions wiped, the key blobs untouched, and
every key opening and matching its certificates (`certvault verify`; in the short form the same
drill in-process between runs, the command after the last), then `certvault audit verify` clean.
Short form: SQLite, 3 runs; long form (`make drills`): SQLite and PostgreSQL, 20 runs each.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import time

import pytest

from certvault.services.vault.verification import verify_escrow
from tests.conftest import TEST_OPERATOR
from tests.faults.drill import LONG, report, size
from tests.functional import cli_env

SEED = 5
BATCH = "3"  # small, so that kills land between batches of one rotation
ROTATE = ("kek", "rotate-account", "acme", "--batch-size", BATCH)
BACKENDS = ["sqlite", "postgresql"] if LONG else ["sqlite"]


@pytest.fixture
def cli(backend, tmp_path):  # type: ignore[no-untyped-def]
    yield from cli_env.cli_for(backend, tmp_path)


def _blobs(cli: cli_env.Cli) -> str:
    """A digest of every key's private-key blob (rotation must never touch one)."""
    rows = cli.sql("SELECT uuid, nonce, ciphertext FROM escrowed_keys ORDER BY uuid")
    digest = hashlib.sha256()
    for key_uuid, nonce, ciphertext in rows:
        digest.update(key_uuid.encode() + bytes(nonce) + bytes(ciphertext))
    return f"{len(rows)}:{digest.hexdigest()}"


def _newest(cli: cli_env.Cli) -> int:
    return int(cli.sql("SELECT max(version) FROM account_keys")[0][0])


def _on(cli: cli_env.Cli, version: int) -> int:
    rows = cli.sql(
        "SELECT count(*) FROM escrowed_keys WHERE account_key_version = ? AND destroyed_at IS NULL",
        [version],
    )
    return int(rows[0][0])


def _in_progress(cli: cli_env.Cli) -> bool:
    live = cli.sql("SELECT version FROM account_keys WHERE destroyed_at IS NULL")
    newest = _newest(cli)
    return len(live) > 1 or _on(cli, newest) < len(cli.sql("SELECT id FROM escrowed_keys"))


class _Runner:
    def __init__(self, cli: cli_env.Cli, keys: int, rng: random.Random) -> None:
        self.cli, self.keys, self.rng = cli, keys, rng
        self.duration = 3.0  # seconds from start to exit of a run not killed; learnt as it goes
        self.kills = self.mid_rotation = 0

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(cli_env.CERTVAULT), *ROTATE],
            env=self.cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def killed_run(self, before: int) -> None:
        """Start the command and kill -9 it at a moment or a point of progress, if it has not
        finished by then."""
        proc = self._start()
        if self.rng.random() < 0.5:
            moment = self.rng.uniform(0, self.duration)
            try:
                proc.wait(timeout=moment)
            except subprocess.TimeoutExpired:
                pass
        else:
            moved = self.rng.randrange(self.keys)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if _newest(self.cli) > before and _on(self.cli, _newest(self.cli)) >= moved:
                    break
                time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            self.kills += 1
        proc.communicate(timeout=60)  # reaped: a dead holder of the duty lock is seen as gone
        if proc.returncode == -signal.SIGKILL and _in_progress(self.cli):
            self.mid_rotation += 1
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr

    def finish(self) -> None:
        start = time.monotonic()
        proc = self._start()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
        assert "retired" in out, out
        self.duration = max(self.duration * 0.5, time.monotonic() - start)


def _verify(cli: cli_env.Cli, keys: int, *, last: bool) -> None:
    """Every key opens and matches its certificates: `certvault verify` after the last run and,
    in the long form, after each (in-process, the same drill, otherwise: a command costs
    seconds to start)."""
    if last or LONG:
        verify = cli.run("verify", "--account", "acme")
        said = cli_env.text(verify)
        assert verify.returncode == 0 and f"keys checked: {keys}," in said, said
        return
    ports = cli.ports()
    try:
        drill = verify_escrow(ports, TEST_OPERATOR, "acme")
    finally:
        ports.close()
    assert drill.ok and drill.keys == keys, drill.failures


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(1800 if LONG else 300)  # the long form starts the command a hundred times
def test_rotate_account_survives_kill_9(cli, backend):
    keys = size(30, 200)
    runs = size(3, 20)
    cli.bootstrap(keys=keys)
    blobs = _blobs(cli)
    rng = random.Random(f"{SEED}:{backend}")
    runner = _Runner(cli, keys, rng)
    verified = 0
    for run in range(runs):
        before = _newest(cli)
        wanted, kills = rng.randint(1, 3 if LONG else 2), runner.kills
        for _ in range(10):  # a run that ends before its kill moment is a rotation all the same
            if runner.kills - kills >= wanted:
                break
            runner.killed_run(_newest(cli))
        runner.finish()

        # One live version, the newest; every key on it; older versions wiped.
        newest = _newest(cli)
        assert newest > before
        keys_table = cli.sql(
            "SELECT version, destroyed_at IS NULL, length(wrapped_key) FROM account_keys"
        )
        for version, live, length in keys_table:
            assert (bool(live), length > 0) == (
                (True, True) if version == newest else (False, False)
            )
        assert _on(cli, newest) == keys
        assert _blobs(cli) == blobs  # no key lost, no key blob rewritten
        _verify(cli, keys, last=run == runs - 1)
        verified += keys
    audit = cli.run("audit", "verify")
    assert audit.returncode == 0, cli_env.text(audit)
    assert runner.kills >= runs  # every run was killed at least once before it finished...
    assert runner.mid_rotation >= 1  # ...and kills landed between the batches of a rotation
    report(
        f"rotate-account kill -9 ({backend})",
        runs=runs,
        kills=runner.kills,
        mid_rotation=runner.mid_rotation,
        keys=keys,
        verified=verified,
        lost=0,
    )
