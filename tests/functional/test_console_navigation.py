"""The navigation shows each administrator the pages they can use, and only those."""

from __future__ import annotations

import re

import pytest

from tests.functional.console_fixtures import CONSOLE_ADMINS, console_fixture  # noqa: F401

NAV = re.compile(r'<a href="(/admin/[^"]*)" id="nav-([a-z-]+)"')


@pytest.mark.parametrize("login", sorted(CONSOLE_ADMINS))
def test_every_page_the_navigation_offers_opens(console, login):
    admin = console.sign_in(login)
    offered = NAV.findall(admin.get("/admin/").text)
    assert offered
    for path, key in offered:
        page = admin.get(path)
        assert page.status_code == 200, (login, key, page.status_code)
        assert 'aria-current="page"' in page.text.split(f'id="nav-{key}"')[1].split(">")[0]


def test_an_administrator_without_settings_rights_is_not_offered_the_forms(console):
    clerk = console.sign_in("clerk")
    keys = {key for _, key in NAV.findall(clerk.get("/admin/").text)}
    assert "forms" not in keys and "persons" in keys
    boss = {key for _, key in NAV.findall(console.sign_in("boss").get("/admin/").text)}
    assert "forms" in boss and "admins" in boss
