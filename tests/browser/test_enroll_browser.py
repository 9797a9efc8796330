"""Enroll through the real pages in Chromium against `certvault serve` and a real SMTP server:
read the code from the mail, download the p12, open it with the passphrase the page showed, and
find the same key escrowed (with --dual-key: the signing key is not).

Screenshots of every page go to tests/artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.services.pki import ca
from tests.browser.serving import serving
from tests.conftest import TEST_OPERATOR
from tests.functional import cli_env
from tests.functional.smtp_server import SmtpServer, free_port

ARTIFACTS = Path(__file__).parent.parent / "artifacts"
ACCESS = "browser access code"
EMAIL = "alice@example.org"


@dataclass
class Site:
    cli: cli_env.Cli
    smtp: SmtpServer
    url: str  # where `certvault serve` answers

    def escrowed_spkis(self) -> set[bytes]:
        rows = self.cli.sql(
            "SELECT k.spki_sha256 FROM escrowed_keys k JOIN accounts a ON a.id = k.account_id "
            "WHERE a.slug = ?",
            ("acme",),
        )
        return {bytes(row[0]) for row in rows}

    def certificate_profiles(self) -> dict[bytes, tuple[str, bool]]:
        rows = self.cli.sql("SELECT spki_sha256, profile, escrowed_key_id FROM certificates")
        return {bytes(spki): (profile, key_id is not None) for spki, profile, key_id in rows}


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
    )
    cli.bootstrap()
    ports = cli.ports()
    try:
        ca.init_ca(ports, TEST_OPERATOR, "acme")
    finally:
        ports.close()
    access = cli_env.write_secret(tmp_path / "access-code", ACCESS)
    for extra in ([], ["--dual-key"]):
        slug = "dual" if extra else "staff"
        made = cli.run(
            "form", "create", "--account", "acme", "--slug", slug, "--profile", "smime",
            "--access-code-file", access, "--domain", "example.org",
            "--name", "Staff certificates", *extra,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip().endswith(f"{url}/enroll/acme/{slug}")
    try:
        with serving(cli, port, tmp_path / "serve.log"):
            yield Site(cli, smtp, url)
    finally:
        smtp.stop()
        cli_gen.close()


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _enroll(page: Page, site: Site, form: str, shots: str, tmp_path: Path) -> tuple[bytes, str]:
    """Walk the two steps and download the p12; returns it with the passphrase shown."""
    blocked: list[str] = []
    page.on(
        "console",
        lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
    )
    answer = page.goto(f"{site.url}/enroll/acme/{form}")
    assert answer is not None and answer.status == 200
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    expect(page.get_by_role("heading", level=1)).to_have_text("Staff certificates")
    _shot(page, f"{shots}-1-start")

    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Access code").fill(ACCESS)
    page.get_by_role("button", name="Send me a code").click()
    expect(page.locator("#code-sent")).to_contain_text(EMAIL)
    _shot(page, f"{shots}-2-code-sent")

    [mail] = [m for m in site.smtp.messages if EMAIL in m.rcpt_tos]
    code = re.search(r"\b(\d{8})\b", mail.body)
    assert code is not None
    page.get_by_label("Code from the mail").fill(code.group(1))
    page.get_by_label("EC P-256").check()
    page.get_by_label("Secret ID (optional)").fill("my secret id")
    page.get_by_role("button", name="Create my certificate").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your certificate is ready")
    passphrase = page.locator("#passphrase").inner_text().strip()
    _shot(page, f"{shots}-3-result")

    with page.expect_download() as download_info:
        page.locator("#download").click()
    download = download_info.value
    assert download.suggested_filename == "alice.p12"
    target = tmp_path / "alice.p12"
    download.save_as(target)
    assert blocked == [], "the Content-Security-Policy blocked something on the pages"
    return target.read_bytes(), passphrase


def test_enroll_in_the_browser_escrows_the_downloaded_key(
    page: Page, site: Site, backend: str, tmp_path: Path
) -> None:
    data, passphrase = _enroll(page, site, "staff", f"enroll-{backend}", tmp_path)
    [entry] = read_pkcs12(data, passphrase).entries
    spki = keylib.spki_sha256(entry.key.public_key())
    assert site.escrowed_spkis() == {spki}
    assert site.certificate_profiles() == {spki: ("smime", True)}


def test_dual_key_in_the_browser_escrows_only_the_encryption_key(
    page: Page, site: Site, backend: str, tmp_path: Path
) -> None:
    expect_notice = "signing"
    data, passphrase = _enroll(page, site, "dual", f"enroll-dual-{backend}", tmp_path)
    expect(page.locator("#key-notice")).to_contain_text(expect_notice)
    entries = read_pkcs12(data, passphrase).entries
    assert len(entries) == 2
    spkis = {keylib.spki_sha256(e.key.public_key()) for e in entries}
    profiles = site.certificate_profiles()
    assert set(profiles) == spkis
    [encryption] = [s for s, (p, _) in profiles.items() if p == "smime-encryption"]
    [signing] = [s for s, (p, _) in profiles.items() if p == "smime-signing"]
    assert site.escrowed_spkis() == {encryption}
    assert profiles[signing] == ("smime-signing", False)
