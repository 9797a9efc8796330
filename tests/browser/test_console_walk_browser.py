"""Every console page and every page a person sees, in Chromium at 1280 and 800 px: the page
never scrolls sideways (a wide table scrolls inside its box), and a rejected form shows its error
at the top, in view and focused. The walk also writes the screenshot gallery in docs/screenshots/
(viewport screenshots, names fixed: console-persons-1280.png, ...)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from certvault.services.vault import settings as kv_settings
from tests.browser.console_server import ConsoleServer, console_server_fixture  # noqa: F401
from tests.browser.test_password_reset_browser import _link
from tests.conftest import TEST_OPERATOR
from tests.functional.console_fixtures import PASSWORD

GALLERY = Path(__file__).parent.parent.parent / "docs" / "screenshots"
WIDTHS = (1280, 800)
HEIGHT = 800


# What sticks out on the right (its box or its text), outermost first: for the failure message.
STICKING_OUT = """() => [...document.body.querySelectorAll("*")]
  .filter((e) => e.getBoundingClientRect().left + e.scrollWidth > window.innerWidth)
  .filter((e) => !e.parentElement.closest(".table-scroll"))
  .slice(0, 5)
  .map((e) => `${e.tagName.toLowerCase()}#${e.id}.${e.className}`)"""


def _fits(page: Page, what: str) -> None:
    wide, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    if wide > inner:
        culprits = page.evaluate(STICKING_OUT)
        raise AssertionError(f"{what} at {inner} px: the page is {wide} px wide: {culprits}")


def _picture(page: Page, name: str, width: int) -> None:
    """The viewport as docs/screenshots/NAME-WIDTH.png. Generated secrets are masked: they
    change on every run and are nobody's business."""
    GALLERY.mkdir(parents=True, exist_ok=True)
    page.screenshot(
        path=str(GALLERY / f"{name}-{width}.png"),
        animations="disabled",
        caret="hide",
        mask=[page.locator("#passphrase, #totp-secret, #qr")],
        mask_color="#c9d1d9",
    )


def _at(page: Page, width: int) -> None:
    page.set_viewport_size({"width": width, "height": HEIGHT})


def _in_view_and_focused(page: Page, error: Locator, what: str) -> None:
    expect(error).to_be_visible()
    expect(error).to_be_focused()
    box = error.bounding_box()
    size = page.viewport_size
    assert box is not None and size is not None
    assert box["y"] >= 0 and box["y"] + box["height"] <= size["height"], f"{what}: {box}"
    assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"], f"{what}: {box}"


def _set_password_link(server: ConsoleServer, page: Page) -> str:
    """A set-password link for clerk, mailed from the Admins page as the password reset test
    does (the password and a fresh code confirm it is boss)."""
    page.goto(f"{server.url}/admin/admins/{server.world.admin_ids['clerk']}")
    form = page.locator("#reset-password-form")
    form.get_by_label("Your password").fill(PASSWORD)
    form.get_by_label("Your authenticator code").fill(server.next_code("boss"))
    form.get_by_role("button", name="Mail a set-password link").click()
    expect(page.locator("#notice")).to_contain_text("was mailed to the administrator")
    return _link(server, "clerk@acme.example")


def _email_code_recovery(server: ConsoleServer) -> None:
    ports = server.cli.ports()
    try:
        kv_settings.update_recovery_options(
            ports, TEST_OPERATOR, "acme", kv_settings.RecoveryOptions(recovery_method="email_code")
        )
    finally:
        ports.close()


# Layout does not depend on the database: one backend keeps the walk near a minute.
@pytest.mark.parametrize("backend", ["sqlite"])
def test_console_walk_at_1280_and_800_px(page: Page, console_server: ConsoleServer) -> None:
    console_server.sign_in(page, "boss")
    _every_page_fits(page, console_server)
    _rejected_forms_show_the_error_in_view_and_focused(page, console_server)


def _every_page_fits(page: Page, console_server: ConsoleServer) -> None:
    url = console_server.url
    alice = console_server.world.world.alice
    newest = alice.cert_ids[1]
    link = _set_password_link(console_server, page)
    _email_code_recovery(console_server)
    made = console_server.cli.run(
        "form", "create", "--account", "acme", "--slug", "staff", "--profile", "smime",
        "--domain", "example.org", "--name", "Staff certificates",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    sections = page.locator("nav.console a").evaluate_all(
        "links => links.map(a => [a.id.slice(4), a.getAttribute('href')])"
    )
    assert len(sections) >= 9, sections

    pages = [("console-home", "/admin/"), *((f"console-{k}", p) for k, p in sections)]
    pages += [
        ("console-person", f"/admin/persons/{alice.person_id}"),
        ("console-certificate", f"/admin/certificates/{newest}"),
        ("console-download", f"/admin/certificates/{newest}/download"),
        ("console-download-person", f"/admin/persons/{alice.person_id}/download"),
        ("console-key-vault-edit", "/admin/key-vault/edit"),
        ("console-admin", f"/admin/admins/{console_server.world.admin_ids['clerk']}"),
        ("enroll-form", "/enroll/acme/staff"),
        ("recovery-form", "/kv/acme"),
    ]
    for width in WIDTHS:
        _at(page, width)
        for name, path in pages:
            page.goto(url + path)
            _fits(page, path)
            _picture(page, name, width)
        page.goto(f"{url}/admin/key-vault")
        page.get_by_role("button", name="Edit").click()
        expect(page.locator("dialog#recovery-options")).to_be_visible()
        _fits(page, "the Key Vault Recovery Options dialog")
        _picture(page, "console-key-vault-dialog", width)
        page.goto(f"{url}/kv/acme")
        page.get_by_label("Email address").fill(alice.email)
        page.get_by_role("button", name="Send me a code").click()
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        _fits(page, "the recovery form's second step")
        _picture(page, "recovery-code", width)

    # The set-password page is opened from a mail, signed out and without JavaScript.
    own = page.context.browser.new_context(java_script_enabled=False)  # type: ignore[union-attr]
    try:
        setting = own.new_page()
        console_server.watch(setting)
        for width in WIDTHS:
            _at(setting, width)
            setting.goto(link)
            expect(setting.get_by_role("heading", level=1)).to_have_text("Set your password")
            _fits(setting, "the set-password page")
            _picture(setting, "set-password", width)
    finally:
        own.close()


def _rejected_forms_show_the_error_in_view_and_focused(
    page: Page, console_server: ConsoleServer
) -> None:
    url = console_server.url
    for width in WIDTHS:
        _at(page, width)
        # The Key Vault Recovery Options dialog: the rejected save comes back in the dialog,
        # shown as a modal with the error at its top.
        page.goto(f"{url}/admin/key-vault")
        page.get_by_role("button", name="Edit").click()
        dialog = page.locator("dialog#recovery-options")
        dialog.get_by_label("Exchange Server Host Name").fill("exa mple.com")
        dialog.get_by_role("button", name="Save").click()
        expect(dialog).to_be_visible()
        error = dialog.locator("#error")
        expect(error).to_contain_text("Exchange Server Host Name must be")
        _in_view_and_focused(page, error, f"the Key Vault dialog at {width} px")
        _fits(page, "the rejected Key Vault dialog")
        _picture(page, "console-key-vault-error", width)
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        # Opened again, the dialog still holds the error: focused again.
        page.get_by_role("button", name="Edit").click()
        _in_view_and_focused(page, error, f"the reopened Key Vault dialog at {width} px")

        # The same on the page version of the form, and on forms far down a page.
        page.goto(f"{url}/admin/key-vault/edit")
        page.get_by_label("Exchange Server Host Name").fill("exa mple.com")
        page.get_by_role("button", name="Save").click()
        _in_view_and_focused(page, page.locator("#error"), f"the Key Vault page at {width} px")

        page.goto(f"{url}/admin/forms")
        form = page.locator("#create-form")
        form.get_by_label("Slug", exact=False).fill("Not a slug!")
        form.get_by_role("button", name="Create form").click()
        _in_view_and_focused(page, page.locator("#error"), f"Enrollment forms at {width} px")

        page.goto(f"{url}/admin/admins")
        form = page.locator("#create-admin")
        form.get_by_label("Login").fill("no spaces allowed")
        form.get_by_role("button", name="Add administrator").click()
        _in_view_and_focused(page, page.locator("#error"), f"Admins at {width} px")

    # Signed out: a refused sign-in shows its error the same way.
    own = page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        signing = own.new_page()
        console_server.watch(signing)
        _at(signing, 800)
        signing.goto(f"{url}/admin/login")
        signing.get_by_label("Account").fill("acme")
        signing.get_by_label("Login").fill("boss")
        signing.get_by_label("Password").fill("not the password at all")
        signing.get_by_role("button", name="Sign in").click()
        _in_view_and_focused(signing, signing.locator("#error"), "the sign-in page")
    finally:
        own.close()
