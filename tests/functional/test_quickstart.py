"""The README's Quickstart, run as a new user runs it: the server started the way `make run`
starts it (scripts/run-embedded.sh, from the top of a clone), then docs/quickstart.sh, which the
README holds word for word, with bash in a second process, top to bottom."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.functional import cli_env
from tests.functional.cli_env import openssl
from tests.functional.smtp_server import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docs" / "quickstart.sh"


def test_the_readme_holds_the_quickstart_script_word_for_word():
    script = SCRIPT.read_text()
    readme = (REPO / "README.md").read_text()
    assert f"```bash\n{script}```\n" in readme


def _public_key(*args: str | Path) -> str:
    return openssl(*args).stdout


def test_the_quickstart_runs_top_to_bottom_against_make_run(tmp_path):
    clone = tmp_path / "clone"  # the top of a clone, as far as both scripts can tell
    clone.mkdir()
    (clone / ".venv").symlink_to(Path(sys.executable).parent.parent)
    scratch_root = tmp_path / "tmp"  # where the quickstart's `mktemp -d` lands
    scratch_root.mkdir()
    cli = next(cli_env.cli_for("sqlite", tmp_path))
    port = free_port()
    env = {**cli.env, "CERTVAULT_PORT": str(port), "TMPDIR": str(scratch_root)}
    env.pop("COLUMNS")  # as in a terminal

    server_out = tmp_path / "make-run.out"
    with server_out.open("wb") as sink:
        server = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "run-embedded.sh")],
            cwd=clone,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server_out.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, server_out.read_text()
            time.sleep(0.3)
        assert f"console:            {base}/admin/" in server_out.read_text()

        walk = subprocess.run(
            ["bash", "-e", "-o", "pipefail", str(SCRIPT)],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        server_log = server_out.read_text()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the session this test started
            server.wait()
    output = walk.stdout + walk.stderr
    assert walk.returncode == 0, output

    # Every file of the walk is in the scratch folder; the clone holds nothing new.
    assert sorted(p.name for p in clone.iterdir()) == [".venv"]
    (scratch,) = scratch_root.iterdir()
    assert f"Files of this walk: {scratch}" in walk.stdout
    assert sorted(p.name for p in (scratch / "shares").iterdir()) == [
        "share-1.txt",
        "share-2.txt",
        "share-3.txt",
    ]
    assert '"message": "Imported successfully"' in walk.stdout
    password = re.search(r"password \(shown once\): (\S+)", walk.stdout)
    assert password, walk.stdout

    # Each key released opens with openssl and is Alice's.
    alice = _public_key("pkey", "-in", scratch / "alice.key", "-pubout")
    for p12, passphrase, legacy in (
        ("alice-recovered.p12", "my.pass", False),
        ("alice-legacy.p12", "my.pass", True),
        ("key.p12", "key.pass", False),
    ):
        extracted = scratch / f"{p12}.pem"
        openssl(
            "pkcs12", "-in", scratch / p12, "-nocerts", "-nodes", "-out", extracted,
            "-passin", f"file:{scratch / passphrase}", *(["-legacy"] if legacy else []),
        )  # fmt: skip
        assert _public_key("pkey", "-in", extracted, "-pubout") == alice, p12
    assert "key.p12 holds Alice's key" in walk.stdout
    assert re.search(r"^OK: 3 chains, \d+ events verified$", walk.stdout, re.M), walk.stdout
    assert "keys checked: 1, certificates: 1, failures: 0" in walk.stdout
    assert f"Console: {base}/admin/ (account acme, login it-admin" in walk.stdout

    # Nothing secret reached the server's output: not the generated passphrase, not the token.
    generated = (scratch / "key.pass").read_text().strip()
    assert len(generated) >= 20 and generated not in server_log
    assert password.group(1) not in server_log

    # Three releases (two by the operator, one through the API), each audited with its reason.
    reasons = cli.sql("SELECT details FROM audit_events WHERE action = 'key.release' ORDER BY seq")
    assert len(reasons) == 3
    for reason, (details,) in zip(
        ("laptop stolen, ticket 4711", "old iPhone", "ticket 4712"), reasons, strict=True
    ):
        assert reason in details
