"""Enrollment forms with server-side key generation: the services, the pages (TestClient) and a
real SMTP server in the test (aiosmtpd), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import html
import json
import re
import subprocess
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from cryptography import x509
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from certvault.crypto import keys as keylib
from certvault.crypto.passphrase import PassphraseRejected
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.db.models import (
    Certificate,
    EnrollmentCode,
    EnrollmentForm,
    EscrowedKey,
    Person,
)
from certvault.errors import Forbidden, InvalidInput, KeyTypeNotAllowed
from certvault.services.access import admins, tokens
from certvault.services.audit import log as audit
from certvault.services.directory import accounts
from certvault.services.kernel import seals, tenancy
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.notify import MailUnavailable
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import RateLimited
from certvault.services.pki import ca, enrollment, enrollment_forms
from certvault.web.app import create_app
from certvault.web.security import CONTENT_SECURITY_POLICY
from tests.conftest import make_settings
from tests.functional import cli_env
from tests.functional import smtp_server as smtp
from tests.functional.helpers import counts, events, mails
from tests.functional.smtp_server import SmtpServer

smtp_server = smtp.smtp_server  # the fixture

ALICE = "alice@example.org"
BOB = "bob@example.org"
ACCESS = "correct horse staple"
OWN = "my own long passphrase"


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None, smtp_server: SmtpServer):
    return make_settings(
        tmp_path / "home",
        database_url,
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        public_url="https://certs.example.org/",
    )


@pytest.fixture
def acme(ports: Ports, operator: Actor, account: str) -> str:
    """Account "acme" (Key Vault on) with its built-in CA and the form "staff"."""
    ca.init_ca(ports, operator, account)
    enrollment_forms.create_form(
        ports,
        operator,
        account,
        slug="staff",
        profile="smime",
        access_code=ACCESS,
        domains=["example.org"],
        allow_own_passphrase=True,
        name="Staff certificates",
    )
    return account


def last_code(smtp: SmtpServer, to: str = ALICE) -> str:
    mail = [m for m in smtp.messages if to in m.rcpt_tos][-1]
    found = re.search(r"\b(\d{8})\b", mail.body)
    assert found, "no code in the mail"
    return found.group(1)


def send(ports: Ports, email: str = ALICE, form: str = "staff", access: str | None = ACCESS):
    return enrollment.send_code(ports, "acme", form, email, access, "127.0.0.1")


def do_enroll(ports: Ports, code: str, *, email: str = ALICE, form: str = "staff", **kw: Any):
    kw.setdefault("key_type", "ec256")
    return enrollment.enroll(ports, "acme", form, email=email, code=code, ip="127.0.0.1", **kw)


def code_rows(ports: Ports) -> list[EnrollmentCode]:
    with ports.db.read() as s:
        return list(s.scalars(select(EnrollmentCode).order_by(EnrollmentCode.id)))


def escrowed_spkis(ports: Ports) -> set[bytes]:
    with ports.db.read() as s:
        return set(s.scalars(select(EscrowedKey.spki_sha256)))


def certificates(ports: Ports) -> list[Certificate]:
    with ports.db.read() as s:
        return list(s.scalars(select(Certificate).order_by(Certificate.id)))


# --- the whole flow through the services ---------------------------------------------------------


def test_enrollment_escrows_the_key_it_delivers(ports, acme, smtp_server):
    sent = send(ports)
    assert sent.email == ALICE
    code = last_code(smtp_server)
    result = do_enroll(ports, code, secret_id="my secret id")

    contents = read_pkcs12(result.p12, result.passphrase_shown)
    [entry] = contents.entries
    spki = keylib.spki_sha256(entry.key.public_key())
    assert escrowed_spkis(ports) == {spki}
    assert result.escrowed and len(result.certificate_ids) == 1
    [cert] = certificates(ports)
    assert cert.id == result.certificate_ids[0]
    assert cert.escrowed_key_id is not None and cert.profile == "smime" and cert.ca_id
    assert cert.source == "enroll" and cert.emails == ALICE
    assert contents.extra_certificates, "the chain travels with the key"
    # The code is spent, and the Secret ID kept only as an argon2 hash.
    [row] = code_rows(ports)
    assert row.used_at is not None and row.certificate_id == cert.id
    with ports.db.read() as s:
        person = s.scalars(select(Person).where(Person.email == ALICE)).one()
    assert person.secret_id_hash and "my secret id" not in person.secret_id_hash
    assert PasswordHasher().verify(person.secret_id_hash, "my secret id")
    # Audited, and the subscriber is told of the escrow through the outbox.
    assert [e.target_id for e in events(ports, "certificate.enroll")] == [str(cert.id)]
    assert len(events(ports, "key.deliver")) == 1 and len(events(ports, "key.archive")) == 1
    assert [m.to_addr for m in mails(ports)] == [ALICE]
    # The one-time code and the passphrase appear in no audit event.
    assert not [
        e for e in events(ports) if code in e.details or result.passphrase_shown in e.details
    ]


def test_dual_key_escrows_the_encryption_key_only(ports, operator, acme, smtp_server):
    enrollment_forms.create_form(
        ports, operator, "acme", slug="dual", profile="smime", access_code=None, dual_key=True
    )
    send(ports, form="dual", access=None)
    result = do_enroll(ports, last_code(smtp_server), form="dual", key_type="ec384")

    entries = read_pkcs12(result.p12, result.passphrase_shown).entries
    assert len(entries) == 2 and len(result.certificate_ids) == 2
    by_profile = {c.profile: c for c in certificates(ports)}
    assert set(by_profile) == {"smime-encryption", "smime-signing"}
    assert by_profile["smime-encryption"].escrowed_key_id is not None
    assert by_profile["smime-signing"].escrowed_key_id is None
    spki = {keylib.spki_sha256(e.key.public_key()): e for e in entries}
    assert escrowed_spkis(ports) == {by_profile["smime-encryption"].spki_sha256}
    signing = spki[by_profile["smime-signing"].spki_sha256].certificate
    usage = signing.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_agreement


def test_key_vault_off_delivers_the_key_once_and_keeps_none(ports, operator, acme, smtp_server):
    accounts.set_key_vault(ports, operator, "acme", False)
    assert not enrollment_forms.get_form_public(ports, "acme", "staff").keeps_key
    send(ports)
    result = do_enroll(ports, last_code(smtp_server))
    assert not result.escrowed and read_pkcs12(result.p12, result.passphrase_shown).entries
    [cert] = certificates(ports)
    assert cert.escrowed_key_id is None and cert.person_id is not None
    assert escrowed_spkis(ports) == set() and mails(ports) == []
    assert len(events(ports, "key.deliver")) == 1 and events(ports, "key.archive") == []


def test_own_passphrase_when_the_form_allows_it(ports, acme, smtp_server):
    send(ports)
    result = do_enroll(ports, last_code(smtp_server), passphrase=OWN, passphrase_confirm=OWN)
    assert result.passphrase_shown is None
    assert read_pkcs12(result.p12, OWN).entries


def test_kdf_count_follows_who_chose_the_passphrase(
    ports, acme, smtp_server, tmp_path, monkeypatch
):
    # The generated passphrase carries 120 bits: the low count; an own one the configured count.
    monkeypatch.setattr(ports.settings, "p12_kdf_rounds", 10_000)
    assert ports.settings.p12_generated_kdf_rounds == 2048
    send(ports)
    shown = do_enroll(ports, last_code(smtp_server))
    send(ports)
    own = do_enroll(ports, last_code(smtp_server), passphrase=OWN, passphrase_confirm=OWN)
    for result, phrase, count in ((shown, shown.passphrase_shown, 2048), (own, OWN, 10_000)):
        assert phrase
        (tmp_path / "f.p12").write_bytes(result.p12)
        (tmp_path / "pw").write_text(phrase + "\n", encoding="utf-8")
        info = subprocess.run(
            [
                "openssl",
                "pkcs12",
                "-info",
                "-noout",
                "-in",
                str(tmp_path / "f.p12"),
                "-passin",
                f"file:{tmp_path / 'pw'}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        said = info.stdout + info.stderr
        assert f"MAC: sha256, Iteration {count}" in said
        assert {int(n) for n in re.findall(r"Iteration (\d+)", said)} == {count}


# --- bad input ------------------------------------------------------------------------------------


def test_wrong_access_code_sends_nothing(ports, acme, smtp_server):
    for access in ("wrong access code", None):
        with pytest.raises(enrollment.AccessCodeInvalid):
            send(ports, access=access)
    assert smtp_server.messages == [] and code_rows(ports) == []
    assert {e.details for e in events(ports, "enroll.code")} == {'{"reason":"access_code_invalid"}'}


def test_address_outside_the_domains_sends_nothing(ports, acme, smtp_server):
    for address in ("mallory@example.com", "mallory@notexample.org"):
        with pytest.raises(enrollment.AddressNotAllowed):
            send(ports, email=address)
    send(ports, email="carol@mail.example.org")  # a subdomain is inside the domain
    assert [m.rcpt_tos for m in smtp_server.messages] == [("carol@mail.example.org",)]


def test_disabled_form_is_not_found(ports, operator, acme, smtp_server):
    send(ports)
    code = last_code(smtp_server)
    enrollment_forms.disable_form(ports, operator, "acme", "staff")
    with pytest.raises(enrollment_forms.FormNotFound):
        enrollment_forms.get_form_public(ports, "acme", "staff")
    with pytest.raises(enrollment_forms.FormNotFound):
        send(ports)
    with pytest.raises(enrollment_forms.FormNotFound):
        do_enroll(ports, code)  # a pending code dies with its form
    with pytest.raises(enrollment_forms.FormNotFound):
        enrollment_forms.get_form_public(ports, "acme", "no-such-form")
    assert certificates(ports) == []


def test_expired_code(ports, acme, smtp_server):
    send(ports)
    code = last_code(smtp_server)
    start = ports.clock()
    ports.clock = lambda: start + timedelta(minutes=16)
    with pytest.raises(enrollment.CodeExpired):
        do_enroll(ports, code)
    assert certificates(ports) == []


def test_reused_code(ports, acme, smtp_server):
    send(ports)
    code = last_code(smtp_server)
    do_enroll(ports, code)
    with pytest.raises(enrollment.CodeUsed):
        do_enroll(ports, code)
    assert len(certificates(ports)) == 1


def test_foreign_code_is_wrong(ports, operator, acme, smtp_server):
    enrollment_forms.create_form(
        ports, operator, "acme", slug="other", profile="smime", access_code=None
    )
    send(ports, form="other", access=None)
    other_form_code = last_code(smtp_server)
    send(ports, email=BOB)
    bobs_code = last_code(smtp_server, BOB)
    send(ports)  # alice has a live code of her own on "staff"
    for code in (other_form_code, bobs_code):
        with pytest.raises(enrollment.CodeInvalid):
            do_enroll(ports, code)
    assert certificates(ports) == []


def test_too_many_wrong_codes_burn_the_code(ports, acme, smtp_server):
    send(ports)
    code = last_code(smtp_server)
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    for _ in range(enrollment.MAX_ATTEMPTS):
        with pytest.raises(enrollment.CodeInvalid):
            do_enroll(ports, wrong)
    with pytest.raises(enrollment.CodeAttemptsExceeded):
        do_enroll(ports, code)
    assert certificates(ports) == []
    assert [r.attempts for r in code_rows(ports)] == [enrollment.MAX_ATTEMPTS]


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"passphrase": OWN, "passphrase_confirm": OWN + "x"}, enrollment.PassphraseMismatch),
        ({"passphrase": "short", "passphrase_confirm": "short"}, PassphraseRejected),
        ({"passphrase": "", "passphrase_confirm": ""}, PassphraseRejected),
        ({"key_type": "rsa1024"}, InvalidInput),
        ({"secret_id": "x"}, InvalidInput),
    ],
)
def test_bad_choices_leave_the_code_usable(ports, acme, smtp_server, kw, error):
    send(ports)
    code = last_code(smtp_server)
    with pytest.raises(error):
        do_enroll(ports, code, **kw)
    assert certificates(ports) == [] and code_rows(ports)[0].used_at is None
    assert do_enroll(ports, code).certificate_ids


def test_an_own_passphrase_easy_to_guess_is_refused_and_audited(ports, acme, smtp_server):
    send(ports)
    code = last_code(smtp_server)
    weak = "abcdefghijklmnop"
    with pytest.raises(PassphraseRejected) as refused:
        do_enroll(ports, code, passphrase=weak, passphrase_confirm=weak)
    assert "too easy to guess: a run of characters" in refused.value.message
    assert weak[:6] not in refused.value.message
    assert certificates(ports) == [] and code_rows(ports)[0].used_at is None
    [event] = [e for e in events(ports, enrollment.ENROLL) if e.outcome == "refused"]
    assert json.loads(event.details)["reason"] == "weak_passphrase"
    assert weak[:6] not in event.details


def test_an_own_passphrase_is_used_exactly_as_typed(ports, acme, smtp_server, tmp_path):
    send(ports)
    nfd = "Cafe\u0301-au-lait-sans-sucre-42"
    result = do_enroll(ports, last_code(smtp_server), passphrase=nfd, passphrase_confirm=nfd)
    p12, typed = tmp_path / "enrolled.p12", tmp_path / "typed"
    p12.write_bytes(result.p12)
    typed.write_bytes(nfd.encode() + b"\n")
    done = subprocess.run(
        ["openssl", "pkcs12", "-in", str(p12), "-nokeys", "-passin", f"file:{typed}"],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0 and b"BEGIN CERTIFICATE" in done.stdout, done.stderr


def test_key_type_the_form_forbids(ports, operator, acme, smtp_server):
    enrollment_forms.create_form(
        ports, operator, "acme", slug="ec", profile="smime", access_code=None, key_types=["ec256"]
    )
    assert enrollment_forms.get_form_public(ports, "acme", "ec").key_types == ["ec256"]
    send(ports, form="ec", access=None)
    with pytest.raises(KeyTypeNotAllowed):
        do_enroll(ports, last_code(smtp_server), form="ec", key_type="rsa2048")
    assert certificates(ports) == []


def test_own_passphrase_refused_when_the_form_does_not_allow_it(ports, operator, acme, smtp_server):
    enrollment_forms.create_form(
        ports, operator, "acme", slug="gen", profile="smime", access_code=None
    )
    send(ports, form="gen", access=None)
    with pytest.raises(enrollment.OwnPassphraseNotAllowed):
        do_enroll(ports, last_code(smtp_server), form="gen", passphrase=OWN, passphrase_confirm=OWN)


def test_smtp_down_leaves_no_usable_code(ports, acme, smtp_server):
    smtp_server.stop()
    with pytest.raises(MailUnavailable) as caught:
        send(ports)
    assert caught.value.status == 503 and "nothing was sent" in caught.value.message
    assert code_rows(ports) == [] and certificates(ports) == []
    smtp_server.start()
    send(ports)
    assert len(code_rows(ports)) == 1


def test_double_submission_gives_one_certificate(ports, acme, smtp_server):
    send(ports)
    code = last_code(smtp_server)
    outcomes: list[Any] = []
    barrier = threading.Barrier(2)

    def submit() -> None:
        barrier.wait()
        try:
            outcomes.append(do_enroll(ports, code))
        except enrollment.CodeUsed as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(o).__name__ for o in outcomes) == ["CodeUsed", "EnrollmentResult"]
    assert len(certificates(ports)) == 1 and len(escrowed_spkis(ports)) == 1


def _fail_on(monkeypatch, target: Any, name: str, when: Any = lambda *a, **k: True) -> None:
    real = getattr(target, name)

    def failing(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            raise RuntimeError("the database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)


@pytest.mark.parametrize("where", ["archive", "after-archive"])
def test_database_failing_between_issuance_and_escrow_leaves_nothing(
    ports, acme, smtp_server, monkeypatch, where
):
    send(ports)
    code = last_code(smtp_server)
    before = counts(ports)
    if where == "archive":
        _fail_on(monkeypatch, enrollment.archive, "archive_entry")
    else:  # the key is archived, the certificate recorded; then the audit write fails
        _fail_on(
            monkeypatch, enrollment.audit, "record", lambda *a, **k: k["action"] == "key.deliver"
        )
    with pytest.raises(RuntimeError):
        do_enroll(ports, code)
    # No certificate without its escrowed key, no key without its certificate, the code unspent.
    assert counts(ports) == before
    assert certificates(ports) == [] and escrowed_spkis(ports) == set()
    assert code_rows(ports)[0].used_at is None
    monkeypatch.undo()
    result = do_enroll(ports, code)
    assert len(certificates(ports)) == 1 and result.escrowed


def test_rate_limits_on_sending_and_checking(ports, acme, smtp_server):
    ports.settings.enrollment_codes_per_hour_email = 2
    ports.settings.enrollment_checks_per_hour_email = 3
    send(ports)
    send(ports)
    with pytest.raises(RateLimited):
        send(ports)
    assert len(smtp_server.messages) == 2
    code = last_code(smtp_server)
    for _ in range(3):
        with pytest.raises(enrollment.CodeInvalid):
            do_enroll(ports, "00000000" if code != "00000000" else "11111111")
    with pytest.raises(RateLimited):
        do_enroll(ports, code)
    assert certificates(ports) == []


# --- forms ------------------------------------------------------------------------------------


def test_form_rules(ports, operator, acme):
    with pytest.raises(enrollment.Conflict):
        enrollment_forms.create_form(
            ports, operator, "acme", slug="staff", profile="smime", access_code=None
        )
    bad: list[dict[str, Any]] = [
        {"slug": "Bad Slug"},
        {"profile": "nope"},
        {"profile": "client-auth", "dual_key": True},
        {"access_code": "short"},
        {"domains": ["not a domain"]},
        {"key_types": ["rsa1024"]},
        {"name": "<b>\x00</b>"},
    ]
    for overrides in bad:
        kw: dict[str, Any] = {"slug": "new", "profile": "smime", "access_code": None} | overrides
        with pytest.raises(InvalidInput):
            enrollment_forms.create_form(ports, operator, "acme", **kw)
    with ports.db.read() as s:
        form = s.scalars(select(EnrollmentForm).where(EnrollmentForm.slug == "staff")).one()
    assert form.access_code_hash.startswith("$argon2") and ACCESS not in form.access_code_hash
    assert [f.slug for f in enrollment_forms.list_forms(ports, operator, "acme")] == ["staff"]


def test_changing_the_access_code_voids_pending_codes(ports, operator, acme, smtp_server):
    send(ports)
    code = last_code(smtp_server)
    enrollment_forms.update_form(ports, operator, "acme", "staff", access_code="a new access code")
    with pytest.raises(enrollment.CodeInvalid):
        do_enroll(ports, code)
    with pytest.raises(enrollment.AccessCodeInvalid):
        send(ports)
    send(ports, access="a new access code")
    assert do_enroll(ports, last_code(smtp_server)).certificate_ids


def test_forms_need_settings_manage(ports, operator, acme):
    admins.create_admin(ports, operator, "acme", "certs", privileges=["certificates_manage"])
    with ports.db.read() as s:
        from certvault.db.models import Admin

        actor = admins.actor_for(s.scalars(select(Admin).where(Admin.login == "certs")).one())
    with pytest.raises(Forbidden):
        enrollment_forms.list_forms(ports, actor, "acme")
    with pytest.raises(Forbidden):
        enrollment_forms.create_form(
            ports, actor, "acme", slug="x", profile="smime", access_code=None
        )
    with pytest.raises(Forbidden):
        enrollment_forms.disable_form(ports, actor, "acme", "staff")


# --- the pages --------------------------------------------------------------------------------

PAGE = "/enroll/acme/staff"


@pytest.fixture
def web(ports: Ports, acme: str):
    with TestClient(create_app(ports), base_url="https://testserver") as client:
        yield client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found
    return found.group(1)


def assert_page_headers(response: Any) -> None:
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"


def test_pages_enroll_and_deliver(ports, web, smtp_server):
    start = web.get(PAGE)
    assert start.status_code == 200
    assert_page_headers(start)
    assert "Staff certificates" in start.text and 'id="key-notice"' in start.text
    # Nothing from elsewhere: no absolute URL, no script.
    assert "http://" not in start.text and "https://" not in start.text
    assert "<script" not in start.text
    token = csrf_of(start.text)
    sent = web.post(
        f"{PAGE}/code", data={"csrf_token": token, "email": ALICE, "access_code": ACCESS}
    )
    assert sent.status_code == 200 and 'id="code-sent"' in sent.text
    assert_page_headers(sent)
    code = last_code(smtp_server)
    assert code not in sent.text and ACCESS not in sent.text
    assert 'value="ec256"' in sent.text and 'value="rsa4096"' in sent.text
    done = web.post(
        f"{PAGE}/enroll",
        data={
            "csrf_token": csrf_of(sent.text),
            "email": ALICE,
            "code": code,
            "key_type": "ec256",
            "passphrase_choice": "generate",
        },
    )
    assert done.status_code == 200
    assert_page_headers(done)
    passphrase = html.unescape(
        re.search(r'<code id="passphrase">([^<]+)</code>', done.text).group(1)
    )
    data = re.search(r'href="data:application/x-pkcs12;base64,([^"]+)"', done.text).group(1)
    [entry] = read_pkcs12(base64.b64decode(data), passphrase).entries
    assert escrowed_spkis(ports) == {keylib.spki_sha256(entry.key.public_key())}
    assert code not in done.text
    stylesheet = web.get("/enroll/-/enroll.css")
    assert stylesheet.status_code == 200 and stylesheet.headers["content-type"].startswith(
        "text/css"
    )


def test_page_says_when_the_key_is_not_kept(ports, operator, web, smtp_server):
    accounts.set_key_vault(ports, operator, "acme", False)
    page = web.get(PAGE).text
    assert "not kept" in page and "delivered once" in page


@pytest.mark.parametrize("token", [None, "forged-token-forged-token-forged-token"])
def test_csrf_missing_or_forged_is_refused_before_anything(ports, web, smtp_server, token):
    web.get(PAGE)  # the browser has its cookie
    fields = {"email": ALICE, "access_code": ACCESS, "code": "12345678", "key_type": "ec256"}
    if token:
        fields["csrf_token"] = token
    for step in ("code", "enroll"):
        refused = web.post(f"{PAGE}/{step}", data=fields)
        assert refused.status_code == 403 and "reload the page" in refused.text
        assert_page_headers(refused)
    # A token without its cookie is refused too.
    good = csrf_of(web.get(PAGE).text)
    web.cookies.clear()
    assert web.post(f"{PAGE}/code", data=fields | {"csrf_token": good}).status_code == 403
    assert smtp_server.messages == [] and code_rows(ports) == []
    assert events(ports, "enroll.code") == []  # not even a refusal: nothing was attempted


def test_free_text_is_escaped(ports, operator, acme, web):
    enrollment_forms.create_form(
        ports,
        operator,
        "acme",
        slug="xss",
        profile="smime",
        access_code=None,
        domains=["example.org"],
        name='<script>alert("x")</script>',
    )
    page = web.get("/enroll/acme/xss")
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    shown = web.post(
        "/enroll/acme/xss/code",
        data={"csrf_token": csrf_of(page.text), "email": '"><img src=x>@evil.example'},
    )
    assert shown.status_code == 422
    assert "<img src=x>" not in shown.text and "&lt;img src=x&gt;" in shown.text


def test_page_errors_are_clear(ports, web, smtp_server):
    token = csrf_of(web.get(PAGE).text)
    wrong = web.post(
        f"{PAGE}/code", data={"csrf_token": token, "email": ALICE, "access_code": "nope"}
    )
    assert wrong.status_code == 403 and "access code is wrong" in wrong.text
    assert web.get("/enroll/acme/nope").status_code == 404
    smtp_server.stop()
    down = web.post(
        f"{PAGE}/code", data={"csrf_token": token, "email": ALICE, "access_code": ACCESS}
    )
    assert down.status_code == 503 and "nothing was sent" in down.text
    bad_code = web.post(
        f"{PAGE}/enroll",
        data={"csrf_token": token, "email": ALICE, "code": "12345678", "key_type": "ec256"},
    )
    assert bad_code.status_code == 403 and "code is wrong" in bad_code.text
    assert certificates(ports) == []


# --- API and CLI ------------------------------------------------------------------------------


def test_api_forms(ports, operator, acme):
    admins.create_admin(ports, operator, "acme", "settings", privileges=["settings_manage"])
    admins.create_admin(ports, operator, "acme", "reader")
    good = tokens.create_token(ports, operator, "acme", "settings").token
    reader = tokens.create_token(ports, operator, "acme", "reader").token
    with TestClient(create_app(ports)) as client:
        auth = {"Authorization": f"Bearer {good}"}
        listed = client.get("/api/v1/forms", headers=auth)
        assert listed.status_code == 200
        assert [f["url"] for f in listed.json()] == ["https://certs.example.org/enroll/acme/staff"]
        assert listed.json()[0]["has_access_code"] is True and "access_code" not in listed.json()[0]
        made = client.post(
            "/api/v1/forms",
            headers=auth,
            json={"slug": "api", "profile": "smime", "domains": ["example.org"], "dual_key": True},
        )
        assert made.status_code == 201, made.text
        assert made.headers["location"] == f"/api/v1/forms/{made.json()['id']}"
        changed = client.patch(
            f"/api/v1/forms/{made.json()['id']}",
            headers=auth,
            json={"enabled": False, "access_code": "a secret access code"},
        )
        assert changed.status_code == 200
        assert changed.json()["enabled"] is False and changed.json()["has_access_code"] is True
        assert "a secret access code" not in changed.text
        clash = client.post("/api/v1/forms", headers=auth, json={"slug": "api", "profile": "smime"})
        assert clash.status_code == 409
        nulls = client.patch(
            f"/api/v1/forms/{made.json()['id']}", headers=auth, json={"name": None}
        )
        assert nulls.status_code == 422
        refused = {"Authorization": f"Bearer {reader}"}
        assert client.get("/api/v1/forms", headers=refused).status_code == 403
        assert (
            client.post(
                "/api/v1/forms", headers=refused, json={"slug": "r", "profile": "smime"}
            ).status_code
            == 403
        )
        assert client.patch("/api/v1/forms/999999", headers=auth, json={}).status_code == 404


@pytest.fixture
def cli(backend, tmp_path):
    yield from cli_env.cli_for(backend, tmp_path)


def test_cli_forms(cli, tmp_path):
    cli.bootstrap()
    access = cli_env.write_secret(tmp_path / "access", ACCESS)
    made = cli.run(
        "form",
        "create",
        "--account",
        "acme",
        "--slug",
        "staff",
        "--profile",
        "smime",
        "--access-code-file",
        access,
        "--domain",
        "example.org",
        "--domain",
        "example.net",
        "--dual-key",
        "--allow-own-passphrase",
        env={"CERTVAULT_PUBLIC_URL": "https://certs.example.org"},
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().splitlines()[-1] == "https://certs.example.org/enroll/acme/staff"
    listed = cli.run("form", "list", "--account", "acme")
    assert listed.returncode == 0
    assert listed.stdout.split("\t")[:5] == [
        "staff",
        "smime dual-key",
        "enabled",
        "access-code",
        "example.org,example.net",
    ]
    assert ACCESS not in " ".join(p.stdout + p.stderr for p in cli.calls)
    assert cli.run("form", "disable", "staff", "--account", "acme").returncode == 0
    assert "\tdisabled\t" in cli.run("form", "list", "--account", "acme").stdout
    missing = cli.run("form", "disable", "nope", "--account", "acme")
    assert missing.returncode == 1 and "form_not_found" in cli_env.text(missing)


# --- the database is not trusted: forms, CAs and organizations are sealed ------------------------


def _sql(ports: Ports, statement: str, **params: Any) -> None:
    with ports.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def _stored(ports: Ports, table: str) -> list[dict[str, Any]]:
    with ports.db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(f"SELECT * FROM {table}")).mappings()]


def _reported(ports: Ports) -> dict[tuple[str, str], str]:
    return {(p.table, p.uuid): p.reason for p in seals.check_rows(ports).problems}


def _refused(ports: Ports) -> set[tuple[str, str]]:
    return {(e.target_type, e.target_id) for e in events(ports, audit.ROW_REFUSED)}


def test_an_access_code_or_domain_put_in_by_sql_enrolls_nobody(ports, acme, smtp_server):
    [form] = _stored(ports, "enrollment_forms")
    # The attacker's own access code, and every domain: our CA would certify any address for them.
    chosen = PasswordHasher().hash("the attackers own code")
    _sql(ports, "UPDATE enrollment_forms SET access_code_hash = :h, domains = ''", h=chosen)
    for email in ("victim@example.org", "ceo@elsewhere.example"):
        with pytest.raises(seals.TamperedRow):
            send(ports, email=email, access="the attackers own code")
    with pytest.raises(seals.TamperedRow):
        enrollment_forms.get_form_public(ports, "acme", "staff")
    assert smtp_server.messages == [] and code_rows(ports) == [] and certificates(ports) == []
    assert ("enrollment_forms", form["uuid"]) in _refused(ports)
    assert _reported(ports) == {
        (
            "enrollment_forms",
            form["uuid"],
        ): "MAC does not match: the row was altered, inserted or moved"
    }


def test_a_disabled_form_put_back_is_refused(ports, operator, acme, smtp_server):
    [enabled] = _stored(ports, "enrollment_forms")
    enrollment_forms.disable_form(ports, operator, "acme", "staff")
    columns = ", ".join(f"{name} = :{name}" for name in enabled if name != "id")
    _sql(ports, f"UPDATE enrollment_forms SET {columns} WHERE id = :id", **enabled)
    with pytest.raises(seals.TamperedRow):
        send(ports)
    assert smtp_server.messages == []
    assert _reported(ports) == {
        (
            "enrollment_forms",
            enabled["uuid"],
        ): "below the account's grant generation: an old copy put back"
    }


def test_a_ca_certificate_swapped_by_sql_issues_nothing(ports, operator, acme, smtp_server):
    send(ports)
    code = last_code(smtp_server)
    issuing = next(r for r in _stored(ports, "certificate_authorities") if r["role"] == "issuing")
    root = next(r for r in _stored(ports, "certificate_authorities") if r["role"] == "root")
    # The issuing CA now names the root's certificate: certificates would chain to the wrong CA.
    _sql(
        ports,
        "UPDATE certificate_authorities SET certificate_der = :d WHERE id = :id",
        d=root["certificate_der"],
        id=issuing["id"],
    )
    with pytest.raises(seals.TamperedRow):
        do_enroll(ports, code)
    assert certificates(ports) == [] and escrowed_spkis(ports) == set()
    assert ("certificate_authorities", issuing["uuid"]) in _refused(ports)
    assert set(_reported(ports)) == {("certificate_authorities", issuing["uuid"])}


def test_an_organization_renamed_by_sql_is_refused(ports, operator, acme):
    [organization] = _stored(ports, "organizations")
    _sql(ports, "UPDATE organizations SET name = 'Board' WHERE id = :id", id=organization["id"])
    with pytest.raises(seals.TamperedRow), ports.db.read() as s:
        tenancy.default_organization(s, tenancy.get_account(s, "acme"))
    assert _reported(ports) == {
        (
            "organizations",
            organization["uuid"],
        ): "MAC does not match: the row was altered, inserted or moved"
    }
