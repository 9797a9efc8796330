"""A real `certvault serve` with the console test data (functional/console_fixtures.py), and a
signed-in Chromium page. Import ``console_server_fixture`` into a browser test module::

    from tests.browser.console_server import console_server_fixture  # noqa: F401

    def test_something(page, console_server):
        console_server.sign_in(page, "boss")
        page.goto(console_server.url + "/admin/persons")
        console_server.shot(page, "persons-list")

Screenshots go to tests/artifacts/ (not committed). TOTP codes come from the real clock; a code
is good once, so ``sign_in`` takes the next time step when this one was used already.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from playwright.sync_api import Page, expect

from certvault.services.directory import accounts
from tests.browser.serving import serving
from tests.conftest import TEST_OPERATOR
from tests.functional import cli_env
from tests.functional.console_fixtures import CONSOLE_ADMINS, PASSWORD, ConsoleWorld, build_console
from tests.functional.smtp_server import SmtpServer, free_port

ARTIFACTS = Path(__file__).parent.parent / "artifacts"


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _code(secret_text: str, step: int) -> str:
    secret = base64.b32decode(secret_text + "=" * (-len(secret_text) % 8))
    return TOTP(secret, 6, SHA1(), 30).generate(step * 30).decode()  # noqa: S303


@dataclass
class ConsoleServer:
    url: str
    backend: str
    cli: cli_env.Cli
    world: ConsoleWorld  # ids of the persons, certificates and organizations made
    smtp: SmtpServer
    secrets: dict[str, str] = field(default_factory=dict)  # login -> TOTP secret (base32)
    used_steps: dict[str, int] = field(default_factory=dict)
    csp_reports: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        """Collect what the Content-Security-Policy blocks on ``page`` (into csp_reports)."""
        page.on(
            "console",
            lambda m: (
                self.csp_reports.append(m.text) if "Content Security Policy" in m.text else None
            ),
        )

    def next_code(self, login: str) -> str:
        """A TOTP code no earlier sign-in used (the server accepts one step either side)."""
        secret = self.secrets[login]
        step = int(time.time()) // 30
        last = self.used_steps.get(login, -1)
        if last >= step + 1:
            time.sleep(30 * (last - step) - time.time() % 30 + 0.5)
            step = int(time.time()) // 30
        step = max(step, last + 1)
        self.used_steps[login] = step
        return _code(secret, step)

    def sign_in(self, page: Page, login: str = "boss") -> None:
        """Sign ``page`` in as ``login``; the first time, set up TOTP from the page."""
        self.watch(page)
        page.goto(f"{self.url}/admin/login")
        page.get_by_label("Account").fill(CONSOLE_ADMINS[login][0])
        page.get_by_label("Login").fill(login)
        page.get_by_label("Password").fill(PASSWORD)
        first = login not in self.secrets
        if not first:
            page.get_by_label("Authenticator code").fill(self.next_code(login))
        page.get_by_role("button", name="Sign in").click()
        if first:
            expect(page.get_by_role("heading", level=1)).to_have_text("Set up your authenticator")
            self.secrets[login] = page.locator("#totp-secret").inner_text().strip()
            page.get_by_label("Authenticator code").fill(self.next_code(login))
            page.get_by_role("button", name="Confirm").click()
        expect(page.get_by_role("heading", level=1)).to_have_text(f"Welcome, {login}")

    def reauthenticate(self, page: Page, login: str = "boss") -> None:
        """Fill the password and a fresh code where a page asks to confirm who you are."""
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_label("Authenticator code").fill(self.next_code(login))

    def shot(self, page: Page, name: str) -> None:
        shot(page, f"console-{self.backend}-{name}")


@pytest.fixture(name="console_server")
def console_server_fixture(backend: str, tmp_path: Path) -> Iterator[ConsoleServer]:
    smtp = SmtpServer()
    smtp.start()
    cli_gen = cli_env.cli_for(backend, tmp_path)
    cli = next(cli_gen)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cli.env.update(
        CERTVAULT_PUBLIC_URL=url,
        CERTVAULT_SMTP_HOST="127.0.0.1",
        CERTVAULT_SMTP_PORT=str(smtp.port),
        CERTVAULT_MAIL_SEND_INTERVAL="0.3",
    )
    ports = cli.ports()
    try:
        accounts.initialize(ports, TEST_OPERATOR)
        world = build_console(ports, TEST_OPERATOR)
    finally:
        ports.close()
    try:
        with serving(cli, port, tmp_path / "serve.log") as log:
            server = ConsoleServer(url, backend, cli, world, smtp)
            yield server
            assert PASSWORD not in log.read_text()
            assert server.csp_reports == [], "the Content-Security-Policy blocked something"
    finally:
        smtp.stop()
        cli_gen.close()
