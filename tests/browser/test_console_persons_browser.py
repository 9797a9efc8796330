"""The Persons and Client Certificates pages in Chromium: search, a person's certificates and
keys, the Secret ID, a certificate's details, the key-in-vault filter."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from sqlalchemy import select

from certvault.db.models import Person
from tests.browser.console_server import console_server_fixture  # noqa: F401

SECRET = "browser secret id"


def _secret_id_hash(console_server, person_id: int) -> str | None:
    ports = console_server.cli.ports()
    try:
        with ports.db.read() as s:
            return s.scalars(select(Person.secret_id_hash).where(Person.id == person_id)).one()
    finally:
        ports.close()


def test_persons_and_certificates_pages(page: Page, console_server) -> None:
    world = console_server.world.world
    alice = world.alice
    old, new = alice.cert_ids
    console_server.sign_in(page, "boss")

    page.get_by_role("navigation", name="Console").get_by_role("link", name="Persons").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Persons")
    page.get_by_label("Name or email").fill("alice")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("#persons tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(alice.email)
    console_server.shot(page, "persons-list")

    rows.first.get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(alice.email)
    for cert_id in (old, new):
        row = page.locator(f"#certificate-{cert_id}")
        expect(row.locator("td.key-in-vault")).to_have_text("yes")
        expect(row.get_by_role("link", name="Download key")).to_have_attribute(
            "href", f"/admin/certificates/{cert_id}/download"
        )
    keyless = page.locator(f"#certificate-{world.keyless_cert_id}")
    expect(keyless.locator("td.key-in-vault")).to_have_text("no")
    expect(keyless.get_by_role("link", name="Download key")).to_have_count(0)
    expect(page.locator("#download-all")).to_have_text("Download all keys")
    expect(page.locator("#secret-id-state")).to_have_text("Not set")
    console_server.shot(page, "person")

    page.get_by_label("New Secret ID").fill(SECRET)
    page.get_by_role("button", name="Set the Secret ID").click()
    expect(page.locator("#notice")).to_have_text("The Secret ID was set.")
    expect(page.locator("#secret-id-state")).to_have_text("Set")
    expect(page.get_by_role("button", name="Remove the Secret ID")).to_be_visible()
    assert SECRET not in page.content()
    stored = _secret_id_hash(console_server, alice.person_id)
    assert stored is not None and stored.startswith("$argon2")
    console_server.shot(page, "person-secret-id-set")

    page.locator(f"#open-{new}").click()
    expect(page).to_have_url(re.compile(rf"/admin/certificates/{new}$"))
    expect(page.locator("#key-in-vault")).to_have_text("yes")
    expect(page.locator("#status")).to_have_text("issued")
    expect(page.locator("#download-key")).to_have_attribute(
        "href", f"/admin/certificates/{new}/download"
    )
    expect(page.locator("#person").get_by_role("link")).to_have_text(alice.email)
    console_server.shot(page, "certificate")

    nav = page.get_by_role("navigation", name="Console")
    nav.get_by_role("link", name="Client Certificates").click()
    expect(page.locator("#certificates tbody tr")).to_have_count(4)  # alice's three, sam's one
    page.get_by_label("Key in vault").select_option("no")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"key=no"))
    rows = page.locator("#certificates tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_id(f"certificate-{world.keyless_cert_id}")
    expect(rows.first.locator("td.key-in-vault")).to_have_text("no")
    expect(page.get_by_label("Key in vault")).to_have_value("no")
    console_server.shot(page, "certificates-keyless")
