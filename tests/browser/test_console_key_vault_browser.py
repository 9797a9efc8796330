"""The Key Vault page, its Key Vault Recovery Options dialog and the About page in Chromium."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.console_server import console_server_fixture  # noqa: F401
from tests.factories import make_ca, make_cert, make_p12, new_key

P12_PASSWORD = "browser-signing-pass-1"


def _value(page: Page, row_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f"#{row_id} td")


def test_edit_recovery_options_in_the_dialog(page: Page, console_server, tmp_path: Path) -> None:
    key = new_key("ec256")
    cert = make_cert(
        key, "profiles@acme.example", issuer=make_ca("Acme Signing CA"), cn="Acme Profile Signing"
    )
    p12 = tmp_path / "signing.p12"
    p12.write_bytes(make_p12(key, cert, P12_PASSWORD))

    console_server.sign_in(page, "boss")
    page.goto(f"{console_server.url}/admin/key-vault")
    expect(page.get_by_role("heading", level=1)).to_have_text("Key Vault")
    expect(_value(page, "kv-recovery-method")).to_have_text(
        "Administrators only (no self-service recovery)"
    )
    console_server.shot(page, "key-vault")

    dialog = page.locator("dialog#recovery-options")
    expect(dialog).to_be_hidden()
    page.get_by_role("button", name="Edit").click()
    expect(dialog).to_be_visible()
    expect(page).to_have_url(f"{console_server.url}/admin/key-vault")  # opened, not navigated
    expect(dialog.get_by_role("heading", name="Key Vault Recovery Options")).to_be_visible()
    dialog.get_by_label("Recovery Method").select_option(label="Email one-time code")
    dialog.get_by_label("Digitally Sign iOS Mobile Config").check()
    dialog.get_by_label("Signing identity (PKCS#12 file)").set_input_files(str(p12))
    dialog.get_by_label("PKCS#12 password").fill(P12_PASSWORD)
    dialog.get_by_label("Include Exchange in iOS Mobile Config").check()
    dialog.get_by_label("Exchange Server Host Name").fill("mail.acme.example")
    dialog.get_by_label("Number of Past Days to Sync").select_option(label="14 days")
    dialog.get_by_label("Prevent Moving Messages to Another Account").check()
    console_server.shot(page, "key-vault-dialog")
    dialog.get_by_role("button", name="Save").click()

    expect(page.locator("#notice")).to_have_text("The Key Vault Recovery Options were saved.")
    expect(dialog).to_be_hidden()
    expected = {
        "kv-recovery-method": "Email one-time code",
        "kv-sign-profiles": "Yes",
        "kv-signing-subject": "CN=Acme Profile Signing",
        "kv-signing-issuer": "CN=Acme Signing CA",
        "kv-signing-serial": format(cert.serial_number, "X"),
        "kv-signing-expires": cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"),
        "kv-exchange": "Yes",
        "kv-exchange-host": "mail.acme.example",
        "kv-exchange-ssl": "Yes",
        "kv-exchange-past-days": "14 days",
        "kv-exchange-prevent-move": "Yes",
    }
    for row_id, text in expected.items():
        expect(_value(page, row_id)).to_have_text(text)
    expect(page.locator("#signing-expiry-warning")).to_have_count(0)
    console_server.shot(page, "key-vault-saved")

    # A bad value comes back in the open dialog, with what was entered.
    page.get_by_role("button", name="Edit").click()
    dialog.get_by_label("Exchange Server Host Name").fill("exa mple.com")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_visible()
    expect(dialog.locator("#error")).to_contain_text("Exchange Server Host Name must be")
    expect(dialog.get_by_label("Exchange Server Host Name")).to_have_value("exa mple.com")
    expect(_value(page, "kv-exchange-host")).to_have_text("mail.acme.example")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()


def test_about_page_copies_the_key_vault_url(page: Page, console_server) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    console_server.sign_in(page, "boss")
    page.goto(f"{console_server.url}/admin/about")
    url = f"{console_server.url}/kv/acme"
    expect(page.locator("#kv-url")).to_have_text(url)
    button = page.locator("#copy-kv-url")
    button.click()
    expect(button).to_have_attribute("data-copied", "true")
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == url
    console_server.shot(page, "about")
