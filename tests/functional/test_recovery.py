"""The Private Key Recovery Form's services, against a real SMTP server (aiosmtpd), on SQLite and
PostgreSQL: each Recovery Method end to end, and every bad input refused, audited and changing
nothing. The pages, the enumeration test and the browser are in test_recovery_pages.py and
tests/browser/."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import func, select

from certvault.crypto import keys as keylib
from certvault.crypto.passphrase import (
    OwnPassphraseNotAllowed,
    PassphraseMismatch,
    PassphraseRejected,
)
from certvault.db.models import Certificate, MailMessage, Person, RecoveryRequest
from certvault.services.access import admins, web_sessions
from certvault.services.directory import accounts, persons
from certvault.services.kernel import notify
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import RateLimited
from certvault.services.pki import crl
from certvault.services.vault import recovery
from certvault.services.vault.archive import KeyVaultDisabled
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import SelfRecoveryRefused
from tests.factories import make_ca, make_cert, make_p12, pool_key
from tests.functional.helpers import events
from tests.functional.recovery_fixtures import (  # noqa: F401 - fixtures
    ALICE,
    IP,
    PW,
    World,
    settings_fixture,
    smtp_server,
    world_fixture,
)

OWN = "Correct-Horse-Battery-Staple-42"


def _outbox(ports: Ports) -> int:
    with ports.db.read() as s:
        return s.scalar(select(func.count()).select_from(MailMessage)) or 0


def _request(ports: Ports, ticket: str) -> RecoveryRequest:
    with ports.db.read() as s:
        return s.scalars(select(RecoveryRequest).where(RecoveryRequest.uuid == ticket)).one()


def _refusals(ports: Ports, action: str) -> list[str]:
    return [
        json.loads(e.details)["reason"]
        for e in events(ports, action)
        if e.outcome == "refused" and "reason" in json.loads(e.details)
    ]


def _opens(download: recovery.Download, passphrase: str, key: Any) -> None:
    got_key, got_cert, _ = pkcs12.load_key_and_certificates(download.data, passphrase.encode())
    assert got_key is not None and got_cert is not None
    assert keylib.spki_sha256(got_key.public_key()) == keylib.spki_sha256(key.public_key())


# --- each method, end to end --------------------------------------------------------------------


def test_email_code_recovers_the_escrowed_key(world: World):
    ticket = world.ask()
    code = world.code()
    assert code not in str(_request(world.ports, ticket).code_mac)
    grant = world.verify(ticket, code)
    shown = recovery.choices(world.ports, "acme", grant.token)
    assert [c.id for c in shown.certificates] == [world.certificate_id]
    assert shown.address == ALICE and shown.certificates[0].status == "issued"
    # The page shows the same passphrase every time it is shown.
    again = recovery.choices(world.ports, "acme", grant.token)
    assert again.passphrase.value == shown.passphrase.value and not again.passphrase.renewed

    got = world.download(grant.token)
    assert got.filename.endswith(".p12") and got.media_type == "application/x-pkcs12"
    _opens(got, shown.passphrase.value, world.key)

    [release] = events(world.ports, "key.release")
    assert release.actor == f"person:{ALICE}" and release.outcome == "success"
    details = json.loads(release.details)
    assert details["channel"] == "recovery" and details["generated_passphrase"] is True
    assert [e.outcome for e in events(world.ports, "recovery.request")] == ["success"]
    assert [e.outcome for e in events(world.ports, "recovery.verify")] == ["success"]
    assert _request(world.ports, ticket).status == "completed"
    # One download per proof.
    with pytest.raises(recovery.PageExpired):
        world.download(grant.token)
    with pytest.raises(recovery.CodeUsed):
        world.verify(ticket, code)
    world.deliver()
    notice = [m for m in world.mails() if "was recovered" in m.subject][-1]
    assert "Private Key Recovery Form" in notice.body and shown.passphrase.value not in notice.body


def test_email_code_and_secret_needs_both(world: World):
    world.method("email_code_and_secret")
    person_id = _person_id(world.ports, ALICE)
    persons.set_secret_id(world.ports, world.operator, "acme", person_id, "blue-whale-77")
    ticket = world.ask()
    code = world.code()
    with pytest.raises(recovery.CodeInvalid):
        world.verify(ticket, code, secret_id="wrong-secret")  # the right code alone: not enough
    with pytest.raises(recovery.CodeInvalid):
        world.verify(ticket, "00000000", secret_id="blue-whale-77")
    assert _request(world.ports, ticket).attempts == 2
    grant = world.verify(ticket, code, secret_id="blue-whale-77")
    _opens(
        world.download(grant.token, own_passphrase=OWN, own_passphrase_confirm=OWN), OWN, world.key
    )


def test_email_code_and_secret_without_a_secret_id_recovers_nothing(world: World):
    world.method("email_code_and_secret")
    ticket = world.ask()
    code = world.code()
    for secret in ("", "anything-at-all"):
        with pytest.raises(recovery.CodeInvalid):
            world.verify(ticket, code, secret_id=secret)


def test_admin_approval_mails_a_one_time_link(world: World):
    world.method("admin_approval")
    approver = admins.create_admin(
        world.ports, world.operator, "acme", "boss", privileges=["recovery_approve"]
    )
    boss = _actor(world.ports, approver.admin_id)
    ticket = world.ask()
    world.deliver()
    got = [m for m in world.mails() if ALICE in m.rcpt_tos]
    assert len(got) == 1, [(m.subject, m.body) for m in world.mails()]
    [waiting] = got
    assert "administrator will look at it" in waiting.body
    assert not re.search(r"\b\d{8}\b", waiting.body)

    pending = recovery.pending_requests(world.ports, world.operator, "acme")
    assert [(p.uuid, p.email, p.ip) for p in pending] == [(ticket, ALICE, IP)]
    assert [c.id for c in pending[0].certificates] == [world.certificate_id]
    recovery.decide(world.ports, boss, "acme", ticket, approve=True)
    assert recovery.pending_requests(world.ports, world.operator, "acme") == []
    world.deliver()
    link = re.search(r"https://certs\.example\.org/kv/acme/link/(\S+)", world.mails()[-1].body)
    assert link, world.mails()[-1].body
    token = link.group(1)
    assert token.split(".")[1] not in json.dumps(_row_dict(world.ports, ticket))

    grant = recovery.open_link(world.ports, "acme", token, IP)
    shown = recovery.choices(world.ports, "acme", grant.token)
    _opens(world.download(grant.token), shown.passphrase.value, world.key)
    with pytest.raises(recovery.LinkInvalid):
        recovery.open_link(world.ports, "acme", token, IP)  # used
    world.deliver()
    notice = [m for m in world.mails() if "was recovered" in m.subject][-1]
    assert "approved by" in notice.body


def test_a_rejected_or_expired_approval_opens_nothing(world: World):
    world.method("admin_approval")
    rejected = world.ask()
    recovery.decide(world.ports, world.operator, "acme", rejected, approve=False)
    with pytest.raises(Exception, match="no longer waiting"):
        recovery.decide(world.ports, world.operator, "acme", rejected, approve=True)
    approved = world.ask()
    recovery.decide(world.ports, world.operator, "acme", approved, approve=True)
    world.deliver()
    token = re.findall(r"/kv/acme/link/(\S+)", world.mails()[-1].body)[-1]
    later = world.ports.clock() + recovery.LINK_LIFETIME + timedelta(seconds=1)
    world.ports.clock = lambda: later
    with pytest.raises(recovery.LinkInvalid):
        recovery.open_link(world.ports, "acme", token, IP)
    for forged in (f"{rejected}.{'x' * 43}", "not-a-token", token[:-2] + "xx"):
        with pytest.raises(recovery.LinkInvalid):
            recovery.open_link(world.ports, "acme", forged, IP)


def test_approval_needs_the_privilege_and_sees_only_its_organizations(world: World):
    world.method("admin_approval")
    ticket = world.ask()
    made = admins.create_admin(world.ports, world.operator, "acme", "clerk", privileges=[])
    clerk = _actor(world.ports, made.admin_id)
    with pytest.raises(Exception, match="recovery_approve"):
        recovery.pending_requests(world.ports, clerk, "acme")
    with pytest.raises(Exception, match="recovery_approve"):
        recovery.decide(world.ports, clerk, "acme", ticket, approve=True)
    assert _request(world.ports, ticket).status == "pending"
    assert _refusals(world.ports, "recovery.approve") == ["forbidden"]


# --- who may recover ------------------------------------------------------------------------------


def test_an_unknown_or_foreign_address_gets_the_same_ticket_and_one_discarded_mail(world: World):
    accounts.create_account(world.ports, world.operator, "Other", "other", key_vault_enabled=True)
    accounts.add_trusted_issuer(world.ports, world.operator, "other", world.ca[1])
    world.vault("bob@example.org", slug="other")
    world.deliver()
    person_only = persons.create_person(
        world.ports,
        world.operator,
        "acme",
        persons.PersonFields(email="carol@example.org", first_name="Carol", last_name="C"),
    )
    assert person_only.email == "carol@example.org"
    before = _outbox(world.ports)
    tickets = [
        world.ask(email) for email in ("nobody@example.org", "bob@example.org", "carol@example.org")
    ]
    assert len(set(tickets)) == 3 and _outbox(world.ports) == before + 3
    assert world.deliver() == notify.SendResult(dropped=3)
    assert not [m for m in world.mails() if "recover" in m.subject.lower()]
    for ticket in tickets:
        with pytest.raises(recovery.CodeInvalid):
            world.verify(ticket, "12345678", email="nobody@example.org")


def test_an_inactive_person_or_a_compromised_key_gets_no_code(world: World):
    compromised = world.vault("dave@example.org")
    crl.revoke_certificate(world.ports, world.operator, "acme", compromised, "keyCompromise")
    persons.set_active(world.ports, world.operator, "acme", _person_id(world.ports, ALICE), False)
    world.deliver()
    world.mark()
    for email in (ALICE, "dave@example.org"):
        ticket = world.ask(email)
        assert _request(world.ports, ticket).status == "refused"
    world.deliver()
    assert len(world.mails()) == 2
    for mail in world.mails():
        assert "administrators" in mail.body and not re.search(r"\b\d{8}\b", mail.body)
    reasons = [json.loads(e.details)["refusals"] for e in events(world.ports, "recovery.request")]
    assert reasons == [["person_inactive"], ["key_compromised"]]


def test_a_certificate_from_an_untrusted_issuer_is_not_offered(world: World):
    stranger = make_ca("Somebody Else")
    key = pool_key("ec384")
    cert = make_cert(key, "erin@example.org", issuer=stranger)
    import_p12(world.ports, world.operator, "acme", make_p12(key, cert, PW), PW)
    ticket = world.ask("erin@example.org")
    assert _request(world.ports, ticket).status == "refused"
    [event] = events(world.ports, "recovery.request")
    assert json.loads(event.details)["refusals"] == ["untrusted_chain"]


def test_a_person_deactivated_after_the_code_gets_nothing(world: World):
    ticket = world.ask()
    grant = world.verify(ticket, world.code())
    recovery.choices(world.ports, "acme", grant.token)
    persons.set_active(world.ports, world.operator, "acme", _person_id(world.ports, ALICE), False)
    with pytest.raises(recovery.NothingChosen):
        world.download(grant.token)
    assert events(world.ports, "key.release") == [] or all(
        e.outcome == "refused" for e in events(world.ports, "key.release")
    )


def test_the_release_itself_refuses_a_person_outside_their_certificates(world: World):
    other = world.vault("frank@example.org")
    person = Actor(
        name=f"person:{ALICE}",
        kind="person",
        account_id=_account_id(world.ports),
        certificate_ids=frozenset({world.certificate_id}),
        address=ALICE,
    )
    from certvault.services.vault.release import release_key

    with pytest.raises(Exception, match="not found"):
        release_key(world.ports, person, "acme", other, passphrase=None, reason="x")
    persons.set_active(world.ports, world.operator, "acme", _person_id(world.ports, ALICE), False)
    with pytest.raises(SelfRecoveryRefused):
        release_key(world.ports, person, "acme", world.certificate_id, passphrase=None, reason="x")
    assert set(_refusals(world.ports, "key.release")) == {"not_found", "person_inactive"}


# --- codes ---------------------------------------------------------------------------------------


def test_wrong_codes_void_the_code_and_a_new_request_works(world: World):
    ticket = world.ask()
    code = world.code()
    wrong = "1" * 8 if code != "1" * 8 else "2" * 8
    for _ in range(recovery.MAX_ATTEMPTS - 1):
        with pytest.raises(recovery.CodeInvalid):
            world.verify(ticket, wrong)
    with pytest.raises(recovery.CodeVoid):
        world.verify(ticket, wrong)
    with pytest.raises(recovery.CodeVoid):
        world.verify(ticket, code)  # the right code, too late
    assert "code_void" in _refusals(world.ports, "recovery.verify")
    fresh = world.ask()
    world.verify(fresh, world.code())


def test_brute_force_from_one_address_is_locked_then_the_right_code_waits(world: World):
    world.ports.settings.recovery_checks_per_hour_ip = 3
    tickets = [world.ask() for _ in range(2)]
    code = world.code()
    for ticket in tickets[:1] * 3:
        with pytest.raises(recovery.CodeInvalid):
            world.verify(ticket, "00000000" if code != "00000000" else "11111111")
    with pytest.raises(RateLimited):
        world.verify(tickets[1], code)
    assert _request(world.ports, tickets[1]).status == "code_sent"


def test_an_expired_code_or_a_code_of_another_request(world: World):
    first = world.ask()
    first_code = world.code()
    second = world.ask()
    second_code = world.code()
    with pytest.raises(recovery.CodeInvalid):
        world.verify(first, second_code)
    with pytest.raises(recovery.CodeInvalid):
        world.verify(second, second_code, email="mallory@example.org")
    later = world.ports.clock() + recovery.CODE_LIFETIME + timedelta(seconds=1)
    world.ports.clock = lambda: later
    with pytest.raises(recovery.CodeExpired):
        world.verify(first, first_code)


def test_requests_are_limited_per_address(world: World):
    world.ports.settings.recovery_requests_per_hour_email = 2
    world.ask()
    world.ask()
    before = _outbox(world.ports)
    with pytest.raises(RateLimited):
        world.ask()
    with pytest.raises(RateLimited):
        world.ask(ALICE.upper())  # the same address
    assert _outbox(world.ports) == before


def test_smtp_down_the_code_goes_out_later_unless_it_expired(world: World):
    world.smtp.stop()
    ticket = world.ask()
    assert world.deliver().failed == 1
    world.smtp.start()
    later = world.ports.clock() + timedelta(minutes=2)
    world.ports.clock = lambda: later
    code = world.code()
    world.verify(ticket, code)
    world.smtp.stop()
    late = world.ask()
    world.smtp.start()
    much_later = later + recovery.CODE_LIFETIME + timedelta(minutes=1)
    world.ports.clock = lambda: much_later
    assert world.deliver().dropped == 1
    assert _request(world.ports, late).status == "code_sent"


# --- the form's switches ------------------------------------------------------------------------


def test_key_vault_off_or_method_disabled_sends_nothing(world: World):
    world.method("disabled")
    before = _outbox(world.ports)
    with pytest.raises(recovery.RecoveryDisabled):
        world.ask()
    world.method("email_code")
    accounts.set_key_vault(world.ports, world.operator, "acme", False)
    with pytest.raises(KeyVaultDisabled):
        world.ask()
    assert _outbox(world.ports) == before
    assert recovery.public_form(world.ports, "acme").open is False
    with pytest.raises(recovery.RecoveryFormNotFound):
        recovery.public_form(world.ports, "no-such-account")


def test_download_choices_are_checked_before_the_page_is_used(world: World):
    other = world.vault("grace@example.org")
    accounts.set_release_policy(world.ports, world.operator, "acme", allow_own_passphrase=False)
    ticket = world.ask()
    grant = world.verify(ticket, world.code())
    shown = recovery.choices(world.ports, "acme", grant.token)
    bad: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"ids": [other]}, recovery.NothingChosen),
        ({"ids": [world.certificate_id, other]}, recovery.NothingChosen),
        ({"format": "exe"}, recovery.FormatNotOffered),
        ({"encryption": "RC2-40"}, Exception),
        (
            {"own_passphrase": OWN, "own_passphrase_confirm": OWN + "x"},
            OwnPassphraseNotAllowed,
        ),
    ]
    for kw, error in bad:
        with pytest.raises(error):
            world.download(grant.token, kw.pop("ids", None), **kw)
    accounts.set_release_policy(world.ports, world.operator, "acme", allow_own_passphrase=True)
    with pytest.raises(PassphraseMismatch):
        world.download(grant.token, own_passphrase=OWN, own_passphrase_confirm=OWN + "x")
    with pytest.raises(PassphraseRejected):
        world.download(grant.token, own_passphrase="a" * 16, own_passphrase_confirm="a" * 16)
    assert events(world.ports, "key.release") == [] or all(
        e.outcome == "refused" for e in events(world.ports, "key.release")
    )
    again = recovery.choices(world.ports, "acme", grant.token)
    assert again.passphrase.value == shown.passphrase.value
    _opens(world.download(grant.token), shown.passphrase.value, world.key)


def test_several_certificates_download_as_one_zip(world: World):
    import io
    import zipfile

    second = world.vault(ALICE)
    ticket = world.ask()
    grant = world.verify(ticket, world.code())
    shown = recovery.choices(world.ports, "acme", grant.token)
    assert {c.id for c in shown.certificates} == {world.certificate_id, second}
    got = world.download(grant.token, [world.certificate_id, second])
    assert got.media_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(got.data)) as archive:
        assert len(archive.namelist()) == 2


# --- helpers --------------------------------------------------------------------------------------


def _person_id(ports: Ports, email: str) -> int:
    with ports.db.read() as s:
        return s.scalars(select(Person.id).where(Person.email == email)).one()


def _account_id(ports: Ports) -> int:
    with ports.db.read() as s:
        return s.scalars(select(Certificate.account_id)).first() or 0


def _row_dict(ports: Ports, ticket: str) -> dict[str, Any]:
    row = _request(ports, ticket)
    return {c: str(getattr(row, c)) for c in RecoveryRequest.__table__.columns.keys()}


def _actor(ports: Ports, admin_id: int) -> Actor:
    return web_sessions.actor_for_id(ports, admin_id, IP)


def test_an_ios_profile_holds_every_chosen_key_without_its_passphrase(world: World):
    import plistlib

    second = world.vault(ALICE)
    ticket = world.ask()
    grant = world.verify(ticket, world.code())
    shown = recovery.choices(world.ports, "acme", grant.token)
    got = world.download(grant.token, [world.certificate_id, second], format="mobileconfig")
    assert got.media_type == "application/x-apple-aspen-config"
    assert got.filename.endswith(".mobileconfig")
    profile = plistlib.loads(got.data)
    payloads = [
        p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.security.pkcs12"
    ]
    assert len(payloads) == 2 and all("Password" not in p for p in payloads)
    assert shown.passphrase.value.encode() not in got.data
    spkis = set()
    for payload in payloads:
        key, _, _ = pkcs12.load_key_and_certificates(
            payload["PayloadContent"], shown.passphrase.value.encode()
        )
        assert key is not None
        spkis.add(keylib.spki_sha256(key.public_key()))
    assert keylib.spki_sha256(world.key.public_key()) in spkis
    [release] = events(world.ports, "key.release")[:1]
    assert json.loads(release.details)["format"] == "mobileconfig"


def test_a_request_changed_in_the_database_recovers_nothing(world: World):
    """A database writer widens a request to another person's certificate and marks it proven:
    the row fails its seal, and nothing is released."""
    from sqlalchemy import text

    from certvault.services.kernel import seals

    other = world.vault("victim@example.org")
    ticket = world.ask()
    grant = world.verify(ticket, world.code())
    with world.ports.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE recovery_requests SET certificate_ids = :ids WHERE uuid = :u"),
            {"ids": f"{world.certificate_id} {other}", "u": ticket},
        )
    with pytest.raises(seals.TamperedRow):
        world.download(grant.token, [other])
    with pytest.raises(seals.TamperedRow):
        recovery.choices(world.ports, "acme", grant.token)
    assert [e for e in events(world.ports, "key.release") if e.outcome == "success"] == []
    assert {p.table for p in seals.check_rows(world.ports).problems} == {"recovery_requests"}
