"""What every console page shares: the navigation, sign-in redirects, stale forms."""

from __future__ import annotations

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
