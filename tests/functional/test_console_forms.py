"""The Enrollment forms page: create, edit, disable and enable forms, each shown with its public
URL; the access code is write-only; settings_manage is needed."""

from __future__ import annotations

import json

from sqlalchemy import select

from certvault.db.models import EnrollmentForm
from certvault.services.pki import enrollment_forms
from tests.conftest import TEST_OPERATOR
from tests.functional.console_fixtures import console_fixture  # noqa: F401
from tests.functional.helpers import events

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def _form(ports, slug: str, account_id: int | None = None) -> EnrollmentForm | None:
    with ports.db.read() as s:
        query = select(EnrollmentForm).where(EnrollmentForm.slug == slug)
        if account_id is not None:
            query = query.where(EnrollmentForm.account_id == account_id)
        return s.scalars(query).first()


def _create(client, **fields):
    data = {"slug": "staff", "name": "Staff", "profile": "smime", "organization": "", **fields}
    return client.post("/admin/forms", data, csrf_from="/admin/forms")


def test_create_a_form_and_see_its_url(console):
    boss = console.sign_in("boss")
    answer = _create(
        boss,
        domains="acme.example\nSales.Acme.Example",
        key_type=["ec256", "rsa3072"],
        access_code="open-sesame-42",
        allow_own_passphrase="on",
    )
    made = _form(console.ports, "staff")
    assert made is not None
    assert answer.status_code == 200 and answer.url.path == f"/admin/forms/{made.id}"
    assert "The enrollment form was created." in answer.text
    assert made.profile == "smime" and made.organization_id == console.world.orgs["default"]
    assert made.domains == "acme.example sales.acme.example"
    assert made.key_types == "rsa3072 ec256" and made.allow_own_passphrase and made.enabled
    assert made.access_code_hash is not None and "open-sesame-42" not in answer.text
    url = enrollment_forms.form_url(console.ports.settings, "acme", "staff")
    listing = boss.get("/admin/forms").text
    assert f'<code id="form-url-{made.id}">{url}</code>' in listing
    assert f'data-copy="form-url-{made.id}"' in listing
    [created] = events(console.ports, "form.create")
    assert created.actor == "admin:boss" and "open-sesame-42" not in created.details
    assert console.client().get("/enroll/acme/staff").status_code == 200


def test_the_page_says_when_the_account_has_no_issuing_ca(console):
    boss = console.sign_in("boss")
    page = boss.get("/admin/forms").text
    assert 'id="no-ca"' in page and "certvault ca init --account acme" in page


def test_edit_keeps_the_access_code_unless_a_new_one_is_typed(console):
    boss = console.sign_in("boss")
    _create(boss, access_code="open-sesame-42")
    made = _form(console.ports, "staff")
    page = boss.get(f"/admin/forms/{made.id}")
    assert page.status_code == 200 and "open-sesame-42" not in page.text
    assert 'id="form-access-code">set (never shown)' in page.text

    answer = boss.post(
        f"/admin/forms/{made.id}",
        {
            "name": "Staff certificates",
            "profile": "client-auth",
            "organization": str(console.world.orgs["sales"]),
            "domains": "acme.example",
            "access_code": "",
        },
    )
    assert answer.status_code == 200 and "The enrollment form was saved." in answer.text
    edited = _form(console.ports, "staff")
    assert edited.access_code_hash == made.access_code_hash  # kept
    assert edited.name == "Staff certificates" and edited.profile == "client-auth"
    assert edited.organization_id == console.world.orgs["sales"]

    boss.post(
        f"/admin/forms/{made.id}",
        {"name": "Staff", "profile": "smime", "access_code": "another-code-99"},
    )
    changed = _form(console.ports, "staff")
    assert changed.access_code_hash not in (None, made.access_code_hash)
    boss.post(
        f"/admin/forms/{made.id}", {"name": "Staff", "profile": "smime", "remove_access_code": "on"}
    )
    assert _form(console.ports, "staff").access_code_hash is None
    assert len(events(console.ports, "form.update")) == 3


def test_disable_then_the_public_page_says_so_and_enable_again(console):
    boss = console.sign_in("boss")
    _create(boss)
    made = _form(console.ports, "staff")
    answer = boss.post(f"/admin/forms/{made.id}/disable")
    assert answer.status_code == 200 and "The enrollment form was disabled" in answer.text
    assert 'id="form-enabled">no' in answer.text
    assert not _form(console.ports, "staff").enabled
    public = console.client().get("/enroll/acme/staff")
    assert public.status_code == 404 and "disabled" in public.text
    assert json.loads(events(console.ports, "form.update")[-1].details)["enabled"] is False

    assert boss.post(f"/admin/forms/{made.id}/enable").status_code == 200
    assert _form(console.ports, "staff").enabled
    assert console.client().get("/enroll/acme/staff").status_code == 200


def test_bad_values_are_refused_and_shown_again_escaped(console):
    boss = console.sign_in("boss")
    for fields, message in (
        ({"slug": "Bad Slug!"}, "A form slug has 1 to 63 characters"),
        ({"profile": "fancy<b>"}, "Unknown certificate profile"),
        ({"domains": "not a domain"}, "A domain looks like example.org"),
        ({"domains": SCRIPT}, "A domain looks like example.org"),
        ({"access_code": "short"}, "An access code needs 8 to 200 characters."),
        ({"profile": "client-auth", "dual_key": "on"}, "A dual-key form issues"),
        ({"key_type": ["rsa1024"]}, ""),
    ):
        answer = _create(boss, name=SCRIPT, **fields)
        assert 400 <= answer.status_code < 500, fields
        assert message in answer.text and 'id="error"' in answer.text, fields
        assert ESCAPED in answer.text and SCRIPT not in answer.text, fields
        assert _form(console.ports, "staff") is None, fields
    shown = _create(boss, slug=SCRIPT).text
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in shown
    shown = _create(boss, domains=SCRIPT).text
    assert f">{ESCAPED}</textarea>" in shown
    assert "fancy&lt;b&gt;" in _create(boss, profile="fancy<b>").text

    _create(boss)
    made = _form(console.ports, "staff")
    answer = boss.post(f"/admin/forms/{made.id}", {"name": SCRIPT, "domains": "bad domain"})
    assert answer.status_code == 422 and ESCAPED in answer.text and SCRIPT not in answer.text
    assert _form(console.ports, "staff").name == "Staff"


def test_script_in_the_name_is_escaped_everywhere(console):
    boss = console.sign_in("boss")
    _create(boss, name=SCRIPT)
    made = _form(console.ports, "staff")
    assert made.name == SCRIPT
    for page in (boss.get("/admin/forms").text, boss.get(f"/admin/forms/{made.id}").text):
        assert ESCAPED in page and SCRIPT not in page


def test_admin_without_settings_manage_gets_403(console):
    enrollment_forms.create_form(
        console.ports, TEST_OPERATOR, "acme", slug="existing", profile="smime", access_code=None
    )
    made = _form(console.ports, "existing")
    clerk = console.sign_in("clerk")
    assert clerk.get("/admin/forms").status_code == 403
    assert clerk.get(f"/admin/forms/{made.id}").status_code == 403
    answer = clerk.post("/admin/forms", {"slug": "clerks", "profile": "smime"})
    assert answer.status_code == 403 and _form(console.ports, "clerks") is None
    answer = clerk.post(f"/admin/forms/{made.id}/disable")
    assert answer.status_code == 403 and _form(console.ports, "existing").enabled
    answer = clerk.post(f"/admin/forms/{made.id}", {"name": "Changed", "profile": "smime"})
    assert answer.status_code == 403 and _form(console.ports, "existing").name == ""


def test_foreign_session_sees_only_its_account_and_gets_404_on_acme_ids(console):
    boss = console.sign_in("boss")
    _create(boss)
    made = _form(console.ports, "staff")
    foreign = console.sign_in("foreignboss")
    assert foreign.get(f"/admin/forms/{made.id}").status_code == 404
    assert (
        foreign.post(f"/admin/forms/{made.id}", {"name": "x", "profile": "smime"}).status_code
        == 404
    )
    assert foreign.post(f"/admin/forms/{made.id}/disable").status_code == 404
    assert foreign.get("/admin/forms/99999999999").status_code == 404
    assert foreign.post("/admin/forms/99999999999/disable").status_code == 404
    assert _form(console.ports, "staff").enabled and _form(console.ports, "staff").name == "Staff"
    listing = foreign.get("/admin/forms").text
    assert "/enroll/acme/staff" not in listing and 'id="no-forms"' in listing
    # The same slug in the other account is another form.
    assert _create(foreign).status_code == 200
    assert "/enroll/other/staff" in foreign.get("/admin/forms").text


def test_organization_admin_sees_and_uses_only_his_organizations(console):
    boss = console.sign_in("boss")
    _create(boss)  # in the default organization
    made = _form(console.ports, "staff")
    sales = console.sign_in("salesboss")
    assert sales.get(f"/admin/forms/{made.id}").status_code == 404
    assert "/enroll/acme/staff" not in sales.get("/admin/forms").text
    answer = _create(sales, slug="sales-staff", organization=str(console.world.orgs["default"]))
    assert answer.status_code == 404 and _form(console.ports, "sales-staff") is None
    answer = _create(sales, slug="sales-staff", organization=str(console.world.orgs["sales"]))
    assert answer.status_code == 200
    assert _form(console.ports, "sales-staff").organization_id == console.world.orgs["sales"]


def test_forged_or_missing_csrf_changes_nothing(console):
    boss = console.sign_in("boss")
    _create(boss)
    made = _form(console.ports, "staff")
    for data in ({"csrf_token": "forged-token-forged-token"}, {}):
        fields = {**data, "slug": "forged", "profile": "smime"}
        assert boss.client.post("/admin/forms", data=fields).status_code == 403
        assert boss.client.post(f"/admin/forms/{made.id}/disable", data=data).status_code == 403
        edit = {**data, "name": "Forged", "profile": "smime"}
        assert boss.client.post(f"/admin/forms/{made.id}", data=edit).status_code == 403
    assert _form(console.ports, "forged") is None
    form = _form(console.ports, "staff")
    assert form.enabled and form.name == "Staff"


def test_the_console_sets_and_shows_whether_a_form_asks_for_the_name(console):
    boss = console.sign_in("boss")
    blank = boss.get("/admin/forms").text
    assert 'value="off" id="f-ask-name-off" checked' in blank
    answer = _create(boss, ask_name="required")
    made = _form(console.ports, "staff")
    assert made is not None and made.ask_name == "required"
    assert 'value="required" id="f-ask-name-required" checked' in answer.text
    listing = boss.get("/admin/forms").text
    assert f'<td id="form-ask-name-{made.id}">required</td>' in listing

    boss.post(f"/admin/forms/{made.id}", {"name": "Staff", "profile": "smime", "ask_name": "off"})
    assert _form(console.ports, "staff").ask_name == "off"
    assert f'<td id="form-ask-name-{made.id}">no</td>' in boss.get("/admin/forms").text
    refused = boss.post(
        f"/admin/forms/{made.id}", {"name": "Staff", "profile": "smime", "ask_name": SCRIPT}
    )
    assert refused.status_code == 422 and "ask_name is one of: off, optional, required" in (
        refused.text
    )
    assert SCRIPT not in refused.text
    assert _form(console.ports, "staff").ask_name == "off"
    details = [json.loads(e.details)["ask_name"] for e in events(console.ports, "form.update")]
    assert details == ["off"]
