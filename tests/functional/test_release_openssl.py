"""Released files as the real `openssl` sees them, with the production KDF settings."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certvault.config import Settings
from certvault.services.directory import accounts
from certvault.services.kernel.ports import open_ports
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import release_key
from tests.conftest import make_settings
from tests.factories import make_cert, make_p12, pool_key


def _openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    ("encryption", "mac", "bag"),
    [
        (
            "AES256-SHA256",
            "sha256",
            r"PBES2, PBKDF2, AES-256-CBC, Iteration (\d+), PRF hmacWithSHA256",
        ),
        ("TripleDES-SHA1", "sha1", r"pbeWithSHA1And3-KeyTripleDES-CBC, Iteration (\d+)"),
    ],
)
def test_production_rounds_for_mac_and_bags(tmp_path, database_url, operator, encryption, mac, bag):
    default_rounds = Settings.model_fields["p12_kdf_rounds"].default
    assert default_rounds == 600_000
    settings = make_settings(tmp_path / "home", database_url, p12_kdf_rounds=default_rounds)
    ports = open_ports(settings)
    try:
        accounts.initialize(ports, operator)
        accounts.create_account(ports, operator, "Acme", "acme", key_vault_enabled=True)
        key = pool_key("rsa4096")
        cert = make_cert(key, "erin@example.org")
        [entry] = import_p12(
            ports, operator, "acme", make_p12(key, cert, "pw-123456789"), "pw-123456789"
        )
        phrase = "Straße-Ünïcode-Ω-passphrase"
        batch = release_key(
            ports,
            operator,
            "acme",
            entry.client_cert_id,
            passphrase=phrase,
            reason="interop",
            encryption=encryption,
        )
    finally:
        ports.close()
    p12 = tmp_path / "out.p12"
    p12.write_bytes(batch.releases[0].data)
    pw = tmp_path / "pw"
    pw.write_text(phrase + "\n", encoding="utf-8")
    info = _openssl(
        "pkcs12",
        "-info",
        "-noout",
        "-in",
        str(p12),
        "-passin",
        f"file:{pw}",
        *(["-legacy"] if encryption == "TripleDES-SHA1" else []),
    )
    assert f"MAC: {mac}, Iteration {default_rounds}" in info
    bag_rounds = {int(n) for n in re.findall(bag, info)}
    assert bag_rounds == {default_rounds}
    pem = _openssl(
        "pkcs12",
        "-in",
        str(p12),
        "-nocerts",
        "-nodes",
        "-passin",
        f"file:{pw}",
        *(["-legacy"] if encryption == "TripleDES-SHA1" else []),
    )
    got = serialization.load_pem_private_key(pem[pem.index("-----BEGIN") :].encode(), None)
    assert got.private_numbers() == key.private_numbers()
    assert Path(p12).stat().st_size > 0
