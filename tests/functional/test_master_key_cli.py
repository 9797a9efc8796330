"""`certvault kek create | rotate-master | migrate | retire` through the real command, with a real
SoftHSM2 token: the whole move from the file key into the token, rotation, and clear refusals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from certvault.services.audit import checks as audit_checks
from certvault.services.directory import accounts
from certvault.services.kernel.duties import duty
from certvault.services.kernel.ports import open_ports
from certvault.services.vault import master_key_rotation as rotation
from certvault.services.vault.imports import import_p12
from tests.conftest import TEST_OPERATOR
from tests.factories import make_cert, make_p12, pool_key
from tests.functional import cli_env
from tests.functional.cli_env import Cli, text, write_secret
from tests.pkcs11_fixtures import SoftToken, softhsm_fixture  # noqa: F401 - `softhsm`

PW = "setup-password-1"


@pytest.fixture
def sqlite_cli(tmp_path):  # type: ignore[no-untyped-def]
    yield from cli_env.cli_for("sqlite", tmp_path)


def _escrow(cli: Cli, kinds: tuple[str, ...] = ("ec256", "ed25519")) -> list[int]:
    """An account and a few keys, in-process (their own commands have their own tests)."""
    ports = cli.ports()
    ids = []
    try:
        accounts.create_account(ports, TEST_OPERATOR, "Acme Corp", "acme", key_vault_enabled=True)
        for kind in kinds:
            key = pool_key(kind)
            p12 = make_p12(key, make_cert(key, f"{kind}@example.org"), PW)
            [entry] = import_p12(ports, TEST_OPERATOR, "acme", p12, PW)
            ids.append(int(entry.client_cert_id))
    finally:
        ports.close()
    return ids


def _ok(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, text(proc)
    return text(proc)


def _refused(proc, code: str) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 1, text(proc)
    assert f"[{code}]" in proc.stderr, text(proc)
    assert "Traceback" not in text(proc)
    return text(proc)


def test_migrate_from_the_file_key_into_a_token_then_rotate_and_retire(
    sqlite_cli: Cli, softhsm: SoftToken, tmp_path: Path
) -> None:
    cli = sqlite_cli
    _ok(cli.run("init"))
    cert_ids = _escrow(cli)
    token = softhsm.env(write_secret(tmp_path / "pin", softhsm.pin))
    node = {**token, "CERTVAULT_MASTER_KEY_PROVIDER": "pkcs11"}

    said = _ok(cli.run("kek", "create", "--provider", "pkcs11", env=token))
    assert "created certvault-master-v1" in said and "AES-GCM" in said
    _refused(cli.run("kek", "create", "--provider", "pkcs11", env=token), "pkcs11_key_exists")
    # Not yet configured to wrap with the token: told what to do, nothing changed.
    said = _refused(
        cli.run("kek", "migrate", "--to", "pkcs11", env=token), "migration_not_configured"
    )
    assert "CERTVAULT_MASTER_KEY_PROVIDER=pkcs11" in said

    said = _ok(cli.run("kek", "migrate", "--to", "pkcs11", env=node))
    assert "rewrapped 1 account keys" in said and "to pkcs11 v1" in said and "from file v1" in said
    said = _ok(cli.run("kek", "retire", "1", "--provider", "file", env=node))
    assert "retired master key file v1" in said
    assert not (cli.master_key_dir / "master-v1.key").exists()

    # Everything opens through the token alone: verification, the audit log, a release.
    said = _ok(cli.run("verify", env=node))
    assert "keys checked: 2" in said and "failures: 0" in said
    out = tmp_path / "released.p12"
    _ok(
        cli.run(
            "export",
            str(cert_ids[0]),
            "--account",
            "acme",
            "--out",
            out,
            "--reason",
            "migration check",
            env=node,
        )
    )
    assert out.stat().st_size > 0

    said = _ok(cli.run("kek", "rotate-master", env=node))
    assert "created master key pkcs11 v2" in said and "to pkcs11 v2" in said
    _ok(cli.run("kek", "retire", "1", env=node))
    said = _ok(cli.run("verify", env=node))
    assert "keys checked: 2" in said and "failures: 0" in said
    # The audit log, in-process (`audit verify` has its own tests).
    ports = open_ports(
        cli.settings(
            master_key_provider="pkcs11",
            pkcs11_token_label=softhsm.label,
            pkcs11_pin_file=tmp_path / "pin",
        )
    )
    try:
        assert audit_checks.verify_chains(ports).ok
    finally:
        ports.close()
    actions = [a for (a,) in cli.sql("SELECT action FROM audit_events ORDER BY id")]
    for action in ("kek.create", "kek.migrate", "kek.retire", "kek.rotate_master"):
        assert action in actions


def test_token_errors_are_clear_and_never_echo_the_pin(
    sqlite_cli: Cli, softhsm: SoftToken, tmp_path: Path
) -> None:
    cli = sqlite_cli
    cli.bootstrap()
    wrong = "wrong-pin-canary-5521"
    bad_pin = softhsm.env(write_secret(tmp_path / "wrong", wrong))
    said = _refused(
        cli.run("kek", "create", "--provider", "pkcs11", env=bad_pin), "pkcs11_pin_incorrect"
    )
    assert wrong not in said

    exposed = tmp_path / "exposed"
    write_secret(exposed, softhsm.pin).chmod(0o644)
    said = _refused(
        cli.run("kek", "create", "--provider", "pkcs11", env=softhsm.env(exposed)),
        "pkcs11_pin_exposed",
    )
    assert "0644" in said and softhsm.pin not in said

    good = softhsm.env(write_secret(tmp_path / "pin", softhsm.pin))
    missing = {**good, "CERTVAULT_PKCS11_TOKEN_LABEL": "no-such-token"}
    _refused(cli.run("kek", "create", "--provider", "pkcs11", env=missing), "pkcs11_token_missing")
    # A node configured for a token that has no key yet says how to make one.
    node = {**good, "CERTVAULT_MASTER_KEY_PROVIDER": "pkcs11"}
    said = _refused(cli.run("kek", "rotate-master", env=node), "pkcs11_key_missing")
    assert "kek create --provider pkcs11" in said
    # The PIN never comes from the command line.
    proc = cli.run("kek", "create", "--provider", "pkcs11", "--pin", "1234", env=good)
    assert proc.returncode == 2 and "No such option" in text(proc)


def test_a_master_key_file_others_can_read_stops_every_kek_command(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.bootstrap()
    key_file = cli.master_key_dir / "master-v1.key"
    key_file.chmod(0o644)
    for args in (
        ("kek", "rotate-master"),
        ("kek", "retire", "1"),
    ):
        said = _refused(cli.run(*args), "master_key_exposed")
        assert "0644" in said and "0600" in said
    assert sorted(p.name for p in cli.master_key_dir.iterdir()) == ["master-v1.key"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o644  # refused, not silently fixed


def test_rotate_master_with_the_file_key_and_a_second_run_refuses(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.bootstrap()
    ports = cli.ports()
    try:
        key = pool_key("ec256")
        import_p12(ports, TEST_OPERATOR, "acme", make_p12(key, make_cert(key), PW), PW)
        with duty(ports, rotation.DUTY):
            said = _refused(cli.run("kek", "rotate-master"), "duty_running")
            assert "already running" in said
    finally:
        ports.close()
    assert sorted(p.name for p in cli.master_key_dir.iterdir()) == ["master-v1.key"]

    said = _ok(cli.run("kek", "rotate-master", "--dry-run"))
    assert "would rewrap 1 account keys" in said
    assert sorted(p.name for p in cli.master_key_dir.iterdir()) == ["master-v1.key"]
    said = _ok(cli.run("kek", "rotate-master"))
    assert "created master key file v2" in said and "rewrapped 1 account keys" in said
    new_file = cli.master_key_dir / "master-v2.key"
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600 and new_file.stat().st_size == 32
    _ok(cli.run("kek", "retire", "1"))
    said = _ok(cli.run("verify"))
    assert "keys checked: 1" in said and "failures: 0" in said
    assert os.listdir(cli.master_key_dir) == ["master-v2.key"]
