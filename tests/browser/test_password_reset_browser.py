"""A password reset in Chromium against `certvault serve` and a real SMTP server: an account
administrator mails a set-password link from the Admins page (after confirming it is them), the
administrator opens it from the mail, sets a new password with a code from their authenticator
(no JavaScript needed), their old session ends, and the new password signs in."""

from __future__ import annotations

import re
import time

from playwright.sync_api import Browser, Page, expect

from certvault.services.access import password_resets
from tests.browser.console_server import ConsoleServer, console_server_fixture  # noqa: F401
from tests.functional.console_fixtures import PASSWORD

NEW_PASSWORD = "chosen-in-the-browser-2026"


def _link(server: ConsoleServer, address: str) -> str:
    """The set-password link mailed to ``address``, once the server's sender delivered it."""
    deadline = time.monotonic() + 40
    pattern = re.escape(server.url + password_resets.PAGE_PATH) + r"\?token=[A-Za-z0-9_-]+"
    while time.monotonic() < deadline:
        for mail in server.smtp.messages:
            found = re.search(pattern, mail.body)
            if address in mail.rcpt_tos and mail.subject == password_resets.SUBJECT and found:
                return found.group(0)
        time.sleep(0.3)
    raise AssertionError(f"no set-password link mailed to {address}")


def test_reset_from_the_admins_page_and_set_the_password_from_the_mail(
    page: Page, browser: Browser, console_server: ConsoleServer
) -> None:
    clerk_id = console_server.world.admin_ids["clerk"]
    clerk_context = browser.new_context()
    clerk = clerk_context.new_page()
    console_server.sign_in(clerk, "clerk")

    console_server.sign_in(page, "boss")
    page.goto(f"{console_server.url}/admin/admins/{clerk_id}")
    form = page.locator("#reset-password-form")
    form.get_by_label("Your password").fill(PASSWORD)
    form.get_by_label("Your authenticator code").fill(console_server.next_code("boss"))
    console_server.shot(page, "admin-reset-password")
    form.get_by_role("button", name="Mail a set-password link").click()
    expect(page.locator("#notice")).to_contain_text("was mailed to the administrator")
    link = _link(console_server, "clerk@acme.example")
    assert link.split("token=")[1] not in page.content()

    # The administrator, in a browser of their own, without JavaScript.
    own = browser.new_context(java_script_enabled=False)
    setting = own.new_page()
    console_server.watch(setting)
    setting.goto(link)
    expect(setting.get_by_role("heading", level=1)).to_have_text("Set your password")
    expect(setting.locator("#reset-login")).to_have_text("clerk")
    console_server.shot(setting, "set-password")
    setting.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    setting.get_by_label("Repeat the new password").fill(NEW_PASSWORD)
    setting.get_by_label("Authenticator code").fill(console_server.next_code("clerk"))
    setting.get_by_role("button", name="Set the password").click()
    expect(setting.locator("#password-set")).to_contain_text("The password of clerk was changed")
    console_server.shot(setting, "set-password-done")

    # The session from before the reset ended.
    clerk.reload()
    expect(clerk.get_by_role("heading", level=1)).to_have_text("Sign in")
    # The new password signs in.
    setting.get_by_role("link", name="Sign in").click()
    setting.get_by_label("Account").fill("acme")
    setting.get_by_label("Login").fill("clerk")
    setting.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
    setting.get_by_label("Authenticator code").fill(console_server.next_code("clerk"))
    setting.get_by_role("button", name="Sign in").click()
    expect(setting.get_by_role("heading", level=1)).to_have_text("Welcome, clerk")
    # The link was good once.
    setting.goto(link)
    expect(setting.locator("#error")).to_contain_text("This link does not work")
    own.close()
    clerk_context.close()
