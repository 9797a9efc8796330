"""What every console page shares: the navigation, sign-in redirects, stale forms."""

from __future__ import annotations

import re

from tests.functional.console_fixtures import console_fixture  # noqa: F401

PAGES = ("persons", "certificates", "key-vault", "about", "audit", "admins", "forms")


def test_landing_page_links_every_section_and_allows_only_own_scripts(console):
    boss = console.sign_in("boss")
    home = boss.get("/admin/")
    assert home.status_code == 200
    for name in PAGES:
        assert f'href="/admin/{name}"' in home.text
    csp = home.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    script = boss.get("/admin/static/admin.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]


def test_organization_admin_sees_no_account_only_sections(console):
    sales = console.sign_in("salesboss")
    home = sales.get("/admin/").text
    assert 'href="/admin/admins"' not in home and 'href="/admin/audit"' not in home
    assert 'href="/admin/persons"' in home


def test_pages_without_a_session_send_to_sign_in(console):
    client = console.client()
    for name in PAGES:
        answer = client.get(f"/admin/{name}", follow_redirects=False)
        assert answer.status_code == 303, name
        assert answer.headers["location"] == "/admin/login"


def test_ids_that_are_not_numbers_and_unknown_paths_get_the_console_page(console):
    boss = console.sign_in("boss")
    for path in (
        "/admin/admins/abc",
        "/admin/forms/1e3",
        "/admin/certificates/%3Cscript%3E",
        "/admin/no-such-page",
    ):
        answer = boss.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("text/html")
        assert re.search(r'id="error"><p>(\w+ )?[Nn]ot found\.</p>', answer.text), path
        assert "<script>" not in answer.text
        assert "script-src 'self'" in answer.headers["content-security-policy"]
    # Signed out, the same page, without the console's navigation.
    answer = console.client().get("/admin/admins/abc")
    assert answer.status_code == 404 and 'aria-label="Console"' not in answer.text
    # The API keeps its JSON errors.
    api = console.client().get("/api/v1/persons/abc")
    assert api.headers["content-type"].startswith("application/json")
