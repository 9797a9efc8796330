"""The reference agent, `certvault-agent`, against a real `certvault serve`: it fetches the CA
exchange certificate, submits a request file as `certreq -new` writes it (PEM armour), prints the
certificate issued and writes the CMC response for the Windows client; the archived key is then in
the vault. Refusals say the code and the Windows status, never the token."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certvault.crypto import keys as keylib
from certvault.services.pki import ca
from tests.browser.serving import serving
from tests.cmc_builder import build_archival_request
from tests.conftest import TEST_OPERATOR
from tests.factories import pool_key
from tests.functional import cli_env
from tests.functional.smtp_server import free_port

AGENT = [sys.executable, "-m", "certvault.agent_cli"]


@pytest.fixture
def server(backend: str, tmp_path: Path) -> Any:
    cli_gen = cli_env.cli_for(backend, tmp_path)
    cli = next(cli_gen)
    port = free_port()
    cli.bootstrap()
    ports = cli.ports()
    try:
        ca.init_ca(ports, TEST_OPERATOR, "acme")
    finally:
        ports.close()
    made = cli.run("agent", "create", "--account", "acme", "dc1")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    mapped = cli.run(
        "agent", "map", "--account", "acme", "dc1", "EFS-Archive",
        "--profile", "smime-encryption", "--archive-key", "--require-archival",
    )  # fmt: skip
    assert mapped.returncode == 0, mapped.stderr
    (tmp_path / "token").write_text(token + "\n")
    try:
        with serving(cli, port, tmp_path / "serve.log") as log:
            yield cli, f"http://127.0.0.1:{port}", tmp_path / "token", token
            assert token not in log.read_text()
    finally:
        cli_gen.close()


def _agent(cli: cli_env.Cli, *args: Any) -> subprocess.CompletedProcess[str]:
    env = {**cli.env, "CERTVAULT_AGENT_TOKEN": ""}
    return subprocess.run(
        [*AGENT, *map(str, args)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _certreq_file(path: Path, der: bytes) -> Path:
    """As `certreq -new` writes a request: base64 in PEM armour, CRLF line ends."""
    lines = [base64.b64encode(der)[i : i + 64].decode() for i in range(0, len(der) * 2, 64)]
    body = "\r\n".join(line for line in lines if line)
    label = "NEW CERTIFICATE REQUEST"
    path.write_text(f"-----BEGIN {label}-----\r\n{body}\r\n-----END {label}-----\r\n", newline="")
    return path


def test_the_reference_agent_archives_a_key_through_the_server(server: Any, tmp_path: Path):
    cli, url, token_file, token = server
    got = _agent(cli, "exchange-certificate", "--server", url, "--token-file", token_file)
    assert got.returncode == 0, got.stderr
    exchange = x509.load_pem_x509_certificate(got.stdout.encode())
    key = pool_key("rsa2048-1")
    request = _certreq_file(
        tmp_path / "alice.req", build_archival_request(key, exchange, content="3des")
    )
    answer = tmp_path / "alice.rsp"
    submitted = _agent(
        cli, "submit", request, "--server", url, "--token-file", token_file,
        "--template", "EFS-Archive", "--email", "alice@example.org", "--out", answer,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    issued = x509.load_pem_x509_certificate(submitted.stdout.encode())
    assert keylib.spki_sha256(issued.public_key()) == keylib.spki_sha256(key.public_key())
    assert answer.read_bytes()[:1] == b"\x30"  # the DER CMC response, for the client
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    [(stored,)] = cli.sql("SELECT spki_sha256 FROM escrowed_keys")
    assert bytes(stored) == keylib.spki_sha256(key.public_key()) and spki
    assert token not in submitted.stdout + submitted.stderr


def test_the_reference_agent_says_why_a_request_is_refused(server: Any, tmp_path: Path):
    cli, url, token_file, token = server
    got = _agent(cli, "exchange-certificate", "--server", url, "--token-file", token_file)
    exchange = x509.load_pem_x509_certificate(got.stdout.encode())
    without_key = build_archival_request(pool_key("rsa2048-2"), exchange, archived=False)
    request = _certreq_file(tmp_path / "nokey.req", without_key)
    refused = _agent(
        cli, "submit", request, "--server", url, "--token-file", token_file,
        "--template", "EFS-Archive",
    )  # fmt: skip
    assert refused.returncode == 1
    assert "0x80094804" in refused.stderr and refused.stdout == ""
    (tmp_path / "bad-token").write_text("cva_not-a-real-token-0123456789abcdef\n")
    for args in (
        ["--token-file", tmp_path / "bad-token"],
        ["--token-file", tmp_path / "missing"],
        [],
    ):
        denied = _agent(cli, "exchange-certificate", "--server", url, *args)
        assert denied.returncode == 1 and "error:" in denied.stderr
        assert "cva_not-a-real" not in denied.stderr and token not in denied.stderr
    assert cli.sql("SELECT count(*) FROM escrowed_keys") == [(0,)]
