"""Recover a key through the Private Key Recovery Form in Chromium against `certvault serve` and a
real SMTP server, at a phone's width (390 px): read the code (or the approval link) from the mail,
download, and open the file with the real openssl and the passphrase the page showed. The
administrator's approval happens in the console, in a second browser context.

Screenshots of every page go to tests/artifacts/.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from playwright.sync_api import Browser, Page, expect

from certvault.services.access import admins
from certvault.services.directory import accounts, persons
from certvault.services.vault import settings as kv_settings
from certvault.services.vault.imports import import_p12
from tests.browser.serving import serving
from tests.conftest import TEST_OPERATOR
from tests.factories import make_ca, make_cert, make_p12, pool_key
from tests.functional import cli_env
from tests.functional.cli_env import openssl
from tests.functional.smtp_server import SmtpServer, free_port

ARTIFACTS = Path(__file__).parent.parent / "artifacts"
EMAIL = "alice@example.org"
PASSWORD = "approver-password-0123"
SECRET_ID = "blue whale seventy"
PHONE = {"width": 390, "height": 844}


@dataclass
class Site:
    cli: cli_env.Cli
    smtp: SmtpServer
    url: str
    backend: str
    spki: bytes  # of Alice's escrowed key

    def mail_to(self, address: str, pattern: str, seen: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in a mail to ``address`` after the first ``seen``
        messages, waiting for the server's sender to deliver it."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for mail in self.smtp.messages[seen:]:
                found = re.search(pattern, mail.body)
                if address in mail.rcpt_tos and found:
                    return found
            time.sleep(0.2)
        raise AssertionError(f"no mail to {address} matching {pattern}")

    def method(self, name: str) -> None:
        ports = self.cli.ports()
        try:
            kv_settings.update_recovery_options(
                ports, TEST_OPERATOR, "acme", kv_settings.RecoveryOptions(recovery_method=name)
            )
        finally:
            ports.close()


@pytest.fixture
def site(backend: str, tmp_path: Path) -> Iterator[Site]:
    smtp = SmtpServer()
    smtp.start()
    cli_gen = cli_env.cli_for(backend, tmp_path)
    cli = next(cli_gen)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cli.env.update(
        CERTVAULT_SMTP_HOST=smtp.host,
        CERTVAULT_SMTP_PORT=str(smtp.port),
        CERTVAULT_PUBLIC_URL=url,
        CERTVAULT_MAIL_SEND_INTERVAL="0.3",
    )
    cli.bootstrap()
    ports = cli.ports()
    try:
        ca = make_ca("Acme Issuing CA")
        accounts.add_trusted_issuer(ports, TEST_OPERATOR, "acme", ca[1])
        key = pool_key("ec256")
        cert = make_cert(key, EMAIL, issuer=ca, cn="Alice Example")
        import_p12(ports, TEST_OPERATOR, "acme", make_p12(key, cert, "pw-1"), "pw-1")
        admins.create_admin(
            ports,
            TEST_OPERATOR,
            "acme",
            "approver",
            privileges=["recovery_approve"],
            password=PASSWORD,
        )
        kv_settings.update_recovery_options(
            ports, TEST_OPERATOR, "acme", kv_settings.RecoveryOptions(recovery_method="email_code")
        )
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    finally:
        ports.close()
    try:
        with serving(cli, port, tmp_path / "serve.log") as log:
            yield Site(cli, smtp, url, backend, spki)
            said = log.read_text()
            assert PASSWORD not in said and SECRET_ID not in said
    finally:
        smtp.stop()
        cli_gen.close()


def _shot(page: Page, site: Site, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"recovery-{site.backend}-{name}.png"), full_page=True)


def _fits(page: Page) -> None:
    """Nothing sticks out sideways at a phone's width."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide"


def _opened_key_spki(path: Path, passphrase: str) -> bytes:
    pw = path.with_suffix(".pw")
    pw.write_text(passphrase + "\n")
    out = openssl("pkcs12", "-in", path, "-passin", f"file:{pw}", "-nodes").stdout
    key = serialization.load_pem_private_key(
        out[out.index("-----BEGIN PRIVATE KEY") :].encode(), None
    )
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ask(page: Page, site: Site, button: str) -> int:
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Security Policy" in m.text else None)
    page.set_viewport_size(PHONE)
    answer = page.goto(f"{site.url}/kv/acme")
    assert answer is not None and answer.status == 200
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    expect(page.locator(".account")).to_have_text("Acme Corp")
    _fits(page)
    _shot(page, site, "1-start")
    seen = len(site.smtp.messages)
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_role("button", name=button).click()
    expect(page.locator("#sent")).to_contain_text(EMAIL)
    _fits(page)
    _shot(page, site, "2-sent")
    assert blocked == []
    return seen


def _choose_and_download(page: Page, site: Site, tmp_path: Path) -> None:
    expect(page.get_by_role("heading", level=2)).to_have_text("Step 3 of 3: choose and download")
    expect(page.locator(".subject")).to_contain_text("Alice Example")
    passphrase = page.locator("#passphrase").inner_text().strip()
    _fits(page)
    _shot(page, site, "3-choose")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    saved = tmp_path / "recovered.p12"
    info.value.save_as(saved)
    assert _opened_key_spki(saved, passphrase) == site.spki


def test_recover_with_an_emailed_code_on_a_phone(page: Page, site: Site, tmp_path: Path) -> None:
    seen = _ask(page, site, "Send me a code")
    code = site.mail_to(EMAIL, r"\b(\d{8})\b", seen).group(1)
    page.get_by_label("Code from the mail").fill(code)
    page.get_by_role("button", name="Continue").click()
    _choose_and_download(page, site, tmp_path)


def test_recover_with_a_code_and_the_secret_id(page: Page, site: Site, tmp_path: Path) -> None:
    site.method("email_code_and_secret")
    ports = site.cli.ports()
    try:
        [found] = persons.list_persons(ports, TEST_OPERATOR, "acme").items
        persons.set_secret_id(ports, TEST_OPERATOR, "acme", found.id, SECRET_ID)
    finally:
        ports.close()
    seen = _ask(page, site, "Send me a code")
    code = site.mail_to(EMAIL, r"\b(\d{8})\b", seen).group(1)
    page.get_by_label("Code from the mail").fill(code)
    page.get_by_label("Secret ID").fill("not the secret id")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#error")).to_contain_text("not right")
    page.get_by_label("Code from the mail").fill(code)
    page.get_by_label("Secret ID").fill(SECRET_ID)
    page.get_by_role("button", name="Continue").click()
    _choose_and_download(page, site, tmp_path)


def _totp(secret_text: str, step: int) -> str:
    secret = base64.b32decode(secret_text + "=" * (-len(secret_text) % 8))
    return TOTP(secret, 6, SHA1(), 30).generate(step * 30).decode()  # noqa: S303


def _console_sign_in(page: Page, site: Site) -> None:
    """The approver's first sign-in: password, then the authenticator set up from the page."""
    page.goto(f"{site.url}/admin/login")
    page.get_by_label("Account").fill("acme")
    page.get_by_label("Login").fill("approver")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up your authenticator")
    secret = page.locator("#totp-secret").inner_text().strip()
    page.get_by_label("Authenticator code").fill(_totp(secret, int(time.time()) // 30))
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, approver")


def test_recover_after_an_administrators_approval(
    page: Page, browser: Browser, site: Site, tmp_path: Path
) -> None:
    site.method("admin_approval")
    seen = _ask(page, site, "Ask for recovery")
    site.mail_to(EMAIL, r"administrator will look at it", seen)

    console = browser.new_context()
    try:
        admin = console.new_page()
        _console_sign_in(admin, site)
        admin.goto(f"{site.url}/admin/recovery")
        row = admin.locator("tr", has_text=EMAIL)
        expect(row).to_contain_text("Alice Example")
        _shot(admin, site, "4-console-pending")
        row.get_by_role("button", name="Approve").click()
        expect(admin.locator("tr", has_text=EMAIL)).to_have_count(0)
    finally:
        console.close()

    link = site.mail_to(EMAIL, r"(http://127\.0\.0\.1:\d+/kv/acme/link/\S+)", seen).group(1)
    page.goto(link)
    _fits(page)
    page.get_by_role("button", name="Continue").click()
    _choose_and_download(page, site, tmp_path)
