"""A throwaway SoftHSM2 token per test: a private SOFTHSM2_CONF whose token directory is in
tmp_path, initialised with the real `softhsm2-util`.

Use it from a test module with ``from tests.pkcs11_fixtures import softhsm_fixture  # noqa: F401``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pkcs11
import pytest

from certvault.masterkey.pkcs11 import Pkcs11MasterKeyProvider
from tests.conftest import IN_CI

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN_LABEL = "certvault-test"
PIN = "1234-user-pin"
SO_PIN = "4321-so-pin"


@dataclass
class SoftToken:
    conf: Path
    tokendir: Path
    label: str = TOKEN_LABEL
    pin: str = PIN
    providers: list[Pkcs11MasterKeyProvider] = field(default_factory=list)

    def provider(self, **options: object) -> Pkcs11MasterKeyProvider:
        made = Pkcs11MasterKeyProvider(
            MODULE,
            str(options.pop("token_label", self.label)),
            str(options.pop("key_label", "certvault-master")),
            str(options.pop("pin", self.pin)),
            **options,  # type: ignore[arg-type]
        )
        self.providers.append(made)
        return made

    def session(self, rw: bool = False):  # type: ignore[no-untyped-def]
        """A session of the test's own, straight through python-pkcs11 (the providers' sessions
        are closed first: a login holds for the whole token)."""
        for provider in self.providers:
            provider.close()
        return pkcs11.lib(MODULE).get_token(token_label=self.label).open(rw=rw, user_pin=self.pin)

    def env(self, pin_file: Path) -> dict[str, str]:
        """What a node configured with this token gets in its environment."""
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "CERTVAULT_PKCS11_MODULE": MODULE,
            "CERTVAULT_PKCS11_TOKEN_LABEL": self.label,
            "CERTVAULT_PKCS11_PIN_FILE": str(pin_file),
        }

    def pull_out(self) -> Path:
        """Take the token away for real: its directory moves elsewhere."""
        away = self.tokendir.with_name(self.tokendir.name + "-away")
        shutil.move(self.tokendir, away)
        return away

    def put_back(self, away: Path) -> None:
        shutil.move(away, self.tokendir)


def make_token(directory: Path, label: str = TOKEN_LABEL) -> SoftToken:
    if shutil.which("softhsm2-util") is None or not Path(MODULE).exists():
        if IN_CI:
            pytest.fail("softhsm2 is not installed (scripts/ensure-system-packages.sh)")
        pytest.skip("softhsm2 is not installed")
    tokendir = directory / "tokens"
    tokendir.mkdir(parents=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        check=True,
        capture_output=True,
        timeout=30,
    )
    return SoftToken(conf, tokendir, label)


@pytest.fixture(name="softhsm")
def softhsm_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftToken]:
    token = make_token(tmp_path / "softhsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(token.conf))
    # SoftHSM reads its configuration when the library is initialised: once per process,
    # so a library loaded by an earlier test starts again on this test's token.
    if MODULE in pkcs11._loaded:
        pkcs11.lib(MODULE).reinitialize()
    yield token
    for provider in token.providers:
        provider.close()
