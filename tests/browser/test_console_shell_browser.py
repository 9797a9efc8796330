"""The console's shell in Chromium: sign in as seeded by console_server, see the navigation."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.console_server import console_server_fixture  # noqa: F401


def test_signed_in_landing_shows_the_sections(page: Page, console_server) -> None:
    console_server.sign_in(page, "boss")
    nav = page.get_by_role("navigation", name="Console")
    for label in ("Persons", "Client Certificates", "Key Vault", "About", "Audit", "Admins"):
        expect(nav.get_by_role("link", name=label, exact=True)).to_be_visible()
    console_server.shot(page, "landing")
