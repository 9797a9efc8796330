"""The About page: the product version and the account's Key Vault UI URL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from certvault import __version__
from certvault.config import Settings
from certvault.services.kernel import tenancy
from certvault.services.kernel.ports import Ports
from certvault.services.pki import authorities, enrollment_forms
from certvault.services.vault import settings as kv_settings
from tests.conftest import make_settings
from tests.functional.console_fixtures import console_fixture  # noqa: F401

PUBLIC_URL = "https://vault.example.test/certvault/"
URL_RE = re.compile(r'<code id="kv-url">([^<]*)</code>')
COPY = '<button type="button" class="secondary" data-copy="kv-url" id="copy-kv-url">Copy</button>'


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return make_settings(tmp_path / "home", database_url, public_url=PUBLIC_URL)


def _kv_url(page: str) -> str:
    found = URL_RE.search(page)
    assert found is not None, "no Key Vault UI URL on the page"
    return found.group(1)


def test_about_shows_version_and_the_key_vault_url_under_the_public_url(console):
    boss = console.sign_in("boss")
    page = boss.get("/admin/about")
    assert page.status_code == 200
    assert f'<td id="version">{__version__}</td>' in page.text
    assert _kv_url(page.text) == "https://vault.example.test/certvault/kv/acme"
    assert COPY in page.text
    assert 'aria-current="page">About<' in page.text


def test_the_key_vault_url_links_the_recovery_form_and_says_what_it_is(console):
    page = console.sign_in("boss").get("/admin/about").text
    url = "https://vault.example.test/certvault/kv/acme"
    assert f'<a href="{url}" id="kv-url-link"><code id="kv-url">{url}</code></a>' in page
    about = re.search(r'id="kv-url-about">(.*?)</p>', page, re.S)
    assert about is not None and "The Private Key Recovery Form of this account" in about.group(1)
    # Behind the public URL's path the application serves /kv/acme: the form itself.
    form = console.client().get("/kv/acme")
    assert form.status_code == 200 and "Recover your private key" in form.text


@pytest.mark.parametrize("login", ["clerk", "salesboss"])
def test_every_administrator_of_the_account_sees_it(console, login):
    page = console.sign_in(login).get("/admin/about")
    assert page.status_code == 200
    assert _kv_url(page.text) == "https://vault.example.test/certvault/kv/acme"


def test_each_account_sees_its_own_url(console):
    page = console.sign_in("foreignboss").get("/admin/about")
    assert _kv_url(page.text) == "https://vault.example.test/certvault/kv/other"


def test_the_account_name_is_shown_escaped(console):
    hostile = '<script>alert("x")</script> & <b>Co</b>'
    with console.ports.db.transaction() as s:
        tenancy.get_account(s, "acme").name = hostile
    page = console.sign_in("boss").get("/admin/about").text
    assert hostile not in page and "<script>alert" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;Co&lt;/b&gt;" in page


def test_signed_out_visitors_are_sent_to_sign_in(console):
    answer = console.client().get("/admin/about", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/login"


def test_every_absolute_url_shares_the_public_url(console):
    ports: Ports = console.ports
    base = PUBLIC_URL.rstrip("/")
    assert kv_settings.key_vault_ui_url(ports.settings, "acme") == f"{base}/kv/acme"
    assert enrollment_forms.form_url(ports.settings, "acme", "staff") == (
        f"{base}/enroll/acme/staff"
    )
    assert authorities.crl_url(ports, "acme", "issuing") == f"{base}/crl/acme/issuing.crl"


def test_the_default_public_url_is_used_when_none_is_set(tmp_path: Path):
    plain = make_settings(tmp_path / "home", None)
    assert kv_settings.key_vault_ui_url(plain, "acme") == "http://127.0.0.1:8080/kv/acme"
