"""`certvault serve` as an operator runs it: real server processes (two workers) on free ports,
driven over HTTP(S) by real clients, on SQLite and PostgreSQL.

The end-to-end test walks the issue's flow with the commercial API's paths: an API-only
administrator and a token made by the CLI, a person, p12 files made by `openssl pkcs12 -export`
uploaded through `import-key`, the Key Vault list, downloads in each encryption type checked with
`openssl pkcs12`, and the zip of every key of a person.
"""

from __future__ import annotations

import base64
import ctypes
import datetime as dt
import errno
import io
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from certvault.cli.serve import is_loopback, metrics_parent
from certvault.services.kernel import notify
from certvault.services.kernel.passwords import PasswordChecksBusy
from certvault.web.logging import JsonFormatter
from tests.factories import make_ca, make_cert, pool_key
from tests.functional import cli_env
from tests.functional.cli_env import (
    CERTVAULT,
    Cli,
    openssl,
    openssl_p12,
    write_key_and_cert,
    write_secret,
)
from tests.functional.smtp_server import SmtpServer, free_port, smtp_server  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[2]
READY_WITHIN = 60.0  # seconds; generous for a loaded CI machine, never a speed assertion

# Canary secrets: none of them may ever appear in the server's output.
ADMIN_PASSWORD = "Canary-Admin-Password-4f1d"
P12_PASSWORD = "Canary-P12-Password-8a2c"
PASSPHRASE = "Canary-Download-Passphrase-77e1"
IMPORTED = "Imported successfully"


@pytest.fixture
def cli(backend, tmp_path):
    yield from cli_env.cli_for(backend, tmp_path)


# --- a server process -------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    stderr_path: Path
    stdout_path: Path
    verify: ssl.SSLContext | bool = True

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base, verify=self.verify, timeout=30, **kwargs)

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def log_lines(self) -> list[dict[str, Any]]:
        lines = [ln for ln in self.stderr_path.read_text().splitlines() if ln.strip()]
        return [json.loads(ln) for ln in lines]  # every line is one JSON object

    def access_lines(self) -> list[dict[str, Any]]:
        return [ln for ln in self.log_lines() if ln["logger"] == "certvault.access"]


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while True:
        assert server.proc.poll() is None, "the server exited:\n" + server.output()
        try:
            with server.client() as c:
                if c.get("/readyz").status_code == 200:
                    return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "not ready in time:\n" + server.output()
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # uvicorn's supervisor stops its workers
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started, by its id
            proc.wait()


@contextmanager
def serving(
    cli: Cli,
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    tls_ca: Path | None = None,
    name: str = "serve",
) -> Iterator[Server]:
    """`certvault serve --workers 2` (or ``command``) on a free port, ready when yielded."""
    port = free_port()
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    argv = command or [str(CERTVAULT), "serve", "--port", str(port), "--workers", "2", *args]
    with out.open("wb") as out_f, err.open("wb") as err_f:
        proc = subprocess.Popen(
            argv,
            env={**cli.env, "CERTVAULT_PORT": str(port), **(env or {})},
            cwd=REPO,
            stdout=out_f,
            stderr=err_f,
            start_new_session=True,
        )
    verify: ssl.SSLContext | bool = True
    if tls_ca is not None:
        verify = ssl.create_default_context(cafile=str(tls_ca))
    scheme = "https" if tls_ca else "http"
    server = Server(proc, f"{scheme}://127.0.0.1:{port}", err, out, verify)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(proc)


# --- openssl on both sides --------------------------------------------------------------------


def _public_key(key_pem: Path) -> str:
    return openssl("pkey", "-in", key_pem, "-pubout").stdout


def _released_public_key(p12: Path, passphrase_file: Path, legacy: bool) -> str:
    """The key in a released p12, as `openssl pkcs12` opens it, reduced to its public half."""
    extracted = p12.with_suffix(".key.pem")
    openssl(
        "pkcs12",
        "-in",
        p12,
        "-nodes",
        "-nocerts",
        "-passin",
        f"file:{passphrase_file}",
        "-out",
        extracted,
        *(["-legacy"] if legacy else []),
    )
    return _public_key(extracted)


@dataclass
class Generation:
    key_pem: Path
    p12: Path


def _generation(tmp_path: Path, stem: str, key, email: str, *, old: bool) -> Generation:  # type: ignore[no-untyped-def]
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=400 if old else 1)
    cert = make_cert(key, email, issuer=_CA, not_before=start, days=365)
    key_pem, cert_pem = write_key_and_cert(tmp_path, stem, key, cert)
    password_file = write_secret(tmp_path / f"{stem}.pw", P12_PASSWORD)
    return Generation(
        key_pem, openssl_p12(key_pem, cert_pem, tmp_path / f"{stem}.p12", password_file)
    )


_CA = make_ca("Server Test CA")


# --- tests ------------------------------------------------------------------------------------


def _api_admin_and_token(cli: Cli, tmp_path: Path) -> str:
    password_file = write_secret(tmp_path / "admin.pw", ADMIN_PASSWORD)
    created = cli.run(
        "admin",
        "create",
        "keyadmin",
        "--account",
        "acme",
        "--api-only",
        "--privilege",
        "key_vault_download",
        "--privilege",
        "certificates_manage",
        "--privilege",
        "persons_manage",
        "--password-file",
        password_file,
    )
    assert created.returncode == 0, created.stderr
    token = cli.run("token", "create", "keyadmin", "--account", "acme")
    assert token.returncode == 0, token.stderr
    value = token.stdout.strip()
    assert value.startswith("cvt_")
    return value


def test_end_to_end_through_the_scm_paths(cli, tmp_path):
    cli.bootstrap()
    token = _api_admin_and_token(cli, tmp_path)
    bearer = {"Authorization": f"Bearer {token}"}
    scm_login = {"login": "keyadmin", "password": ADMIN_PASSWORD, "customerUri": "acme"}
    email = "dana.scully@example.org"
    old = _generation(tmp_path, "old", pool_key("rsa2048-1"), email, old=True)
    new = _generation(tmp_path, "new", pool_key("ec256"), email, old=False)
    passphrase_file = write_secret(tmp_path / "download.pw", PASSPHRASE)

    timing = {"CERTVAULT_SERVER_TIMING": "1"}
    with serving(cli, tmp_path, env=timing) as server, server.client() as http:
        # A person, created the way an SCM script does it (header authentication).
        [org] = [o for o in http.get("/api/v1/organizations", headers=bearer).json()]
        created = http.post(
            "/api/person/v1",
            headers=scm_login,
            json={
                "firstName": "Dana",
                "lastName": "Scully",
                "email": email,
                "organizationId": org["id"],
                "validationType": "STANDARD",
                "phone": None,
            },
        )
        assert created.status_code == 201, created.text
        found = http.get(f"/api/person/v1/id/byEmail/{email}", headers=scm_login)
        assert found.status_code == 200, found.text
        person_id = found.json()["personId"]
        assert created.headers["Location"].endswith(f"/api/person/v1/{person_id}")

        # Both generations in through import-key: a bearer token works on the SCM paths too.
        cert_ids = []
        for generation in (old, new):
            uploaded = http.post(
                f"/api/person/v2/{person_id}/import-key",
                headers=bearer,
                json={
                    "p12": base64.b64encode(generation.p12.read_bytes()).decode(),
                    "password": P12_PASSWORD,
                    "customFields": None,
                },
            )
            assert uploaded.status_code == 200, uploaded.text
            [entry] = uploaded.json()["entries"]
            assert entry["message"] == IMPORTED and entry["alias"] == email
            assert re.fullmatch(r"[0-9a-f]{40}", entry["sha1"].lower())
            cert_ids.append(entry["clientCertId"])

        listed = http.get("/api/smime/v2", params={"keyVault": "true"}, headers=scm_login)
        assert listed.status_code == 200, listed.text
        assert sorted(item["id"] for item in listed.json()) == sorted(cert_ids)
        head = http.head("/api/smime/v2", params={"keyVault": "true"}, headers=scm_login)
        assert head.status_code == 200 and head.headers["X-Total-Count"] == "2"

        # The current key, in each encryption type, opened by openssl.
        for encryption, legacy in (("AES256-SHA256", False), ("TripleDES-SHA1", True)):
            released = http.post(
                f"/api/smime/v2/keystore/{cert_ids[1]}",
                headers=bearer,
                json={"passphrase": PASSPHRASE, "encryptionType": encryption},
            )
            assert released.status_code == 200, released.text
            assert "key_vault.p12" in released.headers["Content-Disposition"]
            assert "no-store" in released.headers["Cache-Control"]
            # The KDF is timed inside the worker thread that ran the route.
            assert re.fullmatch(
                r"kdf;dur=[0-9.]+, total;dur=[0-9.]+", released.headers["Server-Timing"]
            )
            p12 = tmp_path / f"released-{encryption}.p12"
            p12.write_bytes(released.content)
            assert _released_public_key(p12, passphrase_file, legacy) == _public_key(new.key_pem)

        # Every key of the person, old and current, as one zip under one passphrase.
        everything = http.post(
            f"/api/v1/persons/{person_id}/keys/download",
            headers=bearer,
            json={"passphrase": PASSPHRASE, "reason": "mailbox migration"},
        )
        assert everything.status_code == 200, everything.text
        assert "no-store" in everything.headers["Cache-Control"]
        with zipfile.ZipFile(io.BytesIO(everything.content)) as archive:
            names = archive.namelist()
            assert len(names) == 2 and all(n.endswith(".p12") for n in names)
            opened = set()
            for n in names:
                path = tmp_path / f"zip-{Path(n).name}"
                path.write_bytes(archive.read(n))
                opened.add(_released_public_key(path, passphrase_file, legacy=False))
        assert opened == {_public_key(old.key_pem), _public_key(new.key_pem)}

        # Metrics add up both workers; a forwarded address from an untrusted peer is ignored.
        metrics = http.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert metrics.status_code == 200
        keystore = re.search(
            r'^certvault_http_requests_total\{method="POST",'
            r'route="/api/smime/v2/keystore/\{certId\}",status="200"\} (\S+)$',
            metrics.text,
            re.M,
        )
        assert keystore is not None and float(keystore.group(1)) == 2.0, [
            ln for ln in metrics.text.splitlines() if ln.startswith("certvault_http_requests")
        ]

    access = server.access_lines()
    routes = {(a["method"], a["route"], a["status"]) for a in access}
    assert ("POST", "/api/person/v2/{personId}/import-key", 200) in routes
    assert ("POST", "/api/smime/v2/keystore/{certId}", 200) in routes
    assert {a["ip"] for a in access} == {"127.0.0.1"}
    assert any(a["actor"] for a in access)
    output = server.output()
    for secret in (ADMIN_PASSWORD, P12_PASSWORD, PASSPHRASE, token, token[4:]):
        assert secret not in output
    assert not metrics_parent(cli.home).exists() or not any(metrics_parent(cli.home).iterdir()), (
        "the metrics directory outlived the server"
    )


def test_metrics_add_up_every_worker(cli, tmp_path):
    cli.bootstrap()
    with serving(cli, tmp_path) as server:
        metrics_dir = next(metrics_parent(cli.home).iterdir())
        assert metrics_dir.stat().st_mode & 0o077 == 0
        for _ in range(6):  # a new connection each time: either worker may answer
            with server.client() as c:
                health = c.get("/healthz")
                assert health.status_code == 200
                assert "server-timing" not in health.headers  # only with CERTVAULT_SERVER_TIMING
        with server.client() as c:
            metrics = c.get("/metrics")
        assert metrics.status_code == 200
        assert (
            'certvault_http_requests_total{method="GET",route="/healthz",status="200"} 6.0'
            in metrics.text
        )
        pids = {ln["pid"] for ln in server.access_lines()}
        # Each worker writes its own file; the scrape reads them all.
        assert {int(p.stem.split("_")[-1]) for p in metrics_dir.iterdir()} >= pids


def test_workers_send_answers_without_waiting_for_acknowledgements(cli, tmp_path):
    """Nagle's algorithm is off on the connections the workers accept (web/server.py): with it
    on, every kept-alive request after the first waits for the client's delayed ACK, 40 ms.
    Read off the worker's own socket (pidfd_getfd), not timed."""
    cli.bootstrap()
    with serving(cli, tmp_path) as server:
        host, port = server.base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            for _ in range(2):
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
                answer = b""
                while not answer.endswith(b'{"status":"ok"}'):
                    chunk = conn.recv(4096)
                    assert chunk, answer
                    answer += chunk
            deadline = time.monotonic() + READY_WITHIN
            while len(ours := _health_lines(server)) < 2:  # readiness was asked on /readyz
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
            [worker] = {int(ln["pid"]) for ln in ours}  # one connection, one worker
            accepted = _accepted_socket(worker, conn.getsockname())
            try:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            finally:
                accepted.close()


def _health_lines(server: Server) -> list[dict[str, Any]]:
    return [ln for ln in server.access_lines() if ln["route"] == "/healthz"]


def _accepted_socket(pid: int, peer: tuple[str, int]) -> socket.socket:
    """A copy of the socket through which process ``pid`` talks to ``peer`` (its options are
    the original's)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except FileNotFoundError:
                continue
            copy = libc.syscall(_PIDFD_GETFD, pidfd, int(fd), 0)
            if copy < 0 and ctypes.get_errno() == errno.EBADF:  # closed since it was listed
                continue
            assert copy >= 0, os.strerror(ctypes.get_errno())
            sock = socket.socket(fileno=copy)
            try:
                if sock.type == socket.SOCK_STREAM and sock.getpeername() == peer:
                    return sock
            except OSError:  # not connected
                pass
            sock.close()
    finally:
        os.close(pidfd)
    raise AssertionError(f"no socket of process {pid} talks to {peer}")


_PIDFD_GETFD = 438  # the same number on every Linux architecture


def test_chunked_bodies_over_the_cap_answer_413(cli, tmp_path):
    """A body that announces no size (Transfer-Encoding: chunked) and passes the 64 KiB cap:
    413 in the area's error shape, as when Content-Length announces it."""
    cli.bootstrap()

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"A" * 16 * 1024

    areas = [
        ("/api/v1/persons", "application/json", "too_large"),
        ("/api/person/v1", "application/json", -413),
        ("/admin/login", "application/x-www-form-urlencoded", "too_large"),
        ("/enroll/acme/staff/code", "application/x-www-form-urlencoded", "too_large"),
    ]
    with serving(cli, tmp_path) as server:
        for path, content_type, code in areas:
            with server.client() as http:
                r = http.post(path, content=chunks(), headers={"Content-Type": content_type})
            assert r.request.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in r.request.headers
            assert r.status_code == 413, (path, r.status_code, r.text)
            assert r.json() == {
                "code": code,
                "description": "The request body is larger than 65536 bytes.",
            }
        assert {a["status"] for a in server.access_lines() if a["method"] == "POST"} == {413}


def _peak_memory_mib(pid: int) -> float:
    """The most memory the process ever held (VmHWM, its peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


@pytest.mark.parametrize("backend", ["sqlite"])  # a bound per process, whatever the database
def test_a_burst_of_bad_logins_is_bounded_while_health_answers(cli, tmp_path):
    """Bad header logins from everywhere at once (no address or login limit stops them): each
    worker runs a few argon2 checks of 64 MiB at a time, refuses the rest at once (429, Retry-
    After), and /healthz keeps answering while the burst is under way."""
    cli.bootstrap()
    env = {
        "CERTVAULT_ARGON2_TIME_COST": "3",  # the production parameters: 64 MiB per check
        "CERTVAULT_ARGON2_MEMORY_KIB": "65536",
        "CERTVAULT_LOGINS_PER_MINUTE_IP": "100000",
        "CERTVAULT_LOGINS_PER_MINUTE_LOGIN": "100000",
    }
    burst = 64
    in_flight = threading.Event()
    stop = threading.Event()
    health_during: list[int] = []

    def watch_health(server: Server) -> None:
        with server.client() as c:
            while not stop.is_set():
                status = c.get("/healthz").status_code
                if in_flight.is_set():
                    health_during.append(status)

    def bad_login(server: Server, i: int) -> httpx.Response:
        headers = {"login": f"ghost-{i}", "password": "wrong-password", "customerUri": "acme"}
        with server.client() as c:  # a connection of its own, as from another client
            return c.get("/api/person/v1", headers=headers)

    with serving(cli, tmp_path, env=env) as server:
        watcher = threading.Thread(target=watch_health, args=(server,))
        watcher.start()
        try:
            in_flight.set()
            with ThreadPoolExecutor(burst) as pool:
                answers = list(pool.map(lambda i: bad_login(server, i), range(burst)))
            in_flight.clear()
        finally:
            stop.set()
            watcher.join()
        workers = {int(ln["pid"]) for ln in server.access_lines()}
        peaks = {pid: _peak_memory_mib(pid) for pid in workers}

    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {401, 429}, statuses
    refused = [a for a in answers if a.status_code == 429]
    assert refused and statuses[401] >= 1, statuses
    for answer in refused:
        assert answer.json() == {"code": -429, "description": PasswordChecksBusy.__doc__}
        assert int(answer.headers["Retry-After"]) >= 1
    # Health answered, every time, while the burst was under way.
    assert len(health_during) >= 3 and set(health_during) == {200}, health_during
    # Two checks of 64 MiB at a time per worker (and the dummy hash made at start), not one
    # per thread of the pool (40 threads would be 2.5 GiB).
    assert workers and all(peak < 768 for peak in peaks.values()), peaks


def test_forwarded_addresses_believed_from_trusted_proxies(cli, tmp_path):
    cli.bootstrap()
    env = {"CERTVAULT_TRUSTED_PROXIES": "127.0.0.1"}
    with serving(cli, tmp_path, env=env) as server, server.client() as http:
        assert http.get("/metrics").status_code == 200
        # Through the trusted proxy the client is 203.0.113.9: not loopback, no metrics.
        forwarded = http.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert forwarded.status_code == 403
    assert "203.0.113.9" in {a["ip"] for a in server.access_lines()}


def test_mail_sender_in_serve_delivers_the_outbox(cli, tmp_path, smtp_server: SmtpServer):  # noqa: F811
    cli.bootstrap()
    ports = cli.ports()
    try:
        ports.db.run(
            lambda s: notify.queue_mail(s, None, "ops@example.org", "Outbox probe", "hello")
        )
    finally:
        ports.close()
    env = {
        "CERTVAULT_SMTP_HOST": smtp_server.host,
        "CERTVAULT_SMTP_PORT": str(smtp_server.port),
        "CERTVAULT_MAIL_SEND_INTERVAL": "0.5",
    }
    with serving(cli, tmp_path, env=env):
        deadline = time.monotonic() + READY_WITHIN
        while not cli.sql("SELECT id FROM mail_outbox WHERE sent_at IS NOT NULL"):
            assert time.monotonic() < deadline, "the outbox was not delivered"
            time.sleep(0.2)
    [mail] = smtp_server.messages  # two workers, two senders: delivered once
    assert mail.rcpt_tos == ("ops@example.org",) and mail.subject == "Outbox probe"


def test_tls_with_a_self_signed_certificate(cli, tmp_path):
    cli.bootstrap()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
    )
    with serving(
        cli, tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), tls_ca=cert
    ) as server:
        with server.client() as https:
            assert https.get("/healthz").json() == {"status": "ok"}
        with pytest.raises(httpx.TransportError):  # nobody else's CA vouches for it
            httpx.get(f"{server.base}/healthz", timeout=10)
        plain = server.base.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):  # no plain HTTP on the TLS port
            httpx.get(f"{plain}/healthz", timeout=10)


def _refused(cli: Cli, *args: str) -> subprocess.CompletedProcess[str]:
    port = free_port()
    proc = cli.run("serve", "--port", str(port), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    return proc


def test_refuses_plain_http_on_a_public_address(cli):
    proc = _refused(cli, "--host", "0.0.0.0")
    message = cli_env.text(proc)
    assert "Refusing plain HTTP on 0.0.0.0" in message and "--insecure-http" in message
    assert "--tls-cert" in message


def test_tls_certificate_and_key_go_together(cli, tmp_path):
    cert = write_secret(tmp_path / "only.crt", "not used")
    proc = _refused(cli, "--tls-cert", str(cert))
    assert "--tls-cert and --tls-key go together" in cli_env.text(proc)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.7", False),
        ("vault.example.org", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_insecure_http_allows_a_public_address(cli, tmp_path):
    cli.bootstrap()
    with serving(cli, tmp_path, "--host", "0.0.0.0", "--insecure-http") as server:
        with server.client() as http:
            assert http.get("/healthz").status_code == 200


def test_make_run_shows_the_first_administrator_once(cli, tmp_path):
    env = {"CERTVAULT_BIN": str(CERTVAULT)}
    script = ["bash", str(REPO / "scripts" / "run-embedded.sh")]
    with serving(cli, tmp_path, env=env, command=script, name="first") as server:
        first = server.stdout_path.read_text()
        token = re.search(r"API token: (cvt_\S+)", first)
        password = re.search(r"password: +(\S+)", first)
        assert token and password, first
        for path in ("/api/v1 ", "/docs", "/healthz", "/metrics"):
            assert f"{server.base}{path}" in first
        with server.client() as http:
            status = http.get(
                "/api/v1/key-vault", headers={"Authorization": f"Bearer {token.group(1)}"}
            )
            assert status.status_code == 200 and status.json()["account"] == "example"
    with serving(cli, tmp_path, env=env, command=script, name="second") as server:
        second = server.stdout_path.read_text()
        assert f"{server.base}/docs" in second
        assert token.group(1) not in second and password.group(1) not in second
        assert "API token" not in second and "password" not in second


def test_json_log_lines_carry_no_exception_messages():
    formatter = JsonFormatter()
    try:
        raise ValueError(f"bad password {ADMIN_PASSWORD}")
    except ValueError:
        record = logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", (), None
        )
        record.exc_info = sys.exc_info()
    line = json.loads(formatter.format(record))
    assert line["exception"] == "ValueError" and line["message"] == "Exception in ASGI application"
    assert line["frames"] and ADMIN_PASSWORD not in json.dumps(line)
    access = logging.LogRecord(
        "certvault.access", logging.INFO, __file__, 1, '{"route": "/x", "status": 200}', (), None
    )
    assert json.loads(formatter.format(access)) | {"time": None, "pid": None} == {
        "time": None,
        "pid": None,
        "level": "info",
        "logger": "certvault.access",
        "route": "/x",
        "status": 200,
    }
