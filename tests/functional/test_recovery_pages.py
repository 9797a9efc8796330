"""The Private Key Recovery Form's pages over HTTP (TestClient), on SQLite and PostgreSQL: the
whole flow, the answers that must not tell one address from another, and hostile input."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from fastapi.testclient import TestClient
from sqlalchemy import select

from certvault.crypto import keys as keylib
from certvault.db.models import MailMessage, Person
from certvault.services.directory import accounts, persons
from certvault.services.kernel import notify
from certvault.services.pki import crl
from certvault.services.vault import recovery
from certvault.web.app import create_app
from certvault.web.security import CONTENT_SECURITY_POLICY
from tests.functional.helpers import events
from tests.functional.recovery_fixtures import (  # noqa: F401 - fixtures
    ALICE,
    World,
    settings_fixture,
    smtp_server,
    world_fixture,
)
from tests.functional.test_canary import CANARY, SHORT, _assert_clean, _stored

PAGE = "/kv/acme"


@pytest.fixture
def web(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.ports), base_url="https://testserver") as client:
        yield client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, page
    return found.group(1)


def assert_page_headers(response: Any) -> None:
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


def ask(web: TestClient, email: str) -> Any:
    start = web.get(PAGE)
    return web.post(f"{PAGE}/request", data={"csrf_token": csrf_of(start.text), "email": email})


def test_recover_through_the_pages(world: World, web: TestClient):
    start = web.get(PAGE)
    assert start.status_code == 200
    assert_page_headers(start)
    assert "Acme Corp" in start.text and "<script" not in start.text
    sent = ask(web, ALICE)
    assert sent.status_code == 200 and 'id="sent"' in sent.text
    assert_page_headers(sent)
    code = world.code()
    assert code not in sent.text
    chosen = web.post(
        f"{PAGE}/verify",
        data={
            "csrf_token": csrf_of(sent.text),
            "email": hidden(sent.text, "email"),
            "ticket": hidden(sent.text, "ticket"),
            "code": code,
        },
    )
    assert chosen.status_code == 200, chosen.text
    assert_page_headers(chosen)
    passphrase = re.search(r'<code id="passphrase">([^<]+)</code>', chosen.text)
    assert passphrase
    assert f'value="{world.certificate_id}"' in chosen.text
    # Where the format is chosen: what the interop suite shows some tools cannot open.
    words = " ".join(chosen.text.split())
    assert "Java keytool refuses non-ASCII passphrases." in words
    assert "NSS (Firefox, Thunderbird) cannot import Ed25519 keys." in words
    token = hidden(chosen.text, "token")
    got = web.post(
        f"{PAGE}/download",
        data={
            "csrf_token": csrf_of(chosen.text),
            "token": token,
            "certificate": str(world.certificate_id),
            "format": "p12-AES256-SHA256",
        },
    )
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/x-pkcs12"
    assert got.headers["cache-control"] == "no-store"
    assert "attachment" in got.headers["content-disposition"]
    key, _, _ = pkcs12.load_key_and_certificates(got.content, passphrase.group(1).encode())
    assert key is not None
    assert keylib.spki_sha256(key.public_key()) == keylib.spki_sha256(world.key.public_key())
    # Used up: the same page again is refused with a clear page.
    again = web.post(
        f"{PAGE}/download",
        data={
            "csrf_token": csrf_of(chosen.text),
            "token": token,
            "certificate": str(world.certificate_id),
            "format": "p12-AES256-SHA256",
        },
    )
    assert again.status_code == 409 and "start the recovery again" in again.text


def _normalized(response: Any, email: str) -> str:
    text = response.text.replace(email, "EMAIL")
    text = re.sub(r'name="ticket" value="[0-9a-f-]{36}"', 'name="ticket" value="T"', text)
    return re.sub(r'name="csrf_token" value="[^"]+"', 'name="csrf_token" value="C"', text)


def _outbox_rows(world: World) -> list[tuple[str, bool, bool]]:
    with world.ports.db.read() as s:
        return [
            (m.subject, m.body_sealed, m.expires_at is not None)
            for m in s.scalars(select(MailMessage).order_by(MailMessage.id))
        ]


def test_every_kind_of_address_gets_the_same_answer(world: World, web: TestClient):
    """Structure, not timing (bench/recovery.py prints the timing distributions): the page,
    its status and headers, and what lands in the outbox are the same for every kind of
    address."""
    accounts.create_account(world.ports, world.operator, "Other", "other", key_vault_enabled=True)
    accounts.add_trusted_issuer(world.ports, world.operator, "other", world.ca[1])
    world.vault("bob@example.org", slug="other")
    persons.create_person(
        world.ports,
        world.operator,
        "acme",
        persons.PersonFields(email="carol@example.org", first_name="Carol", last_name="C"),
    )
    compromised = world.vault("dave@example.org")
    crl.revoke_certificate(world.ports, world.operator, "acme", compromised, "keyCompromise")
    world.vault("erin@example.org")
    with world.ports.db.read() as s:
        erin = s.scalars(select(Person.id).where(Person.email == "erin@example.org")).one()
    persons.set_active(world.ports, world.operator, "acme", erin, False)
    world.deliver()
    kinds = {
        "unknown": "nobody@example.org",
        "another account's": "bob@example.org",
        "only in a person record": "carol@example.org",
        "key compromised": "dave@example.org",
        "inactive person": "erin@example.org",
        "with keys": ALICE,
    }
    seen: dict[str, tuple[int, dict[str, str], str]] = {}
    for kind, email in kinds.items():
        before = _outbox_rows(world)
        response = ask(web, email)
        after = _outbox_rows(world)
        assert after[: len(before)] == before
        [added] = after[len(before) :]
        assert added == ("Private key recovery", True, True), kind
        headers = {k: v for k, v in response.headers.items() if k not in ("date", "set-cookie")}
        headers.pop("content-length", None)
        seen[kind] = (response.status_code, headers, _normalized(response, email))
    first = seen["unknown"]
    for kind, answer in seen.items():
        assert answer == first, kind


def test_a_wrong_code_shows_the_code_page_again(world: World, web: TestClient):
    sent = ask(web, ALICE)
    wrong = web.post(
        f"{PAGE}/verify",
        data={
            "csrf_token": csrf_of(sent.text),
            "email": ALICE,
            "ticket": hidden(sent.text, "ticket"),
            "code": "not a code",
        },
    )
    assert wrong.status_code == 400 and "not right" in wrong.text
    assert hidden(wrong.text, "ticket") == hidden(sent.text, "ticket")


def test_a_form_error_shows_the_same_passphrase_again(world: World, web: TestClient):
    other = world.vault("grace@example.org")
    sent = ask(web, ALICE)
    chosen = web.post(
        f"{PAGE}/verify",
        data={
            "csrf_token": csrf_of(sent.text),
            "email": ALICE,
            "ticket": hidden(sent.text, "ticket"),
            "code": world.code(),
        },
    )
    shown = re.search(r'<code id="passphrase">([^<]+)</code>', chosen.text)
    assert shown
    token = hidden(chosen.text, "token")
    for data, status in (
        ({"certificate": str(other), "format": "p12-AES256-SHA256"}, 400),  # someone else's
        ({"format": "p12-AES256-SHA256"}, 400),  # nothing chosen
        ({"certificate": str(world.certificate_id), "format": "exe"}, 400),
        ({"certificate": "1 OR 1=1", "format": "p12-AES256-SHA256"}, 400),
    ):
        again = web.post(
            f"{PAGE}/download", data={"csrf_token": csrf_of(chosen.text), "token": token, **data}
        )
        assert again.status_code == status, again.text
        assert f'<code id="passphrase">{shown.group(1)}</code>' in again.text
        assert 'id="passphrase-renewed"' not in again.text
    got = web.post(
        f"{PAGE}/download",
        data={
            "csrf_token": csrf_of(chosen.text),
            "token": token,
            "certificate": str(world.certificate_id),
            "format": "mobileconfig",
        },
    )
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/x-apple-aspen-config"


def test_hostile_requests_get_clear_pages(world: World, web: TestClient):
    start = web.get(PAGE)
    token = csrf_of(start.text)
    no_csrf = web.post(f"{PAGE}/request", data={"email": ALICE})
    assert no_csrf.status_code == 403 and "<html" in no_csrf.text
    for email in ("not an address", "a\x00@example.org", "x" * 400 + "@example.org"):
        bad = web.post(f"{PAGE}/request", data={"csrf_token": token, "email": email})
        assert bad.status_code in (400, 422) and "<html" in bad.text, email
        assert "\x00" not in bad.text
    missing = web.get("/kv/no-such-account")
    assert missing.status_code == 404 and "<html" in missing.text
    link = web.get(f"{PAGE}/link/forged.token")
    assert link.status_code == 200 and 'id="continue"' in link.text
    forged = web.post(f"{PAGE}/link", data={"csrf_token": csrf_of(link.text), "token": "x.y"})
    assert forged.status_code == 409 and "does not work" in forged.text
    page = web.post(
        f"{PAGE}/download",
        data={"csrf_token": token, "token": "forged", "certificate": "1", "format": "mobileconfig"},
    )
    assert page.status_code == 409 and "start the recovery again" in page.text
    assert world.deliver().sent == 0


def test_the_form_says_when_it_is_closed(world: World, web: TestClient):
    token = csrf_of(web.get(PAGE).text)  # a page opened before the switch
    world.method("disabled")
    closed = web.get(PAGE)
    assert closed.status_code == 200 and 'id="closed"' in closed.text
    assert "administrators" in closed.text and 'name="email"' not in closed.text
    refused = web.post(f"{PAGE}/request", data={"csrf_token": token, "email": ALICE})
    assert refused.status_code == 403 and "administrators" in refused.text
    assert world.deliver() == notify.SendResult()  # nothing was queued
    world.method("email_code")
    accounts.set_key_vault(world.ports, world.operator, "acme", False)
    off = web.get(PAGE)
    assert 'id="closed"' in off.text and "does not keep private keys" in off.text


def test_the_recovery_pages_never_echo_a_secret(
    world: World, web: TestClient, caplog: pytest.LogCaptureFixture
):
    """The canary secret as every secret field of every page, on error paths and the good one:
    it shows in no answer, log record, table cell or file."""
    caplog.set_level(logging.DEBUG)
    world.method("email_code_and_secret")
    accounts.set_release_policy(world.ports, world.operator, "acme", allow_own_passphrase=True)
    answers: list[tuple[str, str | bytes]] = []

    def post(path: str, page: str, **data: str) -> Any:
        got = web.post(f"{PAGE}/{path}", data={"csrf_token": csrf_of(page), **data})
        answers.append((f"{path} {got.status_code}", got.text))
        answers.extend((f"{path} header {k}", v) for k, v in got.headers.items())
        return got

    start = web.get(PAGE).text
    sent = post("request", start, email=ALICE).text
    ticket = hidden(sent, "ticket")
    for code in (CANARY, "1" * 8):
        post("verify", sent, email=ALICE, ticket=ticket, code=code, secret_id=CANARY)
    post("verify", sent, email=ALICE, ticket=CANARY, code=CANARY, secret_id=CANARY)
    post("link", sent, token=CANARY)
    post("download", sent, token=CANARY, certificate="1", format=CANARY)
    person = _person_id(world, ALICE)
    persons.set_secret_id(world.ports, world.operator, "acme", person, "right-secret-1")
    fresh = post("request", start, email=ALICE).text
    chosen = post(
        "verify",
        fresh,
        email=ALICE,
        ticket=hidden(fresh, "ticket"),
        code=world.code(),
        secret_id="right-secret-1",
    ).text
    token = hidden(chosen, "token")
    for confirm in (CANARY + "x", SHORT):
        mismatch = post(
            "download",
            chosen,
            token=token,
            certificate=str(world.certificate_id),
            format="p12-AES256-SHA256",
            passphrase_choice="own",
            passphrase=CANARY if confirm != SHORT else SHORT,
            passphrase_confirm=confirm,
        )
        assert mismatch.status_code in (400, 422)  # not the same; too short
    got = post(
        "download",
        chosen,
        token=token,
        certificate=str(world.certificate_id),
        format="p12-AES256-SHA256",
        passphrase_choice="own",
        passphrase=CANARY,
        passphrase_confirm=CANARY,
    )
    assert got.status_code == 200
    answers.pop()  # the file itself holds the passphrase's work, not its text; checked below
    pkcs12.load_key_and_certificates(got.content, CANARY.encode())
    world.deliver()
    found = list(answers)
    found += [(f"log {r.name}", r.getMessage()) for r in caplog.records]
    found += [(f"mail {m.subject}", m.body) for m in world.smtp.messages]
    url = world.ports.db.engine.url.render_as_string(hide_password=False)
    found += _stored(url, world.ports.settings.home)
    _assert_clean(found)
    assert len(answers) >= 12


def _person_id(world: World, email: str) -> int:
    with world.ports.db.read() as s:
        return s.scalars(select(Person.id).where(Person.email == email)).one()


def test_another_accounts_ticket_token_or_link_answers_like_a_forged_one(
    world: World, web: TestClient
):
    """Tenant isolation at the form: the objects travel in the body, so each one of account
    "other", posted under /kv/acme, must answer exactly like one that never existed."""
    accounts.create_account(world.ports, world.operator, "Other", "other", key_vault_enabled=True)
    accounts.add_trusted_issuer(world.ports, world.operator, "other", world.ca[1])
    world.method("email_code", slug="other")
    world.vault("bob@example.org", slug="other")
    bob = "bob@example.org"
    ticket = recovery.request_recovery(world.ports, "other", bob, "192.0.2.1").request_uuid
    code = world.code(bob)
    grant = recovery.verify_code(world.ports, "other", ticket, bob, code, "192.0.2.1")
    world.method("admin_approval", slug="other")
    asked = recovery.request_recovery(world.ports, "other", bob, "192.0.2.1").request_uuid
    recovery.decide(world.ports, world.operator, "other", asked, approve=True)
    world.deliver()
    link = re.findall(r"/kv/other/link/(\S+)", world.mails()[-1].body)[-1]
    forged_token = f"{uuid.uuid4()}.{'A' * 43}"
    token = csrf_of(web.get(PAGE).text)

    def both(path: str, real: dict[str, str], forged: dict[str, str]) -> None:
        answers = [
            web.post(f"{PAGE}/{path}", data={"csrf_token": token, **fields})
            for fields in (real, forged)
        ]
        seen, missing = (_normalized(a, bob) for a in answers)
        assert answers[0].status_code == answers[1].status_code >= 400, path
        assert seen == missing, path

    code_fields = {"email": bob, "code": code}
    both("verify", {**code_fields, "ticket": ticket}, {**code_fields, "ticket": str(uuid.uuid4())})
    choice = {"certificate": "1", "format": "p12-AES256-SHA256"}
    both("download", {**choice, "token": grant.token}, {**choice, "token": forged_token})
    both("link", {"token": link}, {"token": forged_token})
    # Untouched in its own account: the page and the link still work there.
    assert recovery.choices(world.ports, "other", grant.token).address == bob
    recovery.open_link(world.ports, "other", link, "192.0.2.1")
    assert [e for e in events(world.ports, "key.release") if e.outcome == "success"] == []
