"""Master-key rotation, migration into a token and retirement, in-process on SQLite and PostgreSQL:
every blob is rewrapped whole or not at all, a run stopped midway is finished by the next one,
and every escrowed key, service key and audit event still opens afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from certvault.db.models import AccountKey, ServiceKey
from certvault.errors import CertvaultError, InvalidInput
from certvault.masterkey import blob_origin
from certvault.masterkey.file import FileMasterKeyProvider
from certvault.masterkey.pkcs11 import Pkcs11TokenMissing
from certvault.services.audit import checks as audit_checks
from certvault.services.directory import accounts
from certvault.services.kernel import keyring
from certvault.services.kernel.duties import DutyRunning, duty
from certvault.services.kernel.ports import Ports, open_ports
from certvault.services.vault import master_key_rotation as rotation
from certvault.services.vault.imports import import_p12
from certvault.services.vault.verification import verify_escrow
from tests.conftest import TEST_OPERATOR
from tests.factories import make_cert, make_p12, pool_key
from tests.functional.helpers import events
from tests.pkcs11_fixtures import SoftToken, softhsm_fixture  # noqa: F401 - `softhsm`

PW = "import-password-1"


def _escrow(ports: Ports) -> None:
    accounts.create_account(ports, TEST_OPERATOR, "Beta Ltd", "beta", key_vault_enabled=True)
    for slug, kind in (("acme", "ec256"), ("acme", "ed25519"), ("beta", "ec384")):
        key = pool_key(kind)
        cert = make_cert(key, f"{kind}@example.org")
        import_p12(ports, TEST_OPERATOR, slug, make_p12(key, cert, PW), PW)


def _origins(ports: Ports) -> list[tuple[str, int]]:
    with ports.db.read() as session:
        blobs = list(session.scalars(select(AccountKey.wrapped_key)))
        blobs += list(session.scalars(select(ServiceKey.wrapped_data_key)))
    return [blob_origin(b) for b in blobs]


def _everything_opens(ports: Ports) -> None:
    """Escrowed keys, every service key (the audit and seal keys among them) and the audit log."""
    report = verify_escrow(ports, TEST_OPERATOR)
    assert report.ok and report.keys == 3, report.failures
    with ports.db.read() as session:
        rows = list(session.scalars(select(ServiceKey)))
    assert rows
    for row in rows:
        assert len(keyring.open_service_key(ports, row)) > 0
    assert audit_checks.verify_chains(ports).ok


class _FailsAfter:
    """The configured provider, until ``wraps`` wraps were made; then the token 'goes away'."""

    def __init__(self, inner, wraps: int, on_fail=None) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.left, self.on_fail = inner, wraps, on_fail
        self.name = inner.name

    @property
    def version(self) -> int:
        return self.inner.version

    def wrap(self, data: bytes, aad: bytes) -> bytes:
        if self.left == 0:
            if self.on_fail is None:
                raise Pkcs11TokenMissing("The token went away.")
            self.on_fail()
        self.left -= 1
        return self.inner.wrap(data, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        return self.inner.unwrap(blob, aad)

    def is_available(self) -> bool:
        return self.inner.is_available()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)  # versions, create_version, retire_version


def test_rotate_master_with_the_file_key_then_retire(ports: Ports, account: str) -> None:
    _escrow(ports)
    live = len(_origins(ports))
    assert set(_origins(ports)) == {("file", 1)}
    with pytest.raises(CertvaultError) as current:
        rotation.retire(ports, TEST_OPERATOR, "file", 1)
    assert current.value.code == "conflict"

    report = rotation.rotate_master(ports, TEST_OPERATOR)
    assert report.created_version == 2 and not report.finished_earlier_run
    assert report.account_keys == 2 and report.total == live
    assert report.by_origin == {"file v1": live}
    assert set(_origins(ports)) == {("file", 2)}
    _everything_opens(ports)
    [event] = events(ports, "kek.rotate_master")
    assert event.outcome == "success"

    key_dir = ports.settings.effective_master_key_dir
    before = sorted(p.name for p in key_dir.iterdir())
    blobs = _origins(ports)
    dry = rotation.rotate_master(ports, TEST_OPERATOR, dry_run=True)
    assert (dry.version, dry.total, dry.created_version) == (3, live, None)
    assert sorted(p.name for p in key_dir.iterdir()) == before and _origins(ports) == blobs

    rotation.retire(ports, TEST_OPERATOR, "file", 1)
    assert not (key_dir / "master-v1.key").exists()
    assert [e.outcome for e in events(ports, "kek.retire")] == ["success"]
    fresh = open_ports(ports.settings)  # nothing of the old key left in memory
    try:
        _everything_opens(fresh)
    finally:
        fresh.close()
    with pytest.raises(CertvaultError) as gone:
        rotation.retire(ports, TEST_OPERATOR, "file", 1)
    assert gone.value.code == "invalid_input"


def test_a_run_that_fails_midway_leaves_every_row_whole_and_a_rerun_finishes(
    ports: Ports, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _escrow(ports)
    live = len(_origins(ports))
    monkeypatch.setattr(rotation, "BATCH", 2)
    real = ports.master_key
    ports.master_key = _FailsAfter(real, wraps=3)  # type: ignore[assignment]
    with pytest.raises(Pkcs11TokenMissing):
        rotation.rotate_master(ports, TEST_OPERATOR)
    ports.master_key = real
    origins = _origins(ports)
    # The first batch was committed whole; the failed one left its old blobs, which still open.
    assert origins.count(("file", 2)) == 2 and origins.count(("file", 1)) == live - 2
    _everything_opens(ports)
    # Refused in a transaction of its own: the failure is in the log.
    assert [e.outcome for e in events(ports, "kek.rotate_master")] == ["failure"]
    # The old version is still needed: retiring it is refused.
    with pytest.raises(rotation.MasterKeyInUse):
        rotation.retire(ports, TEST_OPERATOR, "file", 1)

    again = rotation.rotate_master(ports, TEST_OPERATOR)
    assert again.finished_earlier_run and again.created_version is None
    assert again.total == live - 2 and again.version == 2
    assert set(_origins(ports)) == {("file", 2)}
    _everything_opens(ports)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_bad_requests_are_refused_and_change_nothing(ports: Ports, account: str) -> None:
    blobs = _origins(ports)
    for kind in ("bogus", "x" * 500, "file\n[red]", ""):
        with pytest.raises(InvalidInput) as caught:
            rotation.retire(ports, TEST_OPERATOR, kind, 1)
        assert len(caught.value.message) < 200
    for version in (0, -1, 2, 2**31):
        with pytest.raises(CertvaultError) as refused:
            rotation.retire(ports, TEST_OPERATOR, "file", version)
        assert refused.value.code in ("invalid_input", "conflict")
    for target in ("file", "PKCS11", "", "pkcs11 "):
        with pytest.raises(InvalidInput):
            rotation.migrate(ports, TEST_OPERATOR, target)
    assert _origins(ports) == blobs
    assert FileMasterKeyProvider(ports.settings.effective_master_key_dir).versions() == [1]


def test_a_second_rotation_refuses_while_one_runs(ports: Ports, account: str) -> None:
    _escrow(ports)
    blobs = _origins(ports)
    with duty(ports, rotation.DUTY):
        with pytest.raises(DutyRunning):
            rotation.rotate_master(ports, TEST_OPERATOR)
        with pytest.raises(DutyRunning) as refused:
            rotation.rotate_master(ports, TEST_OPERATOR, dry_run=False)
        assert refused.value.code == "duty_running"
    assert _origins(ports) == blobs
    assert FileMasterKeyProvider(ports.settings.effective_master_key_dir).versions() == [1]


def _token_ports(ports: Ports, softhsm: SoftToken, tmp_path: Path) -> Ports:
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin + "\n")
    pin_file.chmod(0o600)
    settings = ports.settings.model_copy(
        update={
            "master_key_provider": "pkcs11",
            "pkcs11_token_label": softhsm.label,
            "pkcs11_pin_file": pin_file,
        }
    )
    return open_ports(settings)


def test_migrate_into_the_token_then_retire_the_file_key(
    ports: Ports, account: str, softhsm: SoftToken, tmp_path: Path
) -> None:
    _escrow(ports)
    live = len(_origins(ports))
    with pytest.raises(rotation.MigrationNotConfigured):
        rotation.migrate(ports, TEST_OPERATOR, "pkcs11")
    softhsm.provider().create_version()
    node = _token_ports(ports, softhsm, tmp_path)
    try:
        # Configured, not yet migrated: old blobs open through the file key, new ones are
        # the token's.
        _everything_opens(node)
        dry = rotation.migrate(node, TEST_OPERATOR, "pkcs11", dry_run=True)
        assert dry.total == live and set(_origins(node)) == {("file", 1)}
        with duty(node, rotation.DUTY), pytest.raises(DutyRunning):
            rotation.migrate(node, TEST_OPERATOR, "pkcs11")
        report = rotation.migrate(node, TEST_OPERATOR, "pkcs11")
        assert report.total == live and report.by_origin == {"file v1": live}
        assert set(_origins(node)) == {("pkcs11", 1)}
        _everything_opens(node)
        rotation.retire(node, TEST_OPERATOR, "file", 1)
        assert [e.outcome for e in events(node, "kek.migrate")] == ["success"]
    finally:
        node.close()
    # With the file key gone, a node opens everything through the token alone.
    assert FileMasterKeyProvider(ports.settings.effective_master_key_dir).versions() == []
    node = _token_ports(ports, softhsm, tmp_path)
    try:
        assert [m.name for m in node.master_key.members] == ["pkcs11"]  # type: ignore[attr-defined]
        _everything_opens(node)
        rotated = rotation.rotate_master(node, TEST_OPERATOR)
        assert rotated.created_version == 2 and set(_origins(node)) == {("pkcs11", 2)}
        _everything_opens(node)
        rotation.retire(node, TEST_OPERATOR, "pkcs11", 1)
        _everything_opens(node)
    finally:
        node.close()


@pytest.mark.parametrize(
    "backend", ["sqlite"], indirect=True
)  # the token's part, not the database's
def test_token_pulled_out_during_migration(
    ports: Ports,
    account: str,
    softhsm: SoftToken,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _escrow(ports)
    live = len(_origins(ports))
    monkeypatch.setattr(rotation, "BATCH", 2)
    softhsm.provider().create_version()
    node = _token_ports(ports, softhsm, tmp_path)
    try:
        _everything_opens(node)  # the audit and seal keys are now in this process's memory
        away: list[Path] = []
        real = node.master_key
        # After three wraps the token directory really goes away, mid-batch.
        node.master_key = _FailsAfter(  # type: ignore[assignment]
            real, wraps=3, on_fail=lambda: away.append(softhsm.pull_out())
        )
        with pytest.raises(Pkcs11TokenMissing):
            rotation.migrate(node, TEST_OPERATOR, "pkcs11")
        node.master_key = real
        origins = _origins(node)
        assert origins.count(("pkcs11", 1)) == 2 and origins.count(("file", 1)) == live - 2
        softhsm.put_back(away[0])
        _everything_opens(node)
        again = rotation.migrate(node, TEST_OPERATOR, "pkcs11")
        assert again.total == live - 2
        assert set(_origins(node)) == {("pkcs11", 1)}
        _everything_opens(node)
    finally:
        node.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_hsm_outage_answers_503_and_readiness_says_so(
    ports: Ports, account: str, softhsm: SoftToken, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from certvault.web.app import create_app

    softhsm.provider().create_version()
    node = _token_ports(ports, softhsm, tmp_path)
    try:
        rotation.migrate(node, TEST_OPERATOR, "pkcs11")
        client = TestClient(create_app(node), base_url="https://testserver")
        assert client.get("/readyz").json()["checks"]["master_key"] is True
        away = softhsm.pull_out()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["master_key"] is False
        with pytest.raises(Pkcs11TokenMissing) as caught:
            accounts.create_account(node, TEST_OPERATOR, "Gamma", "gamma")
        assert caught.value.status == 503
        softhsm.put_back(away)
        assert client.get("/readyz").status_code == 200
        accounts.create_account(node, TEST_OPERATOR, "Gamma", "gamma")
        assert set(_origins(node)) == {("pkcs11", 1)}
    finally:
        node.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_new_installation_starts_in_the_token(settings, softhsm: SoftToken, tmp_path: Path):
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin)
    pin_file.chmod(0o600)
    in_token = settings.model_copy(
        update={
            "master_key_provider": "pkcs11",
            "pkcs11_token_label": softhsm.label,
            "pkcs11_pin_file": pin_file,
        }
    )
    node = open_ports(in_token)
    try:
        with pytest.raises(CertvaultError) as missing:
            accounts.initialize(node, TEST_OPERATOR)
        assert "kek create --provider pkcs11" in missing.value.message
        assert not settings.effective_master_key_dir.exists()  # no file key made instead
        softhsm.provider().create_version()
        accounts.initialize(node, TEST_OPERATOR)
        accounts.create_account(node, TEST_OPERATOR, "Acme Corp", "acme", key_vault_enabled=True)
        assert set(_origins(node)) == {("pkcs11", 1)}
        assert audit_checks.verify_chains(node).ok
    finally:
        node.close()
