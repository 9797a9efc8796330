"""The admin console through its real pages (TestClient over https), on the data of the API
tests (api_fixtures.build_world), with administrators that sign in with a password and TOTP.

Import ``console_fixture`` into a test module to get the fixture ``console``::

    from tests.functional.console_fixtures import console_fixture  # noqa: F401

    def test_something(console):
        boss = console.sign_in("boss")
        page = boss.get("/admin/persons")
        answer = boss.post("/admin/persons/1/secret-id", {"secret_id": "..."})
"""

from __future__ import annotations

import base64
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from certvault.config import Settings
from certvault.db.models import RecoveryRequest
from certvault.services.access import admins
from certvault.services.directory import accounts
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports, open_ports
from certvault.services.kernel.ratelimit import DatabaseRateLimiter
from certvault.services.vault import recovery
from certvault.services.vault import settings as kv_settings
from certvault.web.app import create_app
from tests.conftest import PG_COPIES, TEST_OPERATOR, _pg_exec, _sqla_url, make_settings
from tests.functional.api_fixtures import ALL_PRIVILEGES, ApiWorld, build_world

PASSWORD = "console-password-0123"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
SECRET_RE = re.compile(r'id="totp-secret">([A-Z2-7]+)<')

# login -> (account, role, organizations, privileges, email)
CONSOLE_ADMINS: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...], str]] = {
    "boss": ("acme", "account", (), tuple(ALL_PRIVILEGES), "boss@acme.example"),
    "clerk": (
        "acme",
        "account",
        (),
        ("persons_manage", "certificates_manage"),
        "clerk@acme.example",
    ),
    "salesboss": ("acme", "organization", ("Sales",), tuple(ALL_PRIVILEGES), ""),
    "foreignboss": ("other", "account", (), tuple(ALL_PRIVILEGES), "boss@other.example"),
}


class Clock:
    """ports.clock, moved by the test: TOTP codes and session timeouts follow it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def code_for(secret_text: str, moment: datetime) -> str:
    secret = base64.b32decode(secret_text + "=" * (-len(secret_text) % 8))
    return TOTP(secret, 6, SHA1(), 30).generate(moment.timestamp()).decode()  # noqa: S303


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


@dataclass
class ConsoleClient:
    """One browser: its own cookies, signed in as ``login``."""

    client: TestClient
    clock: Clock
    login: str
    secret: str  # base32, as the TOTP page showed it

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def token(self, path: str = "/admin/") -> str:
        page = self.client.get(path)
        assert page.status_code == 200, (path, page.status_code)
        return csrf_of(page.text)

    def post(
        self,
        path: str,
        data: dict[str, Any] | None = None,
        *,
        csrf_from: str = "/admin/",
        **kw: Any,
    ) -> httpx.Response:
        """POST a form with a valid CSRF token (taken from ``csrf_from``)."""
        fields = {"csrf_token": self.token(csrf_from), **(data or {})}
        return self.client.post(path, data=fields, **kw)

    def next_code(self) -> str:
        """A fresh TOTP code: a code is good once, so the clock moves to the next time step."""
        self.clock.advance(seconds=30)
        return code_for(self.secret, self.clock.now)


@dataclass
class ConsoleWorld:
    world: ApiWorld  # persons, certificates and organizations of the API tests
    ports: Ports
    clock: Clock
    admin_ids: dict[str, int]
    _app: FastAPI | None = None

    def client(self) -> TestClient:
        """A new browser (its own cookies) on the one application of this world: FastAPI
        prepares each route of an application on its first request, which is worth doing once."""
        if self._app is None:
            # The limiter's clock stands still: no window boundary falls inside a test.
            limiter = DatabaseRateLimiter(self.ports.db, clock=lambda: 1_800_000_030)
            self._app = create_app(self.ports, limiter=limiter)
        return TestClient(self._app, base_url="https://testserver")

    def password_step(
        self, account: str, login: str, password: str
    ) -> tuple[TestClient, httpx.Response]:
        """A new browser signing in with a password and no code: the client and the page it
        lands on (the TOTP set-up page the first time)."""
        client = self.client()
        page = client.get("/admin/login")
        fields = {"account": account, "login": login, "password": password, "code": ""}
        landed = client.post("/admin/login", data={"csrf_token": csrf_of(page.text), **fields})
        return client, landed

    def sign_in(self, login: str) -> ConsoleClient:
        """A new browser, signed in as ``login`` (TOTP set up on the way)."""
        client, answer = self.password_step(CONSOLE_ADMINS[login][0], login, PASSWORD)
        assert answer.url.path == "/admin/totp", answer.text
        found = SECRET_RE.search(answer.text)
        assert found is not None
        secret = found.group(1)
        done = client.post(
            "/admin/totp",
            data={"csrf_token": csrf_of(answer.text), "code": code_for(secret, self.clock.now)},
        )
        assert done.status_code == 200 and done.url.path == "/admin/", done.text
        return ConsoleClient(client, self.clock, login, secret)


def ask_for_approval(console: ConsoleWorld, slug: str, email: str, ip: str = "192.0.2.7") -> str:
    """A request at the Private Key Recovery Form of ``slug`` for the keys of ``email``, waiting
    for an administrator's approval (the account is set to ask for one, and trusts the CA of
    the world's certificates): its uuid."""
    ports = console.ports
    accounts.add_trusted_issuer(ports, TEST_OPERATOR, slug, console.world.ca[1])
    kv_settings.update_recovery_options(
        ports, TEST_OPERATOR, slug, kv_settings.RecoveryOptions(recovery_method="admin_approval")
    )
    ticket = recovery.request_recovery(ports, slug, email, ip).request_uuid
    with ports.db.read() as s:
        row = s.scalars(select(RecoveryRequest).where(RecoveryRequest.uuid == ticket)).one()
        assert row.status == "pending", row.status
    return ticket


def build_console(ports: Ports, operator: Actor) -> ConsoleWorld:
    clock = Clock()
    ports.clock = clock
    world = build_world(ports, operator)
    ids = {}
    for login, (account, role, orgs, privileges, email) in CONSOLE_ADMINS.items():
        made = admins.create_admin(
            ports,
            operator,
            account,
            login,
            role=role,
            organizations=orgs,
            privileges=privileges,
            password=PASSWORD,
            email=email or None,
        )
        ids[login] = made.admin_id
    return ConsoleWorld(world, ports, clock, ids)


@dataclass(frozen=True)
class _Template:
    home: Path  # the master key, the audit heads and (on SQLite) the database
    database: str | None  # the PostgreSQL database to copy, None on SQLite
    world: ConsoleWorld  # the ids and the keys made; its ports are closed


class ConsoleTemplates:
    """The console world is built once per backend and process, then copied for each test:
    the home folder (master key, audit heads, SQLite file) and, on PostgreSQL, the database."""

    def __init__(self, request: pytest.FixtureRequest, root: Path) -> None:
        self._request = request
        self._root = root
        self._made: dict[str, _Template] = {}

    def get(self, backend: str) -> _Template:
        if backend not in self._made:
            self._made[backend] = self._build(backend)
        return self._made[backend]

    def _build(self, backend: str) -> _Template:
        home = self._root / backend
        database = url = None
        if backend == "sqlite":
            target = home / "db" / "certvault.sqlite3"
            target.parent.mkdir(parents=True, mode=0o700)
            shutil.copy(self._request.getfixturevalue("sqlite_template"), target)
        else:
            database = f"cvcon_{uuid.uuid4().hex[:12]}"
            _pg_exec(
                f'CREATE DATABASE "{database}" TEMPLATE "'
                f'{self._request.getfixturevalue("pg_template")}"'
            )
            url = _sqla_url(database)
        ports = open_ports(make_settings(home, url))
        try:
            accounts.initialize(ports, TEST_OPERATOR)
            world = build_console(ports, TEST_OPERATOR)
        finally:
            ports.close()  # no connection may stay open on a database used as a template
        return _Template(home, database, world)

    def close(self) -> None:
        for made in self._made.values():
            if made.database is not None:
                PG_COPIES.forget(made.database)
                _pg_exec(f'DROP DATABASE IF EXISTS "{made.database}" WITH (FORCE)')


@pytest.fixture(name="console")
def console_fixture(
    backend: str, settings: Settings, console_templates: ConsoleTemplates
) -> Iterator[ConsoleWorld]:
    """A copy of the console world in this test's home and database (``settings`` may be
    overridden by a test module, as for any test)."""
    template = console_templates.get(backend)
    shutil.copytree(template.home, settings.home_dir, dirs_exist_ok=True)
    if template.database is not None:
        # The test's database is replaced by a copy of the console's, made ahead of time.
        assert settings.database_url is not None
        name = settings.database_url.rsplit("/", 1)[1]
        copy = PG_COPIES.take(template.database)
        _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _pg_exec(f'ALTER DATABASE "{copy}" RENAME TO "{name}"')
    ports = open_ports(settings)
    clock = Clock()
    ports.clock = clock
    made = template.world
    console = ConsoleWorld(made.world, ports, clock, dict(made.admin_ids))
    # The API tests' client of the same world, on the same application.
    console.world = replace(made.world, ports=ports, client=console.client())
    try:
        yield console
    finally:
        ports.close()
