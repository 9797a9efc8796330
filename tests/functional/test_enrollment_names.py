"""Enrollment forms that ask for the person's name: the setting, the person's names and the
certificate's CN, through the services and the pages, on SQLite and PostgreSQL."""

# The fixtures of test_enrollment.py are imported and used as arguments by name.
# ruff: noqa: F811

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy import select

from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.db.models import Certificate, EnrollmentForm, Organization, Person
from certvault.errors import InvalidInput
from certvault.services.access import admins, tokens
from certvault.services.directory import persons
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.pki import enrollment, enrollment_forms
from certvault.web.app import create_app
from tests.functional import cli_env
from tests.functional.helpers import counts, events
from tests.functional.smtp_server import SmtpServer
from tests.functional.test_enrollment import (  # noqa: F401 - fixtures: settings, acme, web
    ACCESS,
    ALICE,
    acme,
    certificates,
    code_rows,
    csrf_of,
    do_enroll,
    last_code,
    send,
    settings,
    smtp_server,
    web,
)

NAMED = "/enroll/acme/named"


def _named_form(ports: Ports, operator: Actor, ask_name: str, slug: str = "named") -> None:
    enrollment_forms.create_form(
        ports,
        operator,
        "acme",
        slug=slug,
        profile="smime",
        access_code=None,
        domains=["example.org"],
        ask_name=ask_name,
    )


def _enroll_named(ports: Ports, smtp: SmtpServer, form: str = "named", **names: Any) -> Any:
    send(ports, form=form, access=None)
    return do_enroll(ports, last_code(smtp), form=form, **names)


def _common_names(cert: Certificate) -> list[str]:
    parsed = x509.load_der_x509_certificate(cert.der)
    return [str(a.value) for a in parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _emails_in_san(cert: Certificate) -> list[str]:
    parsed = x509.load_der_x509_certificate(cert.der)
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.RFC822Name)


def _person(ports: Ports, email: str = ALICE) -> Person | None:
    with ports.db.read() as s:
        return s.scalars(select(Person).where(Person.email == email)).first()


# --- the setting ----------------------------------------------------------------------------------


def test_forms_ask_for_no_name_unless_told(ports, operator, acme):
    assert enrollment_forms.get_form_public(ports, "acme", "staff").ask_name == "off"
    _named_form(ports, operator, "optional")
    assert enrollment_forms.get_form_public(ports, "acme", "named").ask_name == "optional"
    enrollment_forms.update_form(ports, operator, "acme", "named", ask_name="required")
    assert enrollment_forms.get_form_public(ports, "acme", "named").ask_name == "required"
    with pytest.raises(InvalidInput, match="off, optional, required"):
        enrollment_forms.update_form(ports, operator, "acme", "named", ask_name="sometimes")
    with pytest.raises(InvalidInput):
        _named_form(ports, operator, "always", slug="other")
    assert enrollment_forms.get_form_public(ports, "acme", "named").ask_name == "required"
    details = [json.loads(e.details) for e in events(ports, "form.update")]
    assert [d["ask_name"] for d in details] == ["required"]


# --- enrolling with a name ------------------------------------------------------------------------


@pytest.mark.parametrize("ask_name", ["optional", "required"])
def test_a_name_given_names_the_person_and_the_certificate(
    ports, operator, acme, smtp_server, ask_name
):
    _named_form(ports, operator, ask_name)
    result = _enroll_named(ports, smtp_server, first_name=" Alice ", last_name="Liddell")

    [cert] = certificates(ports)
    assert _common_names(cert) == ["Alice Liddell"]
    assert _emails_in_san(cert) == [ALICE] and cert.emails == ALICE
    assert cert.subject == "CN=Alice Liddell"
    [entry] = read_pkcs12(result.p12, result.passphrase_shown).entries
    assert entry.certificate.subject.rfc4514_string() == "CN=Alice Liddell"
    person = _person(ports)
    assert person is not None
    assert (person.first_name, person.last_name) == ("Alice", "Liddell")
    [enrolled] = events(ports, "certificate.enroll")
    assert json.loads(enrolled.details)["names_set"] == ["first_name", "last_name"]


def test_names_left_empty_on_an_optional_form_change_nothing(ports, operator, acme, smtp_server):
    _named_form(ports, operator, "optional")
    _enroll_named(ports, smtp_server, first_name="  ", last_name="")
    [cert] = certificates(ports)
    assert _common_names(cert) == [ALICE]  # as before: the address
    person = _person(ports)
    assert person is not None and (person.first_name, person.last_name) == ("", "")


def test_one_name_alone_on_an_optional_form_is_the_cn(ports, operator, acme, smtp_server):
    _named_form(ports, operator, "optional")
    _enroll_named(ports, smtp_server, last_name="Liddell")
    [cert] = certificates(ports)
    assert _common_names(cert) == ["Liddell"]
    person = _person(ports)
    assert person is not None and (person.first_name, person.last_name) == ("", "Liddell")


def test_a_form_without_names_is_as_before(ports, acme, smtp_server):
    send(ports)
    do_enroll(ports, last_code(smtp_server))
    [cert] = certificates(ports)
    assert _common_names(cert) == [ALICE]
    # A name sent to a form that does not ask for one is refused, not dropped silently.
    send(ports)
    code = last_code(smtp_server)
    with pytest.raises(enrollment.NameNotAsked):
        do_enroll(ports, code, first_name="Alice")
    assert len(certificates(ports)) == 1
    do_enroll(ports, code)  # the code was not spent
    assert len(certificates(ports)) == 2


def test_names_on_the_record_are_kept_and_empty_ones_filled(ports, operator, acme, smtp_server):
    with ports.db.transaction() as s:
        org = s.scalars(select(Organization)).first()
        assert org is not None
        s.add(
            Person(
                account_id=org.account_id,
                organization_id=org.id,
                email=ALICE,
                first_name="Alicia",
            )
        )
    _named_form(ports, operator, "required")
    _enroll_named(ports, smtp_server, first_name="Alice", last_name="Liddell")
    person = _person(ports)
    assert person is not None
    assert (person.first_name, person.last_name) == ("Alicia", "Liddell")
    [cert] = certificates(ports)
    assert _common_names(cert) == ["Alicia Liddell"]  # the record's name wins
    [enrolled] = events(ports, "certificate.enroll")
    assert json.loads(enrolled.details)["names_set"] == ["last_name"]


def test_a_record_name_no_cn_can_carry_gives_way_to_the_typed_one(
    ports, operator, acme, smtp_server
):
    with ports.db.transaction() as s:
        org = s.scalars(select(Organization)).first()
        assert org is not None
        s.add(
            Person(
                account_id=org.account_id,
                organization_id=org.id,
                email=ALICE,
                first_name="Al\u202eice",  # put there by an administrator: kept, not used
                last_name="L" * 100,
            )
        )
    _named_form(ports, operator, "required")
    _enroll_named(ports, smtp_server, first_name="Alice", last_name="Liddell")
    [cert] = certificates(ports)
    assert _common_names(cert) == ["Alice Liddell"]
    person = _person(ports)
    assert person is not None
    assert (person.first_name, person.last_name) == ("Al\u202eice", "L" * 100)


def test_dual_key_certificates_both_carry_the_name(ports, operator, acme, smtp_server):
    enrollment_forms.create_form(
        ports,
        operator,
        "acme",
        slug="dual",
        profile="smime",
        access_code=None,
        dual_key=True,
        ask_name="required",
    )
    _enroll_named(ports, smtp_server, form="dual", first_name="Alice", last_name="Liddell")
    certs = certificates(ports)
    assert len(certs) == 2
    assert [_common_names(c) for c in certs] == [["Alice Liddell"], ["Alice Liddell"]]


# --- refusals: nothing is created, the code stays usable -----------------------------------------


@pytest.mark.parametrize(
    ("names", "error"),
    [
        ({}, enrollment.NameRequired),
        ({"first_name": "Alice"}, enrollment.NameRequired),
        ({"first_name": " ", "last_name": "Liddell"}, enrollment.NameRequired),
        ({"first_name": "Al\x00ice", "last_name": "Liddell"}, persons.NameInvalid),
        ({"first_name": "Alice\nBob", "last_name": "Liddell"}, persons.NameInvalid),
        ({"first_name": "Alice", "last_name": "L" * 10_000}, persons.NameInvalid),
        ({"first_name": "\u202eecilA", "last_name": "Liddell"}, persons.NameInvalid),
        ({"first_name": "Ali\u200bce", "last_name": "Liddell"}, persons.NameInvalid),
        ({"first_name": "A" * 40, "last_name": "L" * 40}, persons.NameInvalid),
    ],
)
def test_bad_names_create_nothing(ports, operator, acme, smtp_server, names, error):
    _named_form(ports, operator, "required")
    send(ports, form="named", access=None)
    code = last_code(smtp_server)
    before = counts(ports)
    with pytest.raises(error) as raised:
        do_enroll(ports, code, form="named", **names)
    assert raised.value.code in ("name_required", "name_invalid")
    assert counts(ports) == before and certificates(ports) == []
    assert _person(ports) is None
    [row] = code_rows(ports)
    assert row.used_at is None and row.attempts == 0
    refusal = events(ports, "certificate.enroll")[-1]
    assert refusal.outcome == "refused" and raised.value.code in refusal.details
    # Nothing the person typed is kept in the refusal.
    for value in names.values():
        if value.strip():
            assert value not in refusal.details
    do_enroll(ports, code, form="named", first_name="Alice", last_name="Liddell")
    assert len(certificates(ports)) == 1


def test_markup_in_a_name_is_only_text(ports, operator, acme, smtp_server):
    _named_form(ports, operator, "required")
    _enroll_named(ports, smtp_server, first_name="<b>Alice</b>", last_name="O'Liddell & Co")
    [cert] = certificates(ports)
    assert _common_names(cert) == ["<b>Alice</b> O'Liddell & Co"]


# --- the pages ------------------------------------------------------------------------------------


def test_the_page_asks_for_the_name_as_the_form_says(ports, operator, web, smtp_server):
    _named_form(ports, operator, "required")
    _named_form(ports, operator, "optional", slug="maybe")

    def step_two(page: str) -> str:
        token = csrf_of(web.get(page).text)
        answer = web.post(f"{page}/code", data={"csrf_token": token, "email": ALICE})
        assert answer.status_code == 200, answer.text
        return answer.text

    required = step_two(NAMED)
    assert re.search(r'<input id="first_name" name="first_name"[^>]*required', required)
    assert re.search(r'<input id="last_name" name="last_name"[^>]*required', required)
    optional = step_two("/enroll/acme/maybe")
    assert 'id="first_name"' in optional and "(optional)" in optional
    assert not re.search(r'<input id="first_name"[^>]*required', optional)
    token = csrf_of(web.get("/enroll/acme/staff").text)
    plain = web.post(
        "/enroll/acme/staff/code",
        data={"csrf_token": token, "email": ALICE, "access_code": ACCESS},
    )
    assert plain.status_code == 200 and 'id="code-sent"' in plain.text
    assert 'id="first_name"' not in plain.text


def test_pages_enroll_with_a_name(ports, operator, web, smtp_server):
    _named_form(ports, operator, "required")
    token = csrf_of(web.get(NAMED).text)
    sent = web.post(f"{NAMED}/code", data={"csrf_token": token, "email": ALICE})
    code = last_code(smtp_server)
    fields = {
        "csrf_token": csrf_of(sent.text),
        "email": ALICE,
        "code": code,
        "key_type": "ec256",
        "passphrase_choice": "generate",
    }
    missing = web.post(f"{NAMED}/enroll", data=fields | {"first_name": "Alice"})
    assert missing.status_code == 422 and "first and last name" in missing.text
    assert 'value="Alice"' in missing.text  # what was typed comes back
    hostile = web.post(
        f"{NAMED}/enroll",
        data=fields | {"first_name": '"><img src=x>\u202e', "last_name": "Liddell"},
    )
    assert hostile.status_code == 422 and "invisible formatting" in hostile.text
    assert "<img src=x>" not in hostile.text and "&lt;img src=x&gt;" in hostile.text
    assert certificates(ports) == [] and _person(ports) is None
    done = web.post(f"{NAMED}/enroll", data=fields | {"first_name": "Alice", "last_name": "Doe"})
    assert done.status_code == 200, done.text
    assert 'id="passphrase"' in done.text
    [cert] = certificates(ports)
    assert _common_names(cert) == ["Alice Doe"]


# --- the API for forms ----------------------------------------------------------------------------


def test_api_forms_carry_the_setting(ports, operator, acme):
    admins.create_admin(ports, operator, "acme", "settings", privileges=["settings_manage"])
    token = tokens.create_token(ports, operator, "acme", "settings").token
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(ports)) as client:
        listed = client.get("/api/v1/forms", headers=auth).json()
        assert [f["ask_name"] for f in listed] == ["off"]
        made = client.post(
            "/api/v1/forms",
            headers=auth,
            json={"slug": "api", "profile": "smime", "ask_name": "required"},
        )
        assert made.status_code == 201, made.text
        assert made.json()["ask_name"] == "required"
        form_id = made.json()["id"]
        changed = client.patch(
            f"/api/v1/forms/{form_id}", headers=auth, json={"ask_name": "optional"}
        )
        assert changed.status_code == 200 and changed.json()["ask_name"] == "optional"
        kept = client.patch(f"/api/v1/forms/{form_id}", headers=auth, json={"enabled": True})
        assert kept.json()["ask_name"] == "optional"
        for bad in ("sometimes", None, True):
            refused = client.patch(f"/api/v1/forms/{form_id}", headers=auth, json={"ask_name": bad})
            assert refused.status_code == 422, refused.text
    with ports.db.read() as s:
        row = s.scalars(select(EnrollmentForm).where(EnrollmentForm.slug == "api")).one()
        assert row.ask_name == "optional"


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def cli(backend, tmp_path):
    yield from cli_env.cli_for(backend, tmp_path)


def test_cli_creates_a_form_that_asks_for_the_name(cli):
    cli.bootstrap()
    base = ("form", "create", "--account", "acme", "--profile", "smime")
    made = cli.run(*base, "--slug", "named", "--ask-name", "required")
    assert made.returncode == 0, made.stderr
    plain = cli.run(*base, "--slug", "plain")
    assert plain.returncode == 0, plain.stderr
    bad = cli.run(*base, "--slug", "bad", "--ask-name", "sometimes")
    assert bad.returncode == 1 and "invalid_input" in cli_env.text(bad)
    rows = cli.sql("SELECT slug, ask_name FROM enrollment_forms ORDER BY id")
    assert [tuple(r) for r in rows] == [("named", "required"), ("plain", "off")]
