"""The Admins page: account administrators create administrators, set their role,
organizations and privileges, reset their TOTP and deactivate them, without escalation."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import select

from certvault.db.models import Admin, ApiToken, WebSession
from certvault.services.access import tokens
from tests.conftest import TEST_OPERATOR
from tests.functional.console_fixtures import (  # noqa: F401
    PASSWORD,
    SECRET_RE,
    ConsoleClient,
    code_for,
    console_fixture,
    csrf_of,
)
from tests.functional.helpers import events, mails

GENERATED = re.compile(r'id="generated-password">([^<]+)<')
KVD = "key_vault_download"
GRANT_SUBJECT = "An administrator may now download keys from Key Vault"


def _grant_mails(ports):
    return [m for m in mails(ports) if m.subject == GRANT_SUBJECT]


def _admin(ports, login: str, account_id: int | None = None) -> Admin | None:
    with ports.db.read() as s:
        query = select(Admin).where(Admin.login == login)
        if account_id is not None:
            query = query.where(Admin.account_id == account_id)
        admin = s.scalars(query).first()
        if admin is not None:
            admin.organizations  # noqa: B018 (loaded while the session is open)
        return admin


def _create(boss, **fields):
    data = {"role": "account", "password_choice": "generate", **fields}
    return boss.post("/admin/admins", data, csrf_from="/admin/admins")


def _confirmed(client: ConsoleClient) -> dict[str, str]:
    """The administrator's own password and a fresh code, in the forms' re-authentication
    fields (a grant of a privilege that releases keys asks for them)."""
    return {"current_password": PASSWORD, "current_code": client.next_code()}


def _refusal_reasons(ports, action: str) -> list[str]:
    return [
        json.loads(e.details)["reason"] for e in events(ports, action) if e.outcome == "refused"
    ]


def test_created_admin_gets_a_password_shown_once_and_signs_in_with_it(console):
    boss = console.sign_in("boss")
    answer = _create(
        boss,
        login="newbie",
        email="newbie@acme.example",
        role="organization",
        organization=[str(console.world.orgs["sales"])],
        privilege=["persons_manage"],
    )
    assert answer.status_code == 200, answer.text
    password = GENERATED.search(answer.text).group(1)
    assert len(password) >= 20
    made = _admin(console.ports, "newbie")
    assert made is not None and made.role == "organization" and made.privileges == "persons_manage"
    assert [o.id for o in made.organizations] == [console.world.orgs["sales"]]
    assert made.email == "newbie@acme.example" and made.totp_secret is None
    assert password not in boss.get(f"/admin/admins/{made.id}").text  # shown once
    assert password not in boss.get("/admin/admins").text
    [created] = events(console.ports, "admin.create")[-1:]
    assert created.actor == "admin:boss" and password not in created.details

    client, landed = console.password_step("acme", "newbie", password)
    assert landed.url.path == "/admin/totp"
    secret = SECRET_RE.search(landed.text).group(1)
    done = client.post(
        "/admin/totp",
        data={"csrf_token": csrf_of(landed.text), "code": code_for(secret, console.clock.now)},
    )
    assert done.url.path == "/admin/" and "Welcome, newbie" in done.text


def test_chosen_password_is_used_and_never_shown(console):
    boss = console.sign_in("boss")
    chosen = "chosen-password-4321"
    answer = _create(boss, login="chooser", password_choice="choose", password=chosen)
    assert answer.status_code == 200 and chosen not in answer.text
    assert 'id="generated-password"' not in answer.text
    _, landed = console.password_step("acme", "chooser", chosen)
    assert landed.url.path == "/admin/totp"

    short = _create(boss, login="shorty", password_choice="choose", password="short-pw")
    assert short.status_code == 422 and "at least 12 characters" in short.text
    assert "short-pw" not in short.text and _admin(console.ports, "shorty") is None


def test_granting_key_download_mails_every_active_account_admin(console):
    boss = console.sign_in("boss")
    answer = _create(boss, login="vaulter", role="account", privilege=[KVD], **_confirmed(boss))
    assert answer.status_code == 200
    sent = _grant_mails(console.ports)
    assert sorted(m.to_addr for m in sent) == ["boss@acme.example", "clerk@acme.example"]
    for m in sent:
        assert "admin:boss" in m.body and "vaulter" in m.body


def test_granting_key_download_by_edit_mails_only_active_account_admins(console):
    boss = console.sign_in("boss")
    clerk_id = console.admin_ids["clerk"]
    assert boss.post(f"/admin/admins/{clerk_id}/deactivate").status_code == 200
    reader = _admin(console.ports, "reader")
    answer = boss.post(
        f"/admin/admins/{reader.id}",
        {"role": "account", "privilege": [KVD, "persons_manage"], "email": "", **_confirmed(boss)},
    )
    assert answer.status_code == 200 and answer.url.path == f"/admin/admins/{reader.id}"
    assert "The administrator was changed." in answer.text
    assert [m.to_addr for m in _grant_mails(console.ports)] == ["boss@acme.example"]
    assert "reader" in _grant_mails(console.ports)[0].body
    assert _admin(console.ports, "reader").privileges == "key_vault_download persons_manage"
    [changed] = events(console.ports, "admin.update")
    details = json.loads(changed.details)
    assert details["old"] == {"privileges": []}
    assert details["new"] == {"privileges": [KVD, "persons_manage"]}

    # Saving again without a change grants nothing: no new mail, no new event.
    boss.post(
        f"/admin/admins/{reader.id}",
        {"role": "account", "privilege": [KVD, "persons_manage"], "email": ""},
    )
    assert len(_grant_mails(console.ports)) == 1 and len(events(console.ports, "admin.update")) == 1


@pytest.mark.parametrize("privilege", [KVD, "recovery_approve"])
def test_creating_an_admin_who_releases_keys_needs_reauthentication(console, privilege):
    """A session taken over (a sign-in is not a re-authentication) cannot mint an administrator
    who releases keys: that takes the password and a fresh code, as a download does."""
    boss = console.sign_in("boss")
    page = boss.get("/admin/admins").text
    assert 'id="reauthenticate"' in page and 'name="current_password"' in page
    chosen = {"password_choice": "choose", "password": "minted-password-0123"}
    refused = _create(boss, login="minter", privilege=[privilege], **chosen)
    assert refused.status_code == 403 and "Confirm your password" in refused.text
    assert 'name="current_code"' in refused.text and "minted-password-0123" not in refused.text
    wrong = _create(
        boss,
        login="minter",
        privilege=[privilege],
        current_password="not-the-password",
        current_code=boss.next_code(),
        **chosen,
    )
    assert wrong.status_code == 401
    assert _admin(console.ports, "minter") is None and _grant_mails(console.ports) == []
    assert _refusal_reasons(console.ports, "admin.create") == ["reauthentication_required"]
    assert _refusal_reasons(console.ports, "admin.reauthenticate") == ["bad_credentials"]
    # What releases no key needs no re-authentication.
    helper = _create(boss, login="helper", privilege=["persons_manage", "settings_manage"])
    assert helper.status_code == 200

    made = _create(boss, login="minter", privilege=[privilege], **chosen, **_confirmed(boss))
    assert made.status_code == 200 and _admin(console.ports, "minter").privileges == privilege
    # Confirmed a moment ago: not asked again for five minutes, then asked again.
    assert 'id="reauthenticate"' not in boss.get("/admin/admins").text
    assert _create(boss, login="second", privilege=[privilege]).status_code == 200
    console.clock.advance(minutes=6)
    assert _create(boss, login="third", privilege=[privilege]).status_code == 403
    assert _admin(console.ports, "third") is None


def test_widening_what_an_admin_may_release_needs_reauthentication(console):
    boss = console.sign_in("boss")
    reader = _admin(console.ports, "reader")
    sales_id = console.admin_ids["salesboss"]  # organization Sales, every privilege
    orgs = console.world.orgs
    everything = ["key_vault_download", "certificates_manage", "persons_manage"]
    everything += ["settings_manage", "recovery_approve"]
    widening = [
        (reader.id, {"role": "account", "privilege": [KVD]}),  # granted
        (sales_id, {"role": "account", "privilege": everything}),  # every organization
        (
            sales_id,
            {
                "role": "organization",
                "organization": [str(orgs["sales"]), str(orgs["default"])],
                "privilege": everything,
            },
        ),  # one more organization
    ]
    for admin_id, fields in widening:
        answer = boss.post(f"/admin/admins/{admin_id}", fields)
        assert answer.status_code == 403 and "Confirm your password" in answer.text, fields
        assert 'name="current_password"' in answer.text
    assert _admin(console.ports, "reader").privileges == ""
    sales = _admin(console.ports, "salesboss")
    assert sales.role == "organization" and [o.id for o in sales.organizations] == [orgs["sales"]]
    assert _refusal_reasons(console.ports, "admin.update") == ["reauthentication_required"] * 3
    assert _grant_mails(console.ports) == []
    # Narrowing needs none: a privilege taken away.
    narrowed = {"role": "organization", "organization": [str(orgs["sales"])]}
    answer = boss.post(f"/admin/admins/{sales_id}", {**narrowed, "privilege": ["persons_manage"]})
    assert answer.status_code == 200
    assert _admin(console.ports, "salesboss").privileges == "persons_manage"
    # With the password and a fresh code, the grant goes through.
    answer = boss.post(
        f"/admin/admins/{reader.id}", {"role": "account", "privilege": [KVD], **_confirmed(boss)}
    )
    assert answer.status_code == 200 and _admin(console.ports, "reader").privileges == KVD


def test_no_one_grants_a_privilege_they_do_not_hold(console):
    clerk = console.sign_in("clerk")
    answer = _create(clerk, login="sneaky", privilege=[KVD])
    assert answer.status_code == 403
    assert "You cannot grant a privilege you do not hold" in answer.text
    assert _admin(console.ports, "sneaky") is None and _grant_mails(console.ports) == []

    reader = _admin(console.ports, "reader")
    answer = clerk.post(f"/admin/admins/{reader.id}", {"role": "account", "privilege": [KVD]})
    assert answer.status_code == 403
    assert _admin(console.ports, "reader").privileges == "" and _grant_mails(console.ports) == []
    refusals = [e for e in events(console.ports) if e.outcome == "refused"]
    assert {e.action for e in refusals} == {"admin.create", "admin.update"}
    assert all(e.actor == "admin:clerk" for e in refusals)

    # What the clerk holds he may hand on.
    assert _create(clerk, login="helper", privilege=["persons_manage"]).status_code == 200
    # The page does not offer what he cannot grant.
    page = clerk.get("/admin/admins").text
    assert re.search(r'value="key_vault_download" id="priv-key_vault_download" disabled', page)


def test_no_one_changes_an_admin_holding_privileges_they_do_not_hold(console):
    """Taking a privilege away, or locking its holder out, is as strong as granting it."""
    clerk = console.sign_in("clerk")
    boss_id = console.admin_ids["boss"]
    before = _admin(console.ports, "boss")
    privileges, totp = before.privileges, before.totp_secret
    answer = clerk.post(
        f"/admin/admins/{boss_id}",
        {"role": "account", "privilege": ["persons_manage"], "email": "boss@acme.example"},
    )
    assert answer.status_code == 403
    assert "holds privileges you do not hold" in answer.text
    assert clerk.post(f"/admin/admins/{boss_id}/deactivate").status_code == 403
    assert clerk.post(f"/admin/admins/{boss_id}/reset-totp").status_code == 403
    after = _admin(console.ports, "boss")
    assert after.active and after.privileges == privileges and after.totp_secret == totp
    refused = [e.action for e in events(console.ports) if e.outcome == "refused"]
    assert sorted(refused) == ["admin.deactivate", "admin.totp_reset", "admin.update"]
    # An administrator whose privileges the clerk holds too is his to change.
    reader = _admin(console.ports, "reader")
    answer = clerk.post(
        f"/admin/admins/{reader.id}", {"role": "account", "privilege": ["persons_manage"]}
    )
    assert answer.status_code == 200
    assert _admin(console.ports, "reader").privileges == "persons_manage"


def test_organization_admin_cannot_open_or_use_the_admins_page(console):
    sales = console.sign_in("salesboss")
    page = sales.get("/admin/admins")
    assert page.status_code == 403 and "Only account administrators" in page.text
    assert sales.get(f"/admin/admins/{console.admin_ids['clerk']}").status_code == 403
    answer = sales.post(
        "/admin/admins",
        {"login": "salesclone", "role": "account", "privilege": ["persons_manage"]},
    )
    assert answer.status_code == 403 and _admin(console.ports, "salesclone") is None
    clerk_id = console.admin_ids["clerk"]
    assert sales.post(f"/admin/admins/{clerk_id}/deactivate").status_code == 403
    assert _admin(console.ports, "clerk").active


def test_deactivated_admin_loses_sessions_and_api_tokens(console):
    boss = console.sign_in("boss")
    clerk = console.sign_in("clerk")
    clerk_id = console.admin_ids["clerk"]
    token = tokens.create_token(console.ports, TEST_OPERATOR, "acme", "clerk").token
    api = console.client()
    bearer = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/v1/persons", headers=bearer).status_code == 200

    answer = boss.post(f"/admin/admins/{clerk_id}/deactivate")
    assert answer.status_code == 200 and "was deactivated" in answer.text
    assert 'id="admin-active">no (deactivated)' in answer.text
    assert not _admin(console.ports, "clerk").active
    again = clerk.get("/admin/", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/admin/login"
    assert api.get("/api/v1/persons", headers=bearer).status_code == 401
    with console.ports.db.read() as s:
        assert all(
            t.revoked_at is not None
            for t in s.scalars(select(ApiToken).where(ApiToken.admin_id == clerk_id))
        )
        assert all(
            w.revoked_at is not None
            for w in s.scalars(select(WebSession).where(WebSession.admin_id == clerk_id))
        )
    [done] = events(console.ports, "admin.deactivate")
    details = json.loads(done.details)
    assert details["old"] == {"active": True} and details["new"] == {"active": False}
    assert details["tokens_revoked"] == 1 and details["sessions_ended"] >= 1
    _, landed = console.password_step("acme", "clerk", "console-password-0123")
    assert landed.url.path == "/admin/login"


def test_boss_cannot_lock_himself_out(console):
    boss = console.sign_in("boss")
    boss_id = console.admin_ids["boss"]
    page = boss.get(f"/admin/admins/{boss_id}").text
    assert 'id="deactivate"' not in page  # not offered...
    answer = boss.post(f"/admin/admins/{boss_id}/deactivate")  # ...and refused
    assert answer.status_code == 409 and "You cannot deactivate yourself." in answer.text
    answer = boss.post(
        f"/admin/admins/{boss_id}",
        {
            "role": "organization",
            "organization": [str(console.world.orgs["sales"])],
            "privilege": [KVD],
        },
    )
    assert answer.status_code == 409
    assert "You cannot remove your own account administrator role." in answer.text
    me = _admin(console.ports, "boss")
    assert me.active and me.role == "account" and len(me.privileges.split()) == 5


def test_organization_admin_needs_an_organization(console):
    boss = console.sign_in("boss")
    answer = _create(boss, login="orphan", role="organization")
    assert answer.status_code == 422 and "at least one" in answer.text
    assert _admin(console.ports, "orphan") is None
    clerk_id = console.admin_ids["clerk"]
    answer = boss.post(f"/admin/admins/{clerk_id}", {"role": "organization"})
    assert answer.status_code == 422 and _admin(console.ports, "clerk").role == "account"
    answer = boss.post(
        f"/admin/admins/{clerk_id}",
        {
            "role": "organization",
            "organization": [str(console.world.orgs["sales"])],
            "privilege": ["persons_manage"],
            "email": "clerk@acme.example",
        },
    )
    assert answer.status_code == 200
    clerk = _admin(console.ports, "clerk")
    assert clerk.role == "organization"
    assert [o.id for o in clerk.organizations] == [console.world.orgs["sales"]]
    details = json.loads(events(console.ports, "admin.update")[-1].details)
    assert details["old"] == {
        "role": "account",
        "organizations": [],
        "privileges": ["certificates_manage", "persons_manage"],
    }
    assert details["new"] == {
        "role": "organization",
        "organizations": [console.world.orgs["sales"]],
        "privileges": ["persons_manage"],
    }


def test_reset_totp_ends_sessions_and_next_sign_in_sets_it_up_again(console):
    boss = console.sign_in("boss")
    clerk = console.sign_in("clerk")
    clerk_id = console.admin_ids["clerk"]
    assert _admin(console.ports, "clerk").totp_secret is not None
    answer = boss.post(f"/admin/admins/{clerk_id}/reset-totp")
    assert answer.status_code == 200 and "TOTP was reset" in answer.text
    assert 'id="admin-totp">no' in answer.text
    assert _admin(console.ports, "clerk").totp_secret is None
    again = clerk.get("/admin/", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/admin/login"
    _, landed = console.password_step("acme", "clerk", "console-password-0123")
    assert landed.url.path == "/admin/totp"
    [reset] = events(console.ports, "admin.totp_reset")
    assert reset.actor == "admin:boss" and reset.target_id == str(clerk_id)


def test_foreign_ids_answer_404_and_foreign_pages_show_their_own_account(console):
    boss = console.sign_in("boss")
    console.sign_in("clerk")  # TOTP set up: a reset would forget it
    foreign = console.sign_in("foreignboss")
    foreign_id = console.admin_ids["foreignboss"]
    clerk_id = console.admin_ids["clerk"]
    for client, target in ((boss, foreign_id), (foreign, clerk_id)):
        assert client.get(f"/admin/admins/{target}").status_code == 404
        assert client.post(f"/admin/admins/{target}", {"role": "account"}).status_code == 404
        assert client.post(f"/admin/admins/{target}/deactivate").status_code == 404
        assert client.post(f"/admin/admins/{target}/reset-totp").status_code == 404
    assert boss.get("/admin/admins/99999999999").status_code == 404
    assert _admin(console.ports, "foreignboss").active and _admin(console.ports, "clerk").active
    assert _admin(console.ports, "clerk").totp_secret is not None
    listing = foreign.get("/admin/admins").text
    assert "foreignboss" in listing and "clerk" not in listing and "salesboss" not in listing


def test_html_in_login_is_escaped_and_in_email_refused(console):
    boss = console.sign_in("boss")
    script = "<script>alert(1)</script>"
    answer = _create(boss, login=script)
    assert answer.status_code == 200
    for page in (answer.text, boss.get("/admin/admins").text):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and script not in page
    answer = _create(boss, login="mailer", email='"><script>alert(2)</script>@x.example')
    assert answer.status_code == 422 and "An email address looks like" in answer.text
    assert "<script>alert(2)" not in answer.text
    assert "&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;@x.example" in answer.text
    assert _admin(console.ports, "mailer") is None


def test_forged_or_missing_csrf_changes_nothing(console):
    boss = console.sign_in("boss")
    console.sign_in("clerk")  # TOTP set up: a reset would forget it
    clerk_id = console.admin_ids["clerk"]
    for data in ({"csrf_token": "forged-token-forged-token"}, {}):
        fields = {**data, "login": "forged", "role": "account", "privilege": KVD}
        assert boss.client.post("/admin/admins", data=fields).status_code == 403
        assert (
            boss.client.post(f"/admin/admins/{clerk_id}/deactivate", data=data).status_code == 403
        )
        assert (
            boss.client.post(f"/admin/admins/{clerk_id}/reset-totp", data=data).status_code == 403
        )
    assert _admin(console.ports, "forged") is None
    clerk = _admin(console.ports, "clerk")
    assert clerk.active and clerk.totp_secret is not None
    assert _grant_mails(console.ports) == []
