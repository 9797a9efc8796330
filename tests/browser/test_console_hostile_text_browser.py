"""Markup typed into the console is shown as text and never runs: a person's names set through
the edit form are shown on the Persons list, the person's page and the Audit page (where the
change is recorded with its old and new values). A script that ran would open a dialog or call
the page's hook; markup that slipped through would be blocked and reported by the
Content-Security-Policy (console_server fails the test on any report)."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.console_server import console_server_fixture  # noqa: F401

HOSTILE = {
    "First name": '<img src=x onerror="window.__xss=1">',
    "Last name": "<script>window.__xss=2</script>",
    "Common name": '"><svg onload="window.__xss=3">',
}


def test_markup_in_free_text_is_shown_and_never_runs(page: Page, console_server) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    alice = console_server.world.world.alice
    console_server.sign_in(page, "boss")
    page.goto(f"{console_server.url}/admin/persons/{alice.person_id}")
    for label, text in HOSTILE.items():
        page.get_by_label(label, exact=True).fill(text)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#notice")).to_be_visible()
    # The fields come back holding exactly what was typed.
    for label, text in HOSTILE.items():
        expect(page.get_by_label(label, exact=True)).to_have_value(text)
    expect(page.get_by_role("heading", level=1)).to_contain_text("<")
    console_server.shot(page, "hostile-person")

    page.goto(f"{console_server.url}/admin/persons?q=alice")
    expect(page.locator("#persons")).to_contain_text(HOSTILE["Common name"])
    console_server.shot(page, "hostile-persons-list")

    page.goto(f"{console_server.url}/admin/audit?action=person.update")
    events = page.locator("main table")
    # The details are JSON: the quotes come back escaped, the markup as text.
    for fragment in ("<img src=x onerror=", "<script>window.__xss=2</script>", "<svg onload="):
        expect(events).to_contain_text(fragment)
    console_server.shot(page, "hostile-audit")

    assert page.evaluate("window.__xss === undefined")
    assert page.locator("main img, main svg").count() == 0
    assert dialogs == []
