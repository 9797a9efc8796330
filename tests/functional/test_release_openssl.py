"""Released files as the real `openssl` sees them: the KDF count of their bags and MAC, with the
production settings and with the rule that the count follows the passphrase."""

from __future__ import annotations

import plistlib
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certvault.config import Settings
from certvault.services.directory import accounts
from certvault.services.kernel.ports import open_ports
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import release_key, release_keys
from tests.conftest import make_settings
from tests.factories import make_cert, make_p12, new_key, pool_key

AES = r"PBES2, PBKDF2, AES-256-CBC, Iteration (\d+), PRF hmacWithSHA256"
TRIPLE_DES = r"pbeWithSHA1And3-KeyTripleDES-CBC, Iteration (\d+)"


def _openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def _files(tmp_path: Path, data: bytes, phrase: str) -> tuple[Path, Path]:
    """The file and its passphrase file, for openssl's -in and -passin."""
    p12 = tmp_path / "out.p12"
    p12.write_bytes(data)
    pw = tmp_path / "pw"
    pw.write_text(phrase + "\n", encoding="utf-8")
    return p12, pw


def _info(p12: Path, pw: Path, legacy: bool) -> str:
    return _openssl(
        "pkcs12",
        "-info",
        "-noout",
        "-in",
        str(p12),
        "-passin",
        f"file:{pw}",
        *(["-legacy"] if legacy else []),
    )


def _counts(info: str, mac: str, bag: str) -> tuple[int, set[int]]:
    [mac_rounds] = re.findall(rf"MAC: {mac}, Iteration (\d+)", info)
    return int(mac_rounds), {int(n) for n in re.findall(bag, info)}


@pytest.mark.parametrize(
    ("encryption", "mac", "bag"),
    [
        ("AES256-SHA256", "sha256", AES),
        ("TripleDES-SHA1", "sha1", TRIPLE_DES),
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
    legacy = encryption == "TripleDES-SHA1"
    p12, pw = _files(tmp_path, batch.releases[0].data, phrase)
    mac_rounds, bag_rounds = _counts(_info(p12, pw, legacy), mac, bag)
    assert mac_rounds == default_rounds
    assert bag_rounds == {default_rounds}
    pem = _openssl(
        "pkcs12",
        "-in",
        str(p12),
        "-nocerts",
        "-nodes",
        "-passin",
        f"file:{pw}",
        *(["-legacy"] if legacy else []),
    )
    got = serialization.load_pem_private_key(pem[pem.index("-----BEGIN") :].encode(), None)
    assert got.private_numbers() == key.private_numbers()
    assert Path(p12).stat().st_size > 0


# A high count unlike the generated one, small enough to keep the test fast.
HIGH = 10_000
GENERATED = Settings.model_fields["p12_generated_kdf_rounds"].default
OWN_PASSPHRASE = "Straße-Ünïcode-Ω-passphrase"


@pytest.fixture
def counted(tmp_path, database_url, operator):
    """An installation whose high count is HIGH, with one escrowed EC key."""
    assert GENERATED == 2048 and HIGH != GENERATED
    settings = make_settings(tmp_path / "home", database_url, p12_kdf_rounds=HIGH)
    assert settings.p12_generated_kdf_rounds == GENERATED
    ports = open_ports(settings)
    accounts.initialize(ports, operator)
    accounts.create_account(ports, operator, "Acme", "acme", key_vault_enabled=True)
    key = new_key("ec256")
    cert = make_cert(key, "erin@example.org")
    [entry] = import_p12(
        ports, operator, "acme", make_p12(key, cert, "pw-123456789"), "pw-123456789"
    )
    yield ports, entry.client_cert_id
    ports.close()


@pytest.mark.parametrize(
    ("encryption", "mac", "bag"),
    [("AES256-SHA256", "sha256", AES), ("TripleDES-SHA1", "sha1", TRIPLE_DES)],
)
@pytest.mark.parametrize(
    ("how", "expected"),
    [("generated here", GENERATED), ("generated and held", GENERATED), ("own", HIGH)],
)
def test_the_kdf_count_follows_the_passphrase(
    tmp_path, counted, operator, encryption, mac, bag, how, expected
):
    """A passphrase certvault generated (in the release, or held sealed for a form and passed
    with passphrase_generated) gets the low count; a person's own one the high count. Bags and
    MAC alike, as openssl reads them."""
    ports, cert_id = counted
    phrase = None if how == "generated here" else OWN_PASSPHRASE
    batch = release_key(
        ports,
        operator,
        "acme",
        cert_id,
        passphrase=phrase,
        passphrase_generated=how == "generated and held",
        reason="test",
        encryption=encryption,
    )
    phrase = phrase or batch.generated_passphrase
    assert phrase is not None
    p12, pw = _files(tmp_path, batch.releases[0].data, phrase)
    mac_rounds, bag_rounds = _counts(_info(p12, pw, encryption == "TripleDES-SHA1"), mac, bag)
    assert mac_rounds == expected
    assert bag_rounds == {expected}


@pytest.mark.parametrize(("generated", "expected"), [(True, GENERATED), (False, HIGH)])
def test_a_profiles_pkcs12_follows_the_same_rule(tmp_path, counted, operator, generated, expected):
    ports, cert_id = counted
    batch = release_keys(
        ports,
        operator,
        "acme",
        [cert_id],
        passphrase=OWN_PASSPHRASE,
        passphrase_generated=generated,
        reason="test",
        format="mobileconfig",
    )
    [payload] = plistlib.loads(batch.releases[0].data)["PayloadContent"]
    p12, pw = _files(tmp_path, payload["PayloadContent"], OWN_PASSPHRASE)
    mac_rounds, bag_rounds = _counts(_info(p12, pw, legacy=True), "sha1", TRIPLE_DES)
    assert mac_rounds == expected
    assert bag_rounds == {expected}
