"""The Recovery requests page: requests of the Private Key Recovery Form waiting for an
administrator's approval, approved or rejected from the page (the person is told by mail, read
from a real SMTP server), every refusal, and the audit of each decision."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import select

from certvault.config import Settings
from certvault.db.models import RecoveryRequest, new_uuid
from certvault.services.kernel import notify
from certvault.services.vault import recovery
from tests.conftest import TEST_OPERATOR, make_settings
from tests.functional.console_fixtures import (  # noqa: F401
    ConsoleClient,
    ConsoleWorld,
    ask_for_approval,
    console_fixture,
    csrf_of,
)
from tests.functional.helpers import events
from tests.functional.smtp_server import SmtpServer, smtp_server  # noqa: F401 - the fixture

PAGE = "/admin/recovery"
IP = "198.51.100.23"
NOTICE_RE = re.compile(r'id="notice"><p>(.*?)</p>', re.S)
ERROR_RE = re.compile(r'id="error"><p>(.*?)</p>', re.S)


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None, smtp_server: SmtpServer) -> Settings:  # noqa: F811
    return make_settings(
        tmp_path / "home",
        database_url,
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        smtp_security="none",
        public_url="https://certs.example.org/",
    )


def _status(console: ConsoleWorld, ticket: str) -> str:
    with console.ports.db.read() as s:
        query = select(RecoveryRequest.status).where(RecoveryRequest.uuid == ticket)
        return s.scalars(query).one()


def _decide(who: ConsoleClient, ticket: str, decision: str):  # type: ignore[no-untyped-def]
    # The CSRF token of any console page: an administrator without the privilege has no list.
    return who.post(f"{PAGE}/{ticket}", {"decision": decision})


def _mails_to(console: ConsoleWorld, smtp: SmtpServer, address: str) -> list[str]:
    """The bodies of the recovery mails delivered to ``address``, once the outbox is sent."""
    # The outbox stamps messages by the wall clock; the console's clock stands still.
    console.clock.advance(minutes=1)
    notify.send_pending(console.ports)
    return [
        m.body for m in smtp.messages if address in m.rcpt_tos and m.subject == recovery.SUBJECT
    ]


def _error(answer) -> str:  # type: ignore[no-untyped-def]
    found = ERROR_RE.search(answer.text)
    assert found is not None, answer.text
    return found.group(1).strip()


# --- the page and its decisions ----------------------------------------------------------------


def test_the_page_shows_who_what_when_and_from_where(console):
    alice = console.world.alice
    ticket = ask_for_approval(console, "acme", alice.email, IP)
    boss = console.sign_in("boss")
    home = boss.get("/admin/")
    assert 'href="/admin/recovery"' in home.text
    assert '<span class="count" id="nav-recovery-count">(1 waiting)</span>' in home.text
    page = boss.get(PAGE)
    assert page.status_code == 200
    assert 'aria-current="page">Recovery requests' in page.text
    start = page.text.index(f'<tr id="request-{ticket}">')
    row = page.text[start : page.text.index("</tr>", start)]
    assert alice.email in row and IP in row
    [pending] = recovery.pending_requests(console.ports, TEST_OPERATOR, "acme")
    created = pending.created_at
    assert created.strftime("%Y-%m-%d %H:%M UTC") in row
    for cert_id, cert in zip(alice.cert_ids, alice.certs, strict=True):
        assert f'href="/admin/certificates/{cert_id}"' in row
        assert format(cert.serial_number, "x") in row
        assert cert.not_valid_after_utc.strftime("%Y-%m-%d") in row
    assert "(expired)" in row and "(issued)" in row  # the old generation, and the current one
    assert f'id="approve-{ticket}"' in row and f'id="reject-{ticket}"' in row


def test_approve_from_the_page_mails_a_link_that_releases_the_keys(console, smtp_server):  # noqa: F811
    alice = console.world.alice
    ticket = ask_for_approval(console, "acme", alice.email, IP)
    boss = console.sign_in("boss")
    answer = _decide(boss, ticket, "approve")
    assert answer.status_code == 200 and answer.url.path == PAGE
    assert "approved" in NOTICE_RE.search(answer.text).group(1)
    assert 'id="no-requests"' in answer.text and 'id="nav-recovery-count"' not in answer.text
    assert _status(console, ticket) == "approved"

    [waiting, approved] = _mails_to(console, smtp_server, alice.email)
    assert "administrator will look at it" in waiting
    link = re.search(r"https://certs\.example\.org/kv/acme/link/(\S+)", approved)
    assert link, approved
    grant = recovery.open_link(console.ports, "acme", link.group(1), IP)
    shown = recovery.choices(console.ports, "acme", grant.token)
    assert sorted(c.id for c in shown.certificates) == sorted(alice.cert_ids)
    assert shown.approved_by == "admin:boss"
    choice = recovery.DownloadChoice([alice.cert_ids[1]], "p12", "AES256-SHA256", None)
    got = recovery.download(console.ports, "acme", grant.token, choice, IP)
    key, cert, _ = pkcs12.load_key_and_certificates(got.data, shown.passphrase.value.encode())
    assert cert == alice.certs[1] and key is not None

    [event] = events(console.ports, recovery.APPROVE)
    assert (event.actor, event.outcome, event.target_id) == ("admin:boss", "success", ticket)
    details = json.loads(event.details)
    assert details["email"] == alice.email and sorted(details["certificates"]) == alice.cert_ids
    audit_page = boss.get("/admin/audit?action=recovery.approve").text
    assert f"<td>{recovery.APPROVE}</td>" in audit_page and ticket in audit_page


def test_reject_from_the_page_tells_the_person_and_opens_nothing(console, smtp_server):  # noqa: F811
    alice = console.world.alice
    ticket = ask_for_approval(console, "acme", alice.email, IP)
    boss = console.sign_in("boss")
    answer = _decide(boss, ticket, "reject")
    assert answer.status_code == 200 and answer.url.path == PAGE
    assert "rejected" in NOTICE_RE.search(answer.text).group(1)
    assert _status(console, ticket) == "rejected"
    [_, rejected] = _mails_to(console, smtp_server, alice.email)
    assert "was not approved" in rejected and "/kv/acme/link/" not in rejected
    [event] = events(console.ports, recovery.REJECT)
    assert (event.actor, event.outcome, event.target_id) == ("admin:boss", "success", ticket)
    audit_page = boss.get("/admin/audit?action=recovery.reject").text
    assert f"<td>{recovery.REJECT}</td>" in audit_page and ticket in audit_page


# --- refusals -------------------------------------------------------------------------------------


def test_a_decided_request_is_a_conflict(console):
    ticket = ask_for_approval(console, "acme", console.world.alice.email)
    boss = console.sign_in("boss")
    assert _decide(boss, ticket, "reject").status_code == 200
    for decision in ("approve", "reject"):
        again = _decide(boss, ticket, decision)
        assert again.status_code == 409
        assert _error(again) == "This request is no longer waiting for a decision."
    assert _status(console, ticket) == "rejected"
    decisions = [
        e for e in events(console.ports) if e.action in (recovery.APPROVE, recovery.REJECT)
    ]
    assert [(e.action, e.outcome) for e in decisions] == [
        (recovery.REJECT, "success"),
        (recovery.APPROVE, "refused"),
        (recovery.REJECT, "refused"),
    ]


def test_unknown_foreign_and_junk_requests_answer_not_found(console):
    w = console.world
    acme = ask_for_approval(console, "acme", w.alice.email)
    other = ask_for_approval(console, "other", w.olga.email)
    boss, foreign = console.sign_in("boss"), console.sign_in("foreignboss")
    missing = _decide(boss, new_uuid(), "approve")
    assert missing.status_code == 404
    for who, ticket in ((boss, other), (foreign, acme), (boss, "not-a-request"), (boss, "9" * 80)):
        answer = _decide(who, ticket, "approve")
        assert (answer.status_code, _error(answer)) == (404, _error(missing)), ticket
    assert _status(console, acme) == _status(console, other) == "pending"
    # Each account's page lists its own requests only.
    assert acme in boss.get(PAGE).text and other not in boss.get(PAGE).text
    assert other in foreign.get(PAGE).text and acme not in foreign.get(PAGE).text


def test_an_unknown_decision_or_a_forged_form_changes_nothing(console):
    ticket = ask_for_approval(console, "acme", console.world.alice.email)
    boss = console.sign_in("boss")
    for decision in ("", "approve-all", "<b>yes</b>"):
        answer = _decide(boss, ticket, decision)
        assert answer.status_code == 400 and _error(answer) == "Approve or reject the request."
        assert "<b>yes" not in answer.text
    forged = boss.client.post(
        f"{PAGE}/{ticket}", data={"decision": "approve", "csrf_token": "x" * 43}
    )
    assert forged.status_code == 403
    assert _status(console, ticket) == "pending"
    assert events(console.ports, recovery.APPROVE) == []


def test_administrators_without_the_privilege_get_403_and_no_navigation(console):
    ticket = ask_for_approval(console, "acme", console.world.alice.email)
    clerk = console.sign_in("clerk")
    home = clerk.get("/admin/").text
    assert 'href="/admin/recovery"' not in home and "Recovery requests" not in home
    page = clerk.get(PAGE)
    assert page.status_code == 403 and ticket not in page.text
    assert _error(page) == "This needs the privilege recovery_approve."
    answer = _decide(clerk, ticket, "approve")
    assert answer.status_code == 403
    assert _status(console, ticket) == "pending"
    [refusal] = events(console.ports, recovery.APPROVE)
    assert refusal.outcome == "refused" and refusal.actor == "admin:clerk"
    assert json.loads(refusal.details)["reason"] == "forbidden"


def test_an_organization_administrator_decides_only_in_their_organizations(console):
    w = console.world
    alices = ask_for_approval(console, "acme", w.alice.email)
    sams = ask_for_approval(console, "acme", w.sam.email)
    sales = console.sign_in("salesboss")
    page = sales.get(PAGE).text
    assert sams in page and alices not in page and w.alice.email not in page
    assert '<span class="count" id="nav-recovery-count">(1 waiting)</span>' in page
    hidden = _decide(sales, alices, "approve")
    assert hidden.status_code == 404
    assert _status(console, alices) == "pending"
    assert _decide(sales, sams, "approve").status_code == 200
    assert _status(console, sams) == "approved"
    # The account administrator sees what is left.
    boss = console.sign_in("boss")
    assert '<span class="count" id="nav-recovery-count">(1 waiting)</span>' in boss.get(PAGE).text
