"""One installation per interop module (the API world of tests/functional, on embedded SQLite:
these tests are about files, not databases), and the real tools, which must be installed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from certvault.services.directory import accounts
from certvault.services.kernel.ports import open_ports
from tests.conftest import TEST_OPERATOR, make_settings
from tests.functional.api_fixtures import ApiWorld, build_world
from tests.interop.tools import TOOLS

# Every release and every check download of a module counts against the hourly limits.
_UNLIMITED = 1_000_000


@pytest.fixture(scope="session", autouse=True)
def interop_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:  # never a skip: a missing tool is a broken setup, not a pass
        pytest.fail(f"missing {', '.join(missing)}: run scripts/ensure-system-packages.sh")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[ApiWorld]:
    home = tmp_path_factory.mktemp("interop") / "home"
    target = home / "db" / "certvault.sqlite3"
    target.parent.mkdir(parents=True, mode=0o700)
    shutil.copy(sqlite_template, target)
    settings = make_settings(
        home,
        None,
        downloads_per_hour_admin=_UNLIMITED,
        downloads_per_hour_token=_UNLIMITED,
        downloads_per_hour_ip=_UNLIMITED,
    )
    ports = open_ports(settings)
    try:
        accounts.initialize(ports, TEST_OPERATOR)
        built = build_world(ports, TEST_OPERATOR)
        with built.client:
            yield built
    finally:
        ports.close()
