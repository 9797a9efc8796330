"""The Audit, Admins and Enrollment forms pages in Chromium, against a real `certvault serve`."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from sqlalchemy import select

from certvault.db.models import Admin, EnrollmentForm, MailMessage
from tests.browser.console_server import console_server_fixture  # noqa: F401
from tests.functional.console_fixtures import PASSWORD


def _read(console_server, query):
    ports = console_server.cli.ports()
    try:
        with ports.db.read() as s:
            return list(s.scalars(query))
    finally:
        ports.close()


def test_audit_page_shows_the_sign_in_and_verifies_the_chain(page: Page, console_server) -> None:
    console_server.sign_in(page, "boss")
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Audit").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit")
    first = page.locator("#events tbody tr").first
    expect(first).to_contain_text("admin.sign_in")
    expect(first).to_contain_text("admin:boss")
    console_server.shot(page, "audit")

    page.get_by_label("Outcome").select_option("success")
    page.get_by_label("Action starts with").fill("admin.sign")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"outcome=success"))
    for action in page.locator("#events tbody tr td:nth-child(3)").all_inner_texts():
        assert action.startswith("admin.sign")

    page.get_by_role("button", name="Verify chain").click()
    expect(page.locator("#verify-result")).to_contain_text("The audit chain is intact:")
    console_server.shot(page, "audit-verified")


def test_admins_page_creates_an_admin_with_key_download(page: Page, console_server) -> None:
    console_server.sign_in(page, "boss")
    page.goto(f"{console_server.url}/admin/admins")
    expect(page.locator("#admins")).to_contain_text("salesboss")
    console_server.shot(page, "admins")

    form = page.locator("#create-admin")
    form.get_by_label("Login").fill("vaulter")
    form.get_by_label("Email (for notices)").fill("vaulter@acme.example")
    form.get_by_label("Account administrator", exact=False).check()
    form.get_by_label("Allow download keys from Key Vault").check()
    form.get_by_label("Manage persons").check()
    form.get_by_role("button", name="Add administrator").click()
    # A privilege that releases keys: the password and a fresh code first, as for a download.
    expect(page.locator("#error")).to_contain_text("Confirm your password")
    console_server.shot(page, "admin-create-reauthenticate")
    form = page.locator("#create-admin")
    expect(form.get_by_label("Allow download keys from Key Vault")).to_be_checked()
    form.get_by_label("Your password").fill(PASSWORD)
    form.get_by_label("Your authenticator code").fill(console_server.next_code("boss"))
    form.get_by_role("button", name="Add administrator").click()

    expect(page.locator("#created")).to_contain_text("The administrator vaulter was created.")
    password = page.locator("#generated-password").inner_text().strip()
    assert len(password) >= 20
    console_server.shot(page, "admin-created")
    [made] = _read(console_server, select(Admin).where(Admin.login == "vaulter"))
    page.goto(f"{console_server.url}/admin/admins/{made.id}")  # shown once: not here
    expect(page.get_by_role("heading", level=1)).to_have_text("Administrator vaulter")
    expect(page.locator("#generated-password")).to_have_count(0)
    assert made.privileges == "key_vault_download persons_manage" and made.role == "account"
    notices = _read(
        console_server,
        select(MailMessage.to_addr).where(
            MailMessage.subject == "An administrator may now download keys from Key Vault"
        ),
    )
    assert sorted(notices) == ["boss@acme.example", "clerk@acme.example", "vaulter@acme.example"]


def test_forms_page_creates_a_form_and_shows_its_url(page: Page, console_server) -> None:
    console_server.sign_in(page, "boss")
    page.get_by_role("navigation", name="Console").get_by_role(
        "link", name="Enrollment forms"
    ).click()
    expect(page.locator("#no-ca")).to_be_visible()
    form = page.locator("#create-form")
    form.get_by_label("Slug", exact=False).fill("staff")
    form.get_by_label("Title shown on the page").fill("Staff certificates")
    form.get_by_label("Allowed address domains", exact=False).fill("acme.example")
    form.get_by_role("button", name="Create form").click()
    expect(page.locator("#notice")).to_contain_text("The enrollment form was created.")

    url = f"{console_server.url}/enroll/acme/staff"
    expect(page.locator("#form-url")).to_have_text(url)
    page.goto(f"{console_server.url}/admin/forms")
    [made] = _read(console_server, select(EnrollmentForm).where(EnrollmentForm.slug == "staff"))
    expect(page.locator(f"#form-url-{made.id}")).to_have_text(url)
    expect(page.locator(f"#form-{made.id}")).to_contain_text("Staff certificates")
    console_server.shot(page, "forms")

    page.goto(url)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Staff certificates")
