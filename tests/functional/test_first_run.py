"""What a new user meets first: commands refuse a home that `certvault init` never made (and
create nothing), shares are not written into a git work tree, the clone ignores what `make run`
and the README leave in it, `/` leads to the console, and the public URL follows the address
served."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from certvault.cli.serve import served_url
from tests.factories import make_cert, new_key
from tests.functional import cli_env
from tests.functional.cli_env import CERTVAULT, Cli
from tests.functional.smtp_server import free_port

REPO = Path(__file__).resolve().parents[2]

# Every command that works on an installation, with arguments that would pass their own checks.
COMMANDS = [
    ("account", "create", "Acme", "--slug", "acme"),
    ("admin", "create", "alice", "--account", "acme"),
    ("token", "list", "--account", "acme"),
    ("audit", "verify"),
    ("verify",),
    ("mail", "send"),
    ("kek", "export-shares", "--threshold", "2", "--shares", "3"),
    ("import", "--account", "acme", "{tmp}/x.p12", "--password-file", "{tmp}/pw"),
    ("serve",),
]


@pytest.fixture
def cli(backend, tmp_path):
    yield from cli_env.cli_for(backend, tmp_path)


def _run(cli: Cli, *args: str, cwd: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [str(CERTVAULT), *args],
        env={**cli.env, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_commands_refuse_a_home_never_initialized_and_create_nothing(cli, tmp_path, command):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in cli.env.items() if k != "CERTVAULT_HOME"}  # the default, ./var
    (tmp_path / "x.p12").write_bytes(b"not a p12")
    cli_env.write_secret(tmp_path / "pw", "import-password-1")
    proc = subprocess.run(
        [str(CERTVAULT), *(part.format(tmp=tmp_path) for part in command)],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "[not_initialized]" in lines[0] and "certvault init" in lines[0]
    if cli.database_url is None:
        assert str(elsewhere / "var") in lines[0] and "CERTVAULT_HOME=" in lines[0]
    else:  # the database named, without its password
        assert "CERTVAULT_DATABASE_URL" in lines[0]
    assert "internal" not in proc.stderr and "Traceback" not in proc.stderr
    assert _tree(elsewhere) == []  # no ./var, no database file
    assert not cli.home.exists()
    if cli.pg_dsn is not None:
        assert cli.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_init_makes_the_home_the_other_commands_then_use(cli, tmp_path):
    assert "[not_initialized]" in cli.run("account", "show", "acme").stderr
    made = cli.run("init")
    assert made.returncode == 0, made.stderr
    created = cli.run("account", "create", "Acme", "--slug", "acme")
    assert created.returncode == 0, created.stderr
    assert cli.run("account", "show", "acme").stdout.startswith("acme\tAcme\t")


def test_an_unreachable_database_is_named_without_its_password(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTVAULT_")}
    port = free_port()  # nothing listens there
    env.update(
        CERTVAULT_HOME=str(tmp_path / "home"),
        CERTVAULT_DATABASE_URL=f"postgresql+psycopg://certvault:Secret-Db-Pw-9@127.0.0.1:{port}/cv",
        COLUMNS="400",
    )
    proc = subprocess.run(
        [str(CERTVAULT), "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "[database_unavailable]" in proc.stderr and f"127.0.0.1:{port}/cv" in proc.stderr
    assert "Secret-Db-Pw-9" not in proc.stderr + proc.stdout
    assert not (tmp_path / "home").exists()


# --- master-key shares and the clone ----------------------------------------------------------


@pytest.fixture
def sqlite_cli(tmp_path):
    yield from cli_env.cli_for("sqlite", tmp_path)


def _git(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *(str(a) for a in args)], cwd=cwd, capture_output=True, text=True, timeout=30
    )


def test_export_shares_refuses_a_folder_in_a_git_work_tree(sqlite_cli, tmp_path):
    sqlite_cli.bootstrap()
    clone = tmp_path / "clone"
    clone.mkdir()
    assert _git("init", "-q", cwd=clone).returncode == 0
    before = sqlite_cli.sql("SELECT count(*) FROM audit_events")

    for target in (clone / "shares", clone / "deep" / "er"):
        proc = sqlite_cli.run(
            "kek", "export-shares", "--threshold", "2", "--shares", "3", "--out-dir", target
        )
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "[inside_git_work_tree]" in lines[0], proc.stderr
        assert str(clone) in lines[0] and "--force" in lines[0]
        assert "share" not in proc.stdout
    assert _tree(clone) == [".git", *sorted(_tree_of_git(clone))]
    assert sqlite_cli.sql("SELECT count(*) FROM audit_events") == before  # nothing recorded

    forced = sqlite_cli.run(
        "kek", "export-shares", "--threshold", "2", "--shares", "3",
        "--out-dir", clone / "shares", "--force",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in (clone / "shares").iterdir()) == [
        "share-1.txt",
        "share-2.txt",
        "share-3.txt",
    ]
    # The clone's .gitignore would keep them out of a commit there: here, only --force wrote them.
    again = sqlite_cli.run(
        "kek", "export-shares", "--threshold", "2", "--shares", "3",
        "--out-dir", clone / "shares", "--force",
    )  # fmt: skip
    assert again.returncode == 1 and "[shares_exist]" in again.stderr
    assert "Traceback" not in again.stderr


def _tree_of_git(clone: Path) -> list[str]:
    return [p for p in _tree(clone) if p.startswith(".git/")]


def test_the_clone_ignores_what_make_run_and_the_readme_leave_behind():
    if not (REPO / ".git").exists():
        pytest.fail("the tests run in a git clone of certvault")
    left_behind = [
        "var/db/certvault.sqlite3",
        "var/master-key/master-v1.key",
        "shares/share-1.txt",
        "alice.key",
        "alice.p12",
        "alice.crt",
        "p12.pass",
        "my.pass",
        "headers.txt",
        "key.p12",
    ]
    proc = _git("check-ignore", "--no-index", *left_behind, cwd=REPO)
    assert sorted(proc.stdout.split()) == sorted(left_behind), proc.stderr
    # The committed test vectors stay visible to git.
    kept = _git("check-ignore", "--no-index", "tests/vectors/p12/ed25519.p12", cwd=REPO)
    assert kept.returncode == 1 and kept.stdout == ""


# --- the server's address ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "host", "port", "url"),
    [
        ("http", "127.0.0.1", 8080, "http://127.0.0.1:8080"),
        ("http", "localhost", 9000, "http://localhost:9000"),
        ("https", "vault.example.org", 443, "https://vault.example.org"),
        ("http", "192.0.2.7", 80, "http://192.0.2.7"),
        ("https", "::1", 8443, "https://[::1]:8443"),
        ("https", "[2001:db8::1]", 8443, "https://[2001:db8::1]:8443"),
    ],
)
def test_served_url(scheme, host, port, url):
    assert served_url(scheme, host, port) == url


def test_a_wildcard_address_stands_for_the_machine_name():
    import socket

    assert served_url("http", "0.0.0.0", 8081) == f"http://{socket.getfqdn()}:8081"


def test_commands_write_urls_under_the_port_of_make_run(sqlite_cli):
    sqlite_cli.bootstrap()
    made = sqlite_cli.run(
        "form", "create", "--account", "acme", "--slug", "staff", "--profile", "smime",
        env={"CERTVAULT_PORT": "8123"},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "http://127.0.0.1:8123/enroll/acme/staff" in made.stdout.split()


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log

    def lines(self) -> list[dict[str, object]]:
        text = self.log.read_text(errors="replace")
        return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


def _serve(cli: Cli, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Served:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(CERTVAULT), "serve", "--port", str(port), "--workers", "1", *args],
            env={**cli.env, **(env or {})},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{served.base}/healthz", timeout=2).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def _stop(served: Served) -> None:
    served.proc.terminate()
    try:
        served.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait()


def _manager_token(cli: Cli) -> str:
    made = cli.run("admin", "create", "boss", "--account", "acme", "--privilege", "settings_manage")
    assert made.returncode == 0, made.stderr
    token = cli.run("token", "create", "boss", "--account", "acme")
    assert token.returncode == 0, token.stderr
    return token.stdout.strip()


def test_the_server_writes_urls_under_the_port_it_serves_and_leads_to_the_console(
    sqlite_cli, tmp_path
):
    sqlite_cli.bootstrap()
    made = sqlite_cli.run(
        "form", "create", "--account", "acme", "--slug", "staff", "--profile", "smime"
    )
    assert made.returncode == 0, made.stderr
    token = _manager_token(sqlite_cli)
    served = _serve(sqlite_cli, tmp_path)  # --port only: CERTVAULT_PORT and PUBLIC_URL unset
    try:
        forms = httpx.get(
            f"{served.base}/api/v1/forms", headers={"Authorization": f"Bearer {token}"}
        )
        assert forms.status_code == 200, forms.text
        assert [f["url"] for f in forms.json()] == [f"{served.base}/enroll/acme/staff"]

        root = httpx.get(f"{served.base}/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/admin/"
        landing = httpx.get(f"{served.base}/", follow_redirects=True)
        assert landing.status_code == 200 and str(landing.url).endswith("/admin/login")
        assert "Sign in" in landing.text

        _check_docs(served.base)
    finally:
        _stop(served)
    assert not any(ln["level"] == "warning" for ln in served.lines()), served.lines()


def _check_docs(base: str) -> None:
    """/docs names no other host, and every file it loads comes from here under the CSP."""
    page = httpx.get(f"{base}/docs")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert "//" not in page.text.replace("<!doctype html>", "")  # no URL with a host
    assert "<script>" not in page.text  # only script files: no inline code
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(loaded) == [
        "/docs/static/swagger-init.js",
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/swagger-ui.css",
    ]
    for path in loaded:
        answer = httpx.get(f"{base}{path}")
        assert answer.status_code == 200 and len(answer.content) > 100, path
        assert answer.headers["content-security-policy"] == csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-type"].startswith(
            "text/css" if path.endswith(".css") else "text/javascript"
        )
    init = httpx.get(f"{base}/docs/static/swagger-init.js").text
    assert "SwaggerUIBundle(" in init and "http" not in init
    assert httpx.get(f"{base}/openapi.json").status_code == 200
    for gone in ("/redoc", "/docs/oauth2-redirect", "/docs/static/index.html"):
        assert httpx.get(f"{base}{gone}").status_code == 404, gone


def test_a_public_address_without_a_public_url_is_warned_about(sqlite_cli, tmp_path):
    sqlite_cli.bootstrap()
    served = _serve(sqlite_cli, tmp_path, "--host", "0.0.0.0", "--insecure-http")
    _stop(served)
    warnings = [ln for ln in served.lines() if ln["level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["logger"] == "certvault.serve", served.lines()
    message = str(warnings[0]["message"])
    assert "0.0.0.0" in message and "CERTVAULT_PUBLIC_URL" in message

    # Set, it is used as it is and nothing is said.
    configured = _serve(
        sqlite_cli,
        tmp_path,
        "--host",
        "0.0.0.0",
        "--insecure-http",
        env={"CERTVAULT_PUBLIC_URL": "https://vault.example.org"},
    )
    _stop(configured)
    assert not any(ln["level"] == "warning" for ln in configured.lines()), configured.lines()


def test_mail_send_without_a_server_says_what_waits(sqlite_cli, tmp_path):
    sqlite_cli.bootstrap()
    key = new_key("ec256")
    key_pem, cert_pem = cli_env.write_key_and_cert(tmp_path, "alice", key, make_cert(key))
    password = cli_env.write_secret(tmp_path / "p12.pass", "import-password-1")
    p12 = cli_env.openssl_p12(key_pem, cert_pem, tmp_path / "alice.p12", password)
    made = sqlite_cli.run("import", "--account", "acme", p12, "--password-file", password)
    assert made.returncode == 0, made.stderr  # the owner is told: one message queued
    (waiting,) = sqlite_cli.sql("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL")[0]
    assert waiting >= 1
    proc = sqlite_cli.run("mail", "send")
    assert proc.returncode == 1
    assert f"{waiting} message(s) wait in the outbox" in proc.stderr
    assert "CERTVAULT_SMTP_HOST" in proc.stderr
    # Still there, untouched, for when a server is set.
    assert sqlite_cli.sql("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL")[0] == (waiting,)
