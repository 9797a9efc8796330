"""Sign in to the admin console in Chromium against `certvault serve`: set up TOTP from the page
(the code computed here from the key the page shows), see the landing page, sign out, sign in
again with the next code, sign out.

Screenshots of every page go to tests/artifacts/.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from playwright.sync_api import Page, expect

from tests.browser.serving import serving
from tests.functional import cli_env
from tests.functional.smtp_server import free_port

ARTIFACTS = Path(__file__).parent.parent / "artifacts"
PASSWORD = "browser-console-password-1"


@pytest.fixture
def server(backend: str, tmp_path: Path) -> Iterator[str]:
    cli_gen = cli_env.cli_for(backend, tmp_path)
    cli = next(cli_gen)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cli.env.update(CERTVAULT_PUBLIC_URL=url)
    cli.bootstrap()
    password_file = cli_env.write_secret(tmp_path / "password", PASSWORD)
    made = cli.run(
        "admin", "create", "alice", "--account", "acme", "--password-file", password_file
    )
    assert made.returncode == 0, made.stderr
    try:
        with serving(cli, port, tmp_path / "serve.log") as log:
            yield url
            assert PASSWORD not in log.read_text()
    finally:
        cli_gen.close()


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _code(secret_text: str, at: float) -> str:
    secret = base64.b32decode(secret_text + "=" * (-len(secret_text) % 8))
    return TOTP(secret, 6, SHA1(), 30).generate(at).decode()  # noqa: S303


def _fill_login(page: Page, url: str, code: str) -> None:
    answer = page.goto(f"{url}/admin/login")
    assert answer is not None and answer.status == 200
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    page.get_by_label("Account").fill("acme")
    page.get_by_label("Login").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Authenticator code").fill(code)


def test_sign_in_with_totp_and_sign_out(page: Page, server: str, backend: str) -> None:
    blocked: list[str] = []
    page.on(
        "console",
        lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
    )
    shots = f"admin-login-{backend}"
    _fill_login(page, server, "")
    _shot(page, f"{shots}-1-login")
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Set up your authenticator")
    expect(page.locator("#qr svg")).to_be_visible()
    secret = page.locator("#totp-secret").inner_text().strip()
    _shot(page, f"{shots}-2-totp-enroll")
    page.get_by_label("Authenticator code").fill(_code(secret, time.time()))
    page.get_by_role("button", name="Confirm").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, alice")
    expect(page.locator("#who")).to_contain_text("Acme Corp")
    cookies = {c["name"]: c for c in page.context.cookies()}
    # Chromium keeps the __Host- cookies (Secure, Path=/, no Domain) on http://127.0.0.1 too.
    for name in ("__Host-certvault_session", "__Host-certvault_csrf"):
        cookie = cookies[name]
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/" and cookie["domain"] == "127.0.0.1"
    _shot(page, f"{shots}-3-landing")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.goto(f"{server}/admin/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")

    # The enrollment code was used: the next time step's code is accepted (±1 step).
    _fill_login(page, server, _code(secret, time.time() + 30))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, alice")
    _shot(page, f"{shots}-4-signed-in-again")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    _shot(page, f"{shots}-5-signed-out")
    assert blocked == [], "the Content-Security-Policy blocked something on the pages"
