"""The console's Client Certificates page: the list with its filters and paging, a certificate's
details, and who sees the Download key link."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select

from certvault.db.models import Certificate
from certvault.services.pki import crl
from certvault.services.vault import imports
from certvault.web.admin import certificates as certificates_page
from tests.conftest import TEST_OPERATOR
from tests.factories import make_cert, make_p12, new_key
from tests.functional.console_fixtures import console_fixture  # noqa: F401

MISSING = 999_999


def _listed(text: str) -> list[int]:
    return [int(part.split('"')[0]) for part in text.split('<tr id="certificate-')[1:]]


def _error(text: str) -> str:
    return text.split('id="error"><p>')[1].split("</p>")[0]


def test_list_shows_the_accounts_certificates_with_their_columns(console):
    world = console.world
    old, new = world.alice.cert_ids
    page = console.sign_in("boss").get("/admin/certificates")
    assert page.status_code == 200
    assert 'aria-current="page">Client Certificates<' in page.text
    assert sorted(_listed(page.text)) == sorted(
        [old, new, world.keyless_cert_id, *world.sam.cert_ids]
    )
    row = page.text.split(f'<tr id="certificate-{new}">')[1].split("</tr>")[0]
    cert = world.alice.certs[1]
    assert f'href="/admin/certificates/{new}"' in row
    # The subject column shows the common name (these certificates have no other).
    assert (
        f">{world.alice.email}</a>" in row and f'<td class="email">{world.alice.email}</td>' in row
    )
    serial = format(cert.serial_number, "x")
    assert f'<code class="token" title="{serial}">' in row and f">{serial}</span>" in row
    assert 'data-copy="serial-' in row
    assert 'class="status">issued<' in row and 'class="key-in-vault">yes<' in row
    assert cert.not_valid_after_utc.strftime("%Y-%m-%d") in row and "<td>Acme Corp</td>" in row
    sam_row = page.text.split(f'<tr id="certificate-{world.sam.cert_ids[0]}">')[1].split("</tr>")[0]
    assert "<td>Sales</td>" in sam_row


def test_subjects_show_as_names_people_read(console):
    world = console.world
    key = new_key("ec256")
    cert = make_cert(key, world.alice.email, issuer=world.ca, cn="Alice Able", subject_email=True)
    [entry] = imports.import_p12(
        console.ports,
        TEST_OPERATOR,
        "acme",
        make_p12(key, cert, "pw-1234-secret"),
        "pw-1234-secret",
        person_id=world.alice.person_id,
    )
    assert entry.ok
    cert_id = entry.client_cert_id
    admin = console.sign_in("boss")
    row = admin.get("/admin/certificates").text.split(f'<tr id="certificate-{cert_id}">')[1]
    row = row.split("</tr>")[0]
    assert f'href="/admin/certificates/{cert_id}">Alice Able</a>' in row
    assert "1.2.840.113549.1.9.1" not in row
    detail = admin.get(f"/admin/certificates/{cert_id}").text
    shown = detail.split('id="subject">')[1].split("</td>")[0]
    assert shown == f"CN=Alice Able,emailAddress={world.alice.email}"
    person = admin.get(f"/admin/persons/{world.alice.person_id}").text
    assert "<td>Alice Able</td>" in person and "1.2.840.113549.1.9.1" not in person


def test_organization_admin_sees_only_their_organizations(console):
    world = console.world
    page = console.sign_in("salesboss").get("/admin/certificates").text
    assert _listed(page) == world.sam.cert_ids
    options = page.split('id="organization"')[1].split("</select>")[0]
    assert f'value="{world.orgs["sales"]}"' in options
    assert f'value="{world.orgs["default"]}"' not in options


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"key": "no"}, ["keyless"]),
        ({"key": "yes"}, ["old", "new", "sam"]),
        ({"status": "expired"}, ["old"]),
        ({"status": "issued", "key": "yes"}, ["new", "sam"]),
        ({"status": "revoked"}, []),
        ({"organization": "sales"}, ["sam"]),
        ({"organization": "default", "key": "any", "status": "any"}, ["old", "new", "keyless"]),
        ({"person": "alice"}, ["old", "new", "keyless"]),
    ],
)
def test_filters(console, query, expected):
    world = console.world
    ids = {
        "old": world.alice.cert_ids[0],
        "new": world.alice.cert_ids[1],
        "keyless": world.keyless_cert_id,
        "sam": world.sam.cert_ids[0],
    }
    if "organization" in query:
        query = query | {"organization": str(world.orgs[query["organization"]])}
    if "person" in query:
        query = query | {"person": str(world.alice.person_id)}
    page = console.sign_in("boss").get("/admin/certificates", params=query)
    assert page.status_code == 200, page.text
    assert sorted(_listed(page.text)) == sorted(ids[name] for name in expected)
    if not expected:
        assert 'id="no-certificates"' in page.text
    for name, value in query.items():  # the form shows the filter it applied
        if name != "person":
            assert f'value="{value}" selected' in page.text


def test_revoked_certificates_are_listed_and_shown_as_revoked(console):
    old = console.world.alice.cert_ids[0]
    crl.revoke_certificate(console.ports, TEST_OPERATOR, "acme", old, "keyCompromise")
    boss = console.sign_in("boss")
    assert _listed(boss.get("/admin/certificates?status=revoked").text) == [old]
    detail = boss.get(f"/admin/certificates/{old}").text
    status = detail.split('id="status">')[1].split("</td>")[0]
    assert status.startswith("revoked, revoked ") and "(keyCompromise)" in status


def test_keyset_paging_keeps_the_filters(console, monkeypatch):
    monkeypatch.setattr(certificates_page, "PAGE_SIZE", 2)
    world = console.world
    boss = console.sign_in("boss")
    seen: list[int] = []
    path = f"/admin/certificates?organization={world.orgs['default']}"
    while path:
        page = boss.get(path)
        assert page.status_code == 200
        seen += _listed(page.text)
        if 'id="next-page"' not in page.text:
            break
        href = page.text.split('id="next-page"')[0].rsplit('href="', 1)[1].split('"')[0]
        assert f"organization={world.orgs['default']}" in href and "cursor=" in href
        path = href.replace("&amp;", "&")
    assert seen == sorted([*world.alice.cert_ids, world.keyless_cert_id])
    assert 'id="first-page"' in page.text


def _href(page: str, link: str) -> str | None:
    if f'id="{link}"' not in page:
        return None
    return page.split(f'id="{link}"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")


@pytest.mark.parametrize("sort", ["expires", "-expires", "subject", "-subject", "-added"])
def test_sorted_pages_walk_forward_and_back_alike(console, monkeypatch, sort):
    monkeypatch.setattr(certificates_page, "PAGE_SIZE", 1)
    boss = console.sign_in("boss")
    first = boss.get("/admin/certificates", params={"sort": sort})
    assert first.status_code == 200
    total = int(first.text.split('id="certificate-count">')[1].split(" ")[0])
    pages = [_listed(first.text)]
    page = first.text
    assert 'id="previous-page"' not in page
    while (href := _href(page, "next-page")) is not None:
        assert f"sort={sort}" in href
        page = boss.get(href).text
        pages.append(_listed(page))
    seen = [c for p in pages for c in p]
    assert len(seen) == total == len(set(seen)) == len(pages) and total >= 4
    with console.ports.db.read() as session:
        rows = {c.id: c for c in session.scalars(select(Certificate))}
    key = {"expires": "not_after", "subject": "subject", "added": "id"}[sort.lstrip("-")]
    values = [(getattr(rows[c], key), c) for c in seen]
    assert values == sorted(values, reverse=sort.startswith("-"))
    # Previous from the last page gives back every page the way Next showed it.
    back = [pages[-1]]
    while (href := _href(page, "previous-page")) is not None:
        page = boss.get(href).text
        back.append(_listed(page))
    assert back[::-1] == pages


def test_column_headers_sort_and_reverse(console):
    boss = console.sign_in("boss")
    page = boss.get("/admin/certificates").text
    assert _href(page, "sort-expires") == "/admin/certificates?sort=expires"
    page = boss.get("/admin/certificates?sort=expires").text
    assert 'aria-sort="ascending"' in page
    assert _href(page, "sort-expires") == "/admin/certificates?sort=-expires"


def test_search_by_email_name_or_serial(console):
    world = console.world
    boss = console.sign_in("boss")

    def found(q: str) -> set[int]:
        page = boss.get("/admin/certificates", params={"q": q})
        assert page.status_code == 200
        return set(_listed(page.text))

    alice = {*world.alice.cert_ids, world.keyless_cert_id}
    assert found(world.alice.email.upper()) == alice
    assert found(world.alice.email.split("@")[0][1:]) >= alice
    serial = format(world.alice.certs[1].serial_number, "x")
    colons = ":".join(serial[i : i + 2] for i in range(0, len(serial), 2)).upper()
    assert world.alice.cert_ids[1] in found(colons[:11])
    assert found("%") == set() and found("_") == set()
    assert found("no-such-certificate") == set()
    page = boss.get("/admin/certificates", params={"q": "no-such-certificate"}).text
    assert 'id="certificate-count">0 certificates' in page and "this search" in page


@pytest.mark.parametrize(
    "query",
    [
        {"sort": "bogus"},
        {"sort": "expires", "cursor": "djI6c3ViamVjdDphOjE6c3g"},  # made for the subject sort
        {"sort": "expires", "cursor": "djI6ZXhwaXJlczphOjE6c3g"},  # a text where a time belongs
        {"sort": "expires", "cursor": "djI6ZXhwaXJlczphOjE6dHg"},  # a time that is not one
        {"sort": "expires", "cursor": "djI6ZXhwaXJlczphOjE6dDIwMjYtMDEtMDFUMDA6MDA6MDA"},  # naive
        {"sort": "added", "cursor": "djI6YWRkZWQ6YToxOmk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ"},  # huge
        {"sort": "added", "cursor": "djI6YWRkZWQ6YTo5OTk5OTk5OTk5OTppMQ"},  # a huge id
        {"q": "x" * 201},
    ],
)
def test_junk_sorts_and_searches_get_a_clear_400_page(console, query):
    page = console.sign_in("boss").get("/admin/certificates", params=query)
    assert page.status_code == 400, page.text
    assert _error(page.text)


@pytest.mark.parametrize(
    "query",
    [
        {"status": "bogus"},
        {"status": ""},
        {"key": "maybe"},
        {"organization": "abc"},
        {"organization": "other"},  # another account's organization
        {"organization": "99999999999999999999"},
        {"organization": "١"},
        {"person": "x"},
        {"person": "-1"},
        {"cursor": "junk"},
        {"cursor": "djE6OTk5OTk5OTk5OTk5"},
        {"status": "x" * 201},
    ],
)
def test_junk_filters_and_cursors_get_a_clear_400_page(console, query):
    if query.get("organization") == "other":
        query = {"organization": str(console.world.orgs["other"])}
    page = console.sign_in("boss").get("/admin/certificates", params=query)
    assert page.status_code == 400, page.text
    assert "text/html" in page.headers["content-type"] and _error(page.text)


def test_an_organization_admin_may_not_filter_on_an_organization_they_cannot_see(console):
    query = {"organization": str(console.world.orgs["default"])}
    page = console.sign_in("salesboss").get("/admin/certificates", params=query)
    assert page.status_code == 400
    assert _error(page.text) == "Choose an organization from the list."


# --- a certificate ------------------------------------------------------------------------------


def test_details_of_a_certificate_with_its_key_in_the_vault(console):
    world = console.world
    new = world.alice.cert_ids[1]
    cert = world.alice.certs[1]
    boss = console.sign_in("boss")
    page = boss.get(f"/admin/certificates/{new}")
    assert page.status_code == 200
    text = page.text

    def cell(name: str) -> str:
        return text.split(f'id="{name}">')[1].split("<")[0]

    assert cell("subject") == f"CN={world.alice.email}"
    assert cell("issuer") == "CN=Fixture CA"
    assert cell("serial") == format(cert.serial_number, "x")
    assert cell("emails") == world.alice.email
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest().upper()
    assert cell("fingerprint").replace(":", "") == digest
    assert cell("status") == "issued" and cell("key-in-vault") == "yes"
    assert cell("source") == "import" and cell("profile") == ""
    assert cell("organization") == "Acme Corp"
    assert cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC") in text
    assert cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC") in text
    assert f'<a href="/admin/persons/{world.alice.person_id}">{world.alice.email}</a>' in text
    assert f'href="/admin/certificates/{new}/download" id="download-key"' in text

    clerk = console.sign_in("clerk").get(f"/admin/certificates/{new}").text
    assert 'id="subject"' in clerk and 'id="download-key"' not in clerk and "/download" not in clerk
    assert "Allow download keys from Key Vault" in clerk.split('id="no-download">')[1]


def test_a_certificate_without_its_key_offers_no_download(console):
    page = console.sign_in("boss").get(f"/admin/certificates/{console.world.keyless_cert_id}")
    assert page.status_code == 200
    assert 'id="key-in-vault">no<' in page.text and 'id="download-key"' not in page.text


def test_organization_admin_downloads_in_their_organization(console):
    sam = console.world.sam.cert_ids[0]
    page = console.sign_in("salesboss").get(f"/admin/certificates/{sam}").text
    assert f'href="/admin/certificates/{sam}/download" id="download-key"' in page


@pytest.mark.parametrize(
    ("login", "whose"),
    [("salesboss", "alice"), ("foreignboss", "alice"), ("boss", "olga")],
)
def test_hidden_certificates_answer_like_missing_ones(console, login, whose):
    hidden = getattr(console.world, whose).cert_ids[0]
    admin = console.sign_in(login)
    seen = admin.get(f"/admin/certificates/{hidden}")
    missing = admin.get(f"/admin/certificates/{MISSING}")
    assert seen.status_code == missing.status_code == 404
    assert _error(seen.text) == _error(missing.text) == "Certificate not found."


@pytest.mark.parametrize("junk", ["abc", "0", "1e3", "99999999999999999999", "١"])
def test_junk_certificate_ids_answer_404(console, junk):
    page = console.sign_in("boss").get(f"/admin/certificates/{junk}")
    assert page.status_code == 404 and _error(page.text) == "Certificate not found."
