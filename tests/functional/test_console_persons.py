"""The console's Persons page: the list and its search and paging, a person's certificates and
keys, the Secret ID, editing a person (an email change of a person with keys needs the download
privilege and tells the old address)."""

from __future__ import annotations

import html
import json

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from certvault.db.models import AuditEvent, Certificate, Person
from certvault.services.directory import persons
from certvault.web.admin import persons as persons_page
from tests.conftest import TEST_OPERATOR
from tests.functional.console_fixtures import console_fixture  # noqa: F401
from tests.functional.helpers import events, mails

SECRET = "correct horse battery"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
MISSING = 999_999


def _person(console, person_id: int) -> Person:
    with console.ports.db.read() as s:
        return s.get_one(Person, person_id)


def _new_mails(console, before: int) -> list:
    return mails(console.ports)[before:]


def _error(text: str) -> str:
    return text.split('id="error"><p>')[1].split("</p>")[0]


def _details(event: AuditEvent) -> dict:
    return json.loads(event.details)


def _set_names(console, person_id: int, **names: str) -> None:
    persons.update_person(
        console.ports, TEST_OPERATOR, "acme", person_id, persons.PersonFields(**names)
    )


def _edit(console, **changes: str) -> dict[str, str]:
    """The edit form of alice as the page fills it, with ``changes``."""
    alice = _person(console, console.world.alice.person_id)
    fields = {n: getattr(alice, n) for n in persons_page.EDITABLE}
    return fields | changes


# --- the list -----------------------------------------------------------------------------------


def test_list_shows_visible_persons_with_their_certificates_and_keys(console):
    world = console.world
    page = console.sign_in("boss").get("/admin/persons")
    assert page.status_code == 200
    assert 'aria-current="page">Persons<' in page.text
    for holder in (world.alice, world.sam):
        assert f'href="/admin/persons/{holder.person_id}"' in page.text
    assert world.olga.email not in page.text  # another account
    alice_row = page.text.split(f'id="person-{world.alice.person_id}"')[1].split("</tr>")[0]
    cells = [c.split("</td>")[0].strip() for c in alice_row.split("<td>")[1:]]
    # email, organization, certificates (two generations and one without a key), keys in vault
    assert cells[1:] == [world.alice.email, "Acme Corp", "3", "2"]

    sales = console.sign_in("salesboss").get("/admin/persons").text
    assert f'href="/admin/persons/{world.sam.person_id}"' in sales
    assert world.alice.email not in sales


def test_search_matches_names_and_email_any_case_and_takes_wildcards_literally(console):
    world = console.world
    _set_names(console, world.sam.person_id, first_name="Samuel", last_name="Sample")
    boss = console.sign_in("boss")

    def found(q: str) -> list[int]:
        page = boss.get("/admin/persons", params={"q": q})
        assert page.status_code == 200, page.text
        return [
            p for p in (world.alice.person_id, world.sam.person_id) if f"person-{p}" in page.text
        ]

    assert found("alice") == [world.alice.person_id]
    assert found("ACME.EXAMPLE") == [world.alice.person_id, world.sam.person_id]
    assert found("samuel s") == [world.sam.person_id]  # first and last name together
    assert found("sample") == [world.sam.person_id]
    assert found("%") == [] and found("_") == []
    page = boss.get("/admin/persons", params={"q": "nobody"})
    assert 'id="no-persons"' in page.text and 'value="nobody"' in page.text


def test_keyset_paging_follows_the_next_link(console, monkeypatch):
    monkeypatch.setattr(persons_page, "PAGE_SIZE", 1)
    for i in range(2):
        persons.create_person(
            console.ports, TEST_OPERATOR, "acme", persons.PersonFields(email=f"p{i}@acme.example")
        )
    boss = console.sign_in("boss")
    seen, path = [], "/admin/persons?q=acme.example"
    while path:
        page = boss.get(html.unescape(path))
        assert page.status_code == 200
        rows = page.text.count('<tr id="person-')
        assert rows == 1
        seen.append(page.text.split('<tr id="person-')[1].split('"')[0])
        nxt = page.text.split('id="next-page"')[0].rsplit('href="', 1)[1].split('"')[0]
        path = nxt if 'id="next-page"' in page.text else ""
    assert len(seen) == 4 and len(set(seen)) == 4  # alice, sam, p0, p1: each once
    assert 'id="first-page"' in page.text


def _link(text: str, link: str) -> str | None:
    if f'id="{link}"' not in text:
        return None
    return html.unescape(text.split(f'id="{link}"')[0].rsplit('href="', 1)[1].split('"')[0])


def test_sorted_by_email_with_previous_and_a_total(console, monkeypatch):
    monkeypatch.setattr(persons_page, "PAGE_SIZE", 1)
    for name in ("zed", "amy", "kim"):
        persons.create_person(
            console.ports, TEST_OPERATOR, "acme", persons.PersonFields(email=f"{name}@acme.example")
        )
    boss = console.sign_in("boss")
    text = boss.get("/admin/persons?q=acme.example").text
    assert 'id="person-count">5 persons' in text
    path = _link(text, "sort-email")
    assert path == "/admin/persons?q=acme.example&sort=email"
    pages = []
    while path:
        text = boss.get(path).text
        pages.append(text.split('<tr id="person-')[1].split("</tr>")[0])
        path = _link(text, "next-page")
    emails = [row.split("<td>")[2].split("</td>")[0] for row in pages]
    assert emails == sorted(emails) and len(emails) == 5
    back = []
    while path := _link(text, "previous-page"):
        text = boss.get(path).text
        back.append(text.split('<tr id="person-')[1].split("</tr>")[0])
    assert back[::-1] == pages[:-1]
    assert _link(text, "sort-email") == "/admin/persons?q=acme.example&sort=-email"


@pytest.mark.parametrize(
    "query",
    [
        {"sort": "shoe-size"},
        {"sort": "email", "cursor": "djI6YWRkZWQ6YToxOmkx"},  # made for another sort
        {"cursor": "junk"},
        {"cursor": "djE6LTE"},  # v1:-1
        {"cursor": "djI6MQ"},  # v2:1
        {"cursor": "djE6OTk5OTk5OTk5OTk5"},  # beyond any id
        {"q": "x" * 201},
        {"cursor": "x" * 5000},
    ],
)
def test_junk_paging_and_search_values_get_a_clear_400_page(console, query):
    page = console.sign_in("boss").get("/admin/persons", params=query)
    assert page.status_code == 400, page.text
    assert 'id="error"' in page.text and "text/html" in page.headers["content-type"]


def test_names_with_markup_are_shown_escaped(console):
    world = console.world
    _set_names(console, world.alice.person_id, first_name=SCRIPT, last_name=IMG, common_name="")
    boss = console.sign_in("boss")
    for path in ("/admin/persons", f"/admin/persons/{world.alice.person_id}"):
        text = boss.get(path).text
        assert SCRIPT not in text and IMG not in text
        assert html.escape(SCRIPT, quote=False) in text
        assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in text


# --- a person -----------------------------------------------------------------------------------


def test_person_page_lists_every_certificate_with_download_links_for_the_privileged(console):
    world = console.world
    old, new = world.alice.cert_ids
    keyless = world.keyless_cert_id
    path = f"/admin/persons/{world.alice.person_id}"
    page = console.sign_in("boss").get(path)
    assert page.status_code == 200
    text = page.text
    assert world.alice.email in text and 'id="secret-id-state">Not set' in text

    def row(cert_id: int) -> str:
        return text.split(f'<tr id="certificate-{cert_id}">')[1].split("</tr>")[0]

    assert 'class="status">expired<' in row(old)
    assert 'class="status">issued<' in row(new)
    assert 'class="key-in-vault">yes<' in row(old) and 'class="key-in-vault">yes<' in row(new)
    assert 'class="key-in-vault">no<' in row(keyless)
    for cert_id in (old, new, keyless):
        assert f'href="/admin/certificates/{cert_id}"' in row(cert_id)
    for cert_id in (old, new):
        assert f'href="/admin/certificates/{cert_id}/download" id="download-{cert_id}"' in text
    assert f'id="download-{keyless}"' not in text
    assert f'href="/admin/persons/{world.alice.person_id}/download" id="download-all"' in text

    clerk = console.sign_in("clerk").get(path).text
    assert f'<tr id="certificate-{new}">' in clerk
    assert "/download" not in clerk and 'id="download-all"' not in clerk
    # The empty Actions cell says why.
    reason = clerk.split(f'id="no-download-{new}">')[1].split("</span>")[0]
    assert "Allow download keys from Key Vault" in reason
    assert "No key in the vault" in clerk.split(f'id="no-download-{keyless}">')[1]
    assert 'id="edit-person"' in clerk  # clerk manages persons


def test_a_person_without_keys_offers_no_download_all(console):
    bob = persons.create_person(
        console.ports, TEST_OPERATOR, "acme", persons.PersonFields(email="bob@acme.example")
    )
    text = console.sign_in("boss").get(f"/admin/persons/{bob.id}").text
    assert 'id="no-certificates"' in text and 'id="download-all"' not in text


@pytest.mark.parametrize(
    ("login", "whose"),
    [("salesboss", "alice"), ("foreignboss", "alice"), ("boss", "olga")],
)
def test_hidden_persons_answer_like_missing_ones(console, login, whose):
    hidden = getattr(console.world, whose).person_id
    admin = console.sign_in(login)
    seen = admin.get(f"/admin/persons/{hidden}")
    missing = admin.get(f"/admin/persons/{MISSING}")
    assert seen.status_code == missing.status_code == 404
    assert _error(seen.text) == _error(missing.text) == "Person not found."
    assert getattr(console.world, whose).email not in seen.text


@pytest.mark.parametrize("junk", ["abc", "0", "-1", "1.5", "99999999999999999999", "١"])
def test_junk_person_ids_answer_404(console, junk):
    page = console.sign_in("boss").get(f"/admin/persons/{junk}")
    assert page.status_code == 404 and 'id="error"' in page.text


# --- the Secret ID ------------------------------------------------------------------------------


def test_set_reset_and_remove_the_secret_id(console):
    alice_id = console.world.alice.person_id
    path = f"/admin/persons/{alice_id}"
    boss = console.sign_in("boss")
    answer = boss.post(f"{path}/secret-id", {"secret_id": SECRET}, csrf_from=path)
    assert answer.status_code == 200 and answer.url.path == path
    assert 'id="notice"' in answer.text and 'id="secret-id-state">Set' in answer.text
    assert SECRET not in answer.text
    stored = _person(console, alice_id).secret_id_hash
    assert stored and SECRET not in stored and PasswordHasher().verify(stored, SECRET)

    boss.post(f"{path}/secret-id", {"secret_id": "another secret"}, csrf_from=path)
    again = _person(console, alice_id).secret_id_hash
    assert again and again != stored and PasswordHasher().verify(again, "another secret")

    answer = boss.post(f"{path}/secret-id", {"action": "clear", "secret_id": ""}, csrf_from=path)
    assert answer.status_code == 200 and 'id="secret-id-state">Not set' in answer.text
    assert _person(console, alice_id).secret_id_hash is None

    set_events = events(console.ports, persons.SECRET_ID_SET)
    assert [_details(e) for e in set_events] == [{"had_secret_id": False}, {"had_secret_id": True}]
    [cleared] = events(console.ports, persons.SECRET_ID_CLEAR)
    assert _details(cleared) == {"had_secret_id": True}
    assert {e.actor.split(" ")[0] for e in [*set_events, cleared]} == {"admin:boss"}
    for e in events(console.ports):
        assert SECRET not in e.details and "another secret" not in e.details


SECRET_ID_RULE = "A Secret ID has 4 to 128 printable characters."
# Control characters are refused with every other field of the form, before the Secret ID's rule.
CONTROL_RULE = "holds a control character"


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", SECRET_ID_RULE),
        ("abc", SECRET_ID_RULE),
        ("x" * 129, SECRET_ID_RULE),
        ("tab\tinside", CONTROL_RULE),
        ("new\nline", CONTROL_RULE),
        ("nul\x00byte", CONTROL_RULE),
        ("bell\x07", CONTROL_RULE),
    ],
)
def test_bad_secret_ids_are_refused_and_change_nothing(console, value, rule):
    alice_id = console.world.alice.person_id
    path = f"/admin/persons/{alice_id}"
    answer = console.sign_in("boss").post(f"{path}/secret-id", {"secret_id": value}, csrf_from=path)
    assert answer.status_code == 422, answer.text
    assert rule in answer.text
    assert len(value) < 8 or value not in answer.text  # never echoed
    assert _person(console, alice_id).secret_id_hash is None
    assert events(console.ports, persons.SECRET_ID_SET) == []


def test_secret_id_of_a_hidden_person_answers_404_and_changes_nothing(console):
    alice_id = console.world.alice.person_id
    for login in ("salesboss", "foreignboss"):
        answer = console.sign_in(login).post(
            f"/admin/persons/{alice_id}/secret-id", {"secret_id": SECRET}
        )
        assert answer.status_code == 404
    assert _person(console, alice_id).secret_id_hash is None


@pytest.mark.parametrize("token", ["forged", None])
def test_forged_or_missing_csrf_changes_nothing(console, token):
    alice_id = console.world.alice.person_id
    boss = console.sign_in("boss")
    before = _person(console, alice_id)
    mail_before = len(mails(console.ports))
    posts = [
        (f"/admin/persons/{alice_id}/secret-id", {"secret_id": SECRET}),
        (f"/admin/persons/{alice_id}/secret-id", {"action": "clear"}),
        (f"/admin/persons/{alice_id}", _edit(console, email="new@acme.example", phone="123")),
    ]
    for path, data in posts:
        fields = data | ({"csrf_token": token} if token else {})
        answer = boss.client.post(path, data=fields)
        assert answer.status_code == 403, (path, answer.text)
    after = _person(console, alice_id)
    assert (after.email, after.phone, after.secret_id_hash) == (
        before.email,
        before.phone,
        before.secret_id_hash,
    )
    assert len(mails(console.ports)) == mail_before
    assert events(console.ports, persons.UPDATE) == []


# --- editing ------------------------------------------------------------------------------------


def test_clerk_edits_names_but_may_not_move_the_keys_of_alice_to_another_address(console):
    world = console.world
    path = f"/admin/persons/{world.alice.person_id}"
    mailed = len(mails(console.ports))
    clerk = console.sign_in("clerk")
    answer = clerk.post(path, _edit(console, first_name="Alice", phone="+1 555"), csrf_from=path)
    assert answer.status_code == 200 and answer.url.path == path
    alice = _person(console, world.alice.person_id)
    assert (alice.first_name, alice.phone) == ("Alice", "+1 555")

    answer = clerk.post(path, _edit(console, email="mallory@evil.example"), csrf_from=path)
    assert answer.status_code == 403
    assert "key_vault_download" in answer.text
    assert 'value="mallory@evil.example"' in answer.text  # the form keeps what was typed
    assert _person(console, world.alice.person_id).email == world.alice.email
    assert _new_mails(console, mailed) == []
    refused = [e for e in events(console.ports, persons.UPDATE) if e.outcome == "refused"]
    assert [(_details(e)["reason"], e.target_id, e.actor.split(" ")[0]) for e in refused] == [
        ("forbidden", str(world.alice.person_id), "admin:clerk")
    ]


def test_boss_changes_the_email_and_the_old_address_is_told(console):
    world = console.world
    path = f"/admin/persons/{world.alice.person_id}"
    mailed = len(mails(console.ports))
    answer = console.sign_in("boss").post(
        path, _edit(console, email="Alice.New@acme.example"), csrf_from=path
    )
    assert answer.status_code == 200 and 'id="notice"' in answer.text
    assert _person(console, world.alice.person_id).email == "alice.new@acme.example"
    [mail] = _new_mails(console, mailed)
    assert mail.to_addr == world.alice.email
    assert mail.subject == "Your email address in certvault was changed"
    [done] = [e for e in events(console.ports, persons.UPDATE) if e.outcome == "success"]
    assert _details(done) == {"email": {"old": world.alice.email, "new": "alice.new@acme.example"}}


def test_an_email_change_needs_the_download_privilege_where_the_keys_are(console):
    """salesboss may download keys in Sales only; sam is in Sales, his escrowed certificate in
    the default organization: his address stays."""
    world = console.world
    sam = world.sam.person_id
    with console.ports.db.transaction() as s:
        default = s.get_one(Person, world.alice.person_id).organization_id
        for cert in s.scalars(select(Certificate).where(Certificate.person_id == sam)):
            cert.organization_id = default
    path = f"/admin/persons/{sam}"
    mailed = len(mails(console.ports))
    fields = {n: getattr(_person(console, sam), n) for n in persons_page.EDITABLE}
    answer = console.sign_in("salesboss").post(
        path, fields | {"email": "mallory@evil.example"}, csrf_from=path
    )
    assert answer.status_code == 403, answer.text
    assert "key_vault_download" in answer.text
    assert _person(console, sam).email == world.sam.email
    assert _new_mails(console, mailed) == []
    refused = [e for e in events(console.ports, persons.UPDATE) if e.outcome == "refused"]
    assert [(_details(e)["reason"], e.target_id, e.actor.split(" ")[0]) for e in refused] == [
        ("forbidden", str(sam), "admin:salesboss")
    ]


def test_an_email_change_of_a_person_without_keys_sends_no_mail(console):
    bob = persons.create_person(
        console.ports, TEST_OPERATOR, "acme", persons.PersonFields(email="bob@acme.example")
    )
    path = f"/admin/persons/{bob.id}"
    mailed = len(mails(console.ports))
    data = dict.fromkeys(persons_page.EDITABLE, "") | {"email": "robert@acme.example"}
    answer = console.sign_in("clerk").post(path, data, csrf_from=path)
    assert answer.status_code == 200
    assert _person(console, bob.id).email == "robert@acme.example"
    assert _new_mails(console, mailed) == []


@pytest.mark.parametrize(
    ("changes", "status", "message"),
    [
        ({"email": "not an email"}, 422, "Not a valid email address."),
        ({"email": ""}, 422, "Not a valid email address."),
        ({"email": "sam@acme.example"}, 409, "A person with this email exists"),
        ({"last_name": "x" * 201}, 422, "last_name may have at most 200 characters."),
        ({"phone": "1" * 65}, 422, "phone may have at most 64 characters."),
        ({"first_name": "x" * 1025}, 422, "A field may have at most 1024 characters."),
    ],
)
def test_bad_edits_are_refused_and_change_nothing(console, changes, status, message):
    world = console.world
    path = f"/admin/persons/{world.alice.person_id}"
    before = _person(console, world.alice.person_id)
    mailed = len(mails(console.ports))
    answer = console.sign_in("boss").post(path, _edit(console, **changes), csrf_from=path)
    assert answer.status_code == status, answer.text
    assert message in html.unescape(answer.text)
    after = _person(console, world.alice.person_id)
    assert (after.email, after.first_name, after.last_name, after.phone) == (
        before.email,
        before.first_name,
        before.last_name,
        before.phone,
    )
    assert _new_mails(console, mailed) == []
    assert [e for e in events(console.ports, persons.UPDATE) if e.outcome == "success"] == []


def test_markup_typed_into_the_edit_form_is_stored_as_text_and_shown_escaped(console):
    world = console.world
    path = f"/admin/persons/{world.alice.person_id}"
    boss = console.sign_in("boss")
    answer = boss.post(path, _edit(console, common_name=SCRIPT, middle_name=IMG), csrf_from=path)
    assert answer.status_code == 200
    alice = _person(console, world.alice.person_id)
    assert (alice.common_name, alice.middle_name) == (SCRIPT, IMG)
    for text in (answer.text, boss.get("/admin/persons").text):
        assert SCRIPT not in text and IMG not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_hidden_person_cannot_be_edited(console):
    world = console.world
    for login, hidden in (
        ("salesboss", world.alice),
        ("foreignboss", world.alice),
        ("boss", world.olga),
    ):
        answer = console.sign_in(login).post(
            f"/admin/persons/{hidden.person_id}",
            {"email": "x@acme.example", "phone": "1"},
        )
        assert answer.status_code == 404, (login, answer.text)
    with console.ports.db.read() as s:
        assert sorted(s.scalars(select(Person.phone))) == ["", "", ""]
    refused = events(console.ports, persons.UPDATE)
    assert [(e.outcome, _details(e)["reason"]) for e in refused] == [("refused", "not_found")] * 3


# --- active ---------------------------------------------------------------------------------------

ACTIVE_ROW = (
    '<th scope="row">Active (may recover their own keys at the recovery form)</th>\n'
    '      <td id="person-active">{}</td>'
)


def _set_active_events(console) -> list[tuple[str, str, dict]]:
    return [
        (e.actor.split(" ")[0], e.outcome, _details(e))
        for e in events(console.ports, persons.SET_ACTIVE)
    ]


def test_clerk_marks_a_person_inactive_and_active_again(console):
    world = console.world
    path = f"/admin/persons/{world.alice.person_id}"
    clerk = console.sign_in("clerk")
    page = clerk.get(path).text
    assert ACTIVE_ROW.format("Yes") in page
    assert 'name="active_shown" value="yes"' in page
    assert 'id="active" name="active"\n           aria-describedby="active-hint" checked>' in page
    # An unchecked box is not posted: the form says it holds one.
    answer = clerk.post(path, _edit(console, active_shown="yes"), csrf_from=path)
    assert answer.status_code == 200 and 'id="notice"' in answer.text
    assert ACTIVE_ROW.format("No") in answer.text
    assert 'aria-describedby="active-hint">' in answer.text  # unchecked now
    assert _person(console, world.alice.person_id).active is False
    again = clerk.post(path, _edit(console, active_shown="yes", active="on"), csrf_from=path)
    assert ACTIVE_ROW.format("Yes") in again.text
    assert _person(console, world.alice.person_id).active is True
    # Saving without a change records nothing more.
    clerk.post(path, _edit(console, active_shown="yes", active="on"), csrf_from=path)
    assert _set_active_events(console) == [
        ("admin:clerk", "success", {"active": False}),
        ("admin:clerk", "success", {"active": True}),
    ]
    assert [e for e in events(console.ports, persons.UPDATE) if e.outcome == "success"] == []


def test_a_post_without_the_checkbox_leaves_active_as_it_is(console):
    world = console.world
    path = f"/admin/persons/{world.alice.person_id}"
    answer = console.sign_in("boss").post(path, _edit(console, phone="+1 555"), csrf_from=path)
    assert answer.status_code == 200
    alice = _person(console, world.alice.person_id)
    assert (alice.phone, alice.active) == ("+1 555", True)
    assert _set_active_events(console) == []


def test_a_refused_edit_changes_active_neither_and_keeps_the_box_as_posted(console):
    world = console.world
    path = f"/admin/persons/{world.alice.person_id}"
    answer = console.sign_in("boss").post(
        path, _edit(console, email="sam@acme.example", active_shown="yes"), csrf_from=path
    )
    assert answer.status_code == 409
    assert 'aria-describedby="active-hint">' in answer.text  # as posted: unchecked
    assert ACTIVE_ROW.format("Yes") in answer.text  # as stored
    assert _person(console, world.alice.person_id).active is True
    assert _set_active_events(console) == []


def test_a_hidden_person_cannot_be_made_inactive(console):
    world = console.world
    for login, hidden in (("salesboss", world.alice), ("foreignboss", world.alice)):
        answer = console.sign_in(login).post(
            f"/admin/persons/{hidden.person_id}",
            {"email": hidden.email, "active_shown": "yes"},
        )
        assert answer.status_code == 404, (login, answer.text)
    assert _person(console, world.alice.person_id).active is True
    assert _set_active_events(console) == []
