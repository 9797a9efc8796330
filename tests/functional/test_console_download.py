"""Download key in the console: re-authentication, the passphrase the form holds (shown again
when the form comes back with an error), the encryption type, the one-use form, and every refusal
(audited, nothing released)."""

from __future__ import annotations

import io
import json
import logging
import plistlib
import re
import zipfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, update

from certvault.db.models import FormNonce, WebSession
from certvault.services.access import form_nonces
from certvault.services.directory import accounts, persons
from certvault.services.kernel.passwords import PasswordChecksBusy, PasswordHashing
from certvault.services.vault import settings as kv_settings
from tests.conftest import TEST_OPERATOR
from tests.factories import make_cert, make_p12, new_key
from tests.functional.cli_env import openssl
from tests.functional.console_fixtures import (  # noqa: F401
    PASSWORD,
    SECRET_RE,
    ConsoleClient,
    code_for,
    console_fixture,
    csrf_of,
)
from tests.functional.helpers import count_argon2, events, mails

PASSPHRASE_RE = re.compile(r'id="passphrase">([a-z0-9-]+)<')
TOKEN_RE = re.compile(r'name="form_token" value="([^"]+)"')
LEGACY = "TripleDES-SHA1 (legacy: old Apple and Windows devices)"
PROFILE = "iOS configuration profile (.mobileconfig)"


class Form:
    """One opened download form: its page, token and the passphrase it showed."""

    def __init__(self, client: ConsoleClient, path: str) -> None:
        self.client, self.path = client, path
        page = client.get(path)
        assert page.status_code == 200, page.text
        self.html = page.text
        token = TOKEN_RE.search(page.text)
        assert token is not None
        self.token = token.group(1)
        phrase = PASSPHRASE_RE.search(page.text)
        assert phrase is not None
        self.passphrase = phrase.group(1)

    def post(self, **fields: str):
        data = {"csrf_token": csrf_of(self.html), "form_token": self.token, **fields}
        return self.client.client.post(self.path, data=data)


def shown(page: str) -> str:
    """The passphrase a download page shows."""
    found = PASSPHRASE_RE.search(page)
    assert found is not None, "the page shows no passphrase"
    return found.group(1)


def cert_path(cert_id: int) -> str:
    return f"/admin/certificates/{cert_id}/download"


def person_path(person_id: int) -> str:
    return f"/admin/persons/{person_id}/download"


def details(event) -> dict:
    return json.loads(event.details)


def code_of(refusal) -> str:
    return details(refusal)["reason"]


def releases(console, outcome: str = "success"):
    return [e for e in events(console.ports, "key.release") if e.outcome == outcome]


def refusals(console, action: str = "key.release"):
    return [e for e in events(console.ports, action) if e.outcome == "refused"]


def confirmed(client: ConsoleClient) -> dict[str, str]:
    """The password and a fresh code: the first download form after a sign-in asks for them."""
    return {"password": PASSWORD, "code": client.next_code()}


def forget_reauthentication(console) -> None:
    """As if the last password-and-code confirmation were long ago."""
    with console.ports.db.transaction() as s:
        for row in s.scalars(select(WebSession)):  # row by row: each is sealed again
            row.reauthenticated_at = None


def open_p12(tmp_path: Path, data: bytes, passphrase: str, legacy: bool = False):
    """The key and certificate of a PKCS#12 file, as the real openssl reads them."""
    p12 = tmp_path / "key.p12"
    p12.write_bytes(data)
    pw = tmp_path / "pw"
    pw.write_text(passphrase + "\n")
    out = openssl(
        "pkcs12",
        "-in",
        p12,
        "-passin",
        f"file:{pw}",
        "-nodes",
        *(["-legacy"] if legacy else []),
    ).stdout
    key = serialization.load_pem_private_key(
        out[out.index("-----BEGIN PRIVATE KEY") :].encode(), None
    )
    cert = x509.load_pem_x509_certificate(out[out.index("-----BEGIN CERTIFICATE") :].encode())
    return key, cert


def public_der(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def notices(console):
    """The mails telling owners that their key was released."""
    return [m for m in mails(console.ports) if m.subject == "Your private key was recovered"]


def assert_nothing_released(console) -> None:
    assert releases(console) == []
    assert notices(console) == []


# --- downloads ------------------------------------------------------------------------------


@pytest.mark.parametrize("encryption", ["AES256-SHA256", "TripleDES-SHA1"])
def test_boss_downloads_the_newest_key(console, tmp_path, encryption):
    alice = console.world.alice
    new = alice.cert_ids[1]
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(new))
    assert LEGACY in form.html and 'value="AES256-SHA256" selected' in form.html
    answer = form.post(encryption=encryption, reason="laptop lost", **confirmed(boss))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-pkcs12"
    assert answer.headers["content-disposition"] == f'attachment; filename="{new}.p12"'
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    key, cert = open_p12(tmp_path, answer.content, form.passphrase, encryption != "AES256-SHA256")
    assert cert == alice.certs[1]
    assert public_der(key) == public_der(alice.keys[1]) == public_der(cert)
    [event] = releases(console)
    assert event.target_type == "certificate" and event.target_id == str(new)
    assert details(event)["channel"] == "console"
    assert details(event)["encryption"] == encryption
    assert details(event)["reason"] == "laptop lost"
    assert "boss" in event.actor
    [mail] = notices(console)
    assert mail.to_addr == alice.email and "laptop lost" in mail.body


def test_the_form_says_which_tools_cannot_open_what(console):
    """The limits the interop suite shows (docs/compatibility.md), where the choice is made."""
    form = Form(console.sign_in("boss"), cert_path(console.world.alice.cert_ids[1]))
    note = re.search(r'<p class="hint" id="tool-limits">(.*?)</p>', form.html, re.S)
    assert note is not None
    assert " ".join(note.group(1).split()) == (
        "Java keytool refuses non-ASCII passphrases. "
        "NSS (Firefox, Thunderbird) cannot import Ed25519 keys."
    )
    assert 'aria-describedby="encryption-hint tool-limits"' in form.html


def test_passphrase_is_shown_on_the_form_and_nowhere_else(console, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    alice = console.world.alice
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(alice.cert_ids[1]))
    assert form.html.count(form.passphrase) == 1
    assert 'data-copy="passphrase"' in form.html
    # After a refusal the form shows the very passphrase it holds again.
    forget_reauthentication(console)
    wrong = form.post(password="wrong-password-123", code="000000")
    assert wrong.status_code == 401
    assert shown(wrong.text) == form.passphrase and 'id="passphrase-renewed"' not in wrong.text
    answer = form.post(password=PASSWORD, code=boss.next_code())
    assert answer.status_code == 200
    assert form.passphrase.encode() not in answer.content
    assert form.passphrase not in str(answer.headers)
    assert form.passphrase not in caplog.text and PASSWORD not in caplog.text
    for event in events(console.ports):
        assert form.passphrase not in event.details
    [event] = releases(console)
    assert details(event)["generated_passphrase"] is True
    with console.ports.db.read() as s:
        [row] = s.scalars(select(FormNonce))
        assert row.used_at is not None and row.sealed is None
    open_p12(tmp_path, answer.content, form.passphrase)


def test_download_all_keys_of_a_person_gives_every_generation(console, tmp_path):
    alice = console.world.alice
    boss = console.sign_in("boss")
    form = Form(boss, person_path(alice.person_id))
    assert "Download all keys" in form.html and alice.email in form.html
    for cert_id in alice.cert_ids:
        assert f"<td>{cert_id}</td>" in form.html
    answer = form.post(reason="mailbox migration", encryption="AES256-SHA256", **confirmed(boss))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/zip"
    assert (
        answer.headers["content-disposition"]
        == f'attachment; filename="person-{alice.person_id}-keys.zip"'
    )
    assert answer.headers["cache-control"] == "no-store"
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    names = sorted(archive.namelist())
    assert [n.split("-")[0] for n in names] == [str(i) for i in sorted(alice.cert_ids)]
    got = set()
    for name in names:
        key, cert = open_p12(tmp_path, archive.read(name), form.passphrase)
        assert public_der(key) == public_der(cert)
        got.add(public_der(key))
    assert got == {public_der(k) for k in alice.keys}
    assert sorted(int(e.target_id) for e in releases(console)) == sorted(alice.cert_ids)
    assert {details(e)["channel"] for e in releases(console)} == {"console"}


def test_boss_downloads_a_key_as_an_ios_profile(console, tmp_path):
    alice = console.world.alice
    new = alice.cert_ids[1]
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(new))
    assert f'<option value="mobileconfig">{PROFILE}</option>' in form.html
    answer = form.post(encryption="mobileconfig", reason="new phone", **confirmed(boss))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-apple-aspen-config"
    assert answer.headers["content-disposition"] == f'attachment; filename="{new}.mobileconfig"'
    assert answer.headers["cache-control"] == "no-store"
    profile = plistlib.loads(answer.content)
    assert profile["PayloadType"] == "Configuration"
    [payload] = profile["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.security.pkcs12" and "Password" not in payload
    key, cert = open_p12(tmp_path, payload["PayloadContent"], form.passphrase, legacy=True)
    assert cert == alice.certs[1] and public_der(key) == public_der(alice.keys[1])
    [event] = releases(console)
    assert (details(event)["format"], details(event)["encryption"]) == (
        "mobileconfig",
        "TripleDES-SHA1",
    )
    [mail] = notices(console)
    assert "Delivered as: iOS configuration profile (.mobileconfig)" in mail.body


def test_download_all_keys_of_a_person_as_one_profile(console, tmp_path):
    alice = console.world.alice
    boss = console.sign_in("boss")
    form = Form(boss, person_path(alice.person_id))
    assert "one iOS configuration profile" in form.html
    answer = form.post(encryption="mobileconfig", reason="new phone", **confirmed(boss))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-apple-aspen-config"
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="person-{alice.person_id}-keys.mobileconfig"'
    )
    payloads = plistlib.loads(answer.content)["PayloadContent"]
    got = set()
    for payload in payloads:
        key, cert = open_p12(tmp_path, payload["PayloadContent"], form.passphrase, legacy=True)
        assert public_der(key) == public_der(cert)
        got.add(public_der(key))
    assert len(payloads) == 2 and got == {public_der(k) for k in alice.keys}
    assert [details(e)["format"] for e in releases(console)] == ["mobileconfig"] * 2


def test_a_profile_with_an_expired_signing_identity_is_refused(console, operator):
    key = new_key("ec256")
    signer = make_cert(key, "profiles@acme.example", days=10)
    kv_settings.update_recovery_options(
        console.ports,
        operator,
        "acme",
        kv_settings.RecoveryOptions(sign_profiles=True),
        make_p12(key, signer, "signing-pass-5678"),
        "signing-pass-5678",
    )
    console.clock.advance(days=12)
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    answer = form.post(encryption="mobileconfig", reason="new phone", **confirmed(boss))
    assert answer.status_code == 409
    assert f"expired on {signer.not_valid_after_utc:%Y-%m-%d}" in answer.text
    assert_nothing_released(console)
    assert [code_of(e) for e in refusals(console)] == ["signing_identity_expired"]


def test_person_without_keys_gets_the_not_found_page(console, operator):
    nobody = persons.create_person(
        console.ports, operator, "acme", persons.PersonFields(email="nokey@acme.example")
    )
    boss = console.sign_in("boss")
    page = boss.get(person_path(nobody.id))
    assert page.status_code == 404
    assert "This person has no keys in the vault." in page.text
    answer = boss.post(person_path(nobody.id), {"form_token": "x" * 43})
    assert answer.status_code == 404 and "no keys in the vault" in answer.text
    assert_nothing_released(console)


# --- own passphrase -------------------------------------------------------------------------


def test_own_passphrase_twice(console, tmp_path):
    alice = console.world.alice
    boss = console.sign_in("boss")
    own = "my own Pässphrase 42"
    form = Form(boss, cert_path(alice.cert_ids[0]))
    assert 'value="own"' in form.html
    mismatch = form.post(
        passphrase_choice="own",
        own_passphrase=own,
        own_passphrase_confirm=own + "x",
        **confirmed(boss),
    )
    assert mismatch.status_code == 400 and "not the same" in mismatch.text
    assert own not in mismatch.text
    short = form.post(
        passphrase_choice="own", own_passphrase="short", own_passphrase_confirm="short"
    )
    assert short.status_code == 400 and "at least 12 characters" in short.text
    assert_nothing_released(console)
    assert [code_of(e) for e in refusals(console)] == ["passphrase_mismatch", "weak_passphrase"]
    # The form was not used up by the refusals: the same one goes through now.
    answer = form.post(passphrase_choice="own", own_passphrase=own, own_passphrase_confirm=own)
    assert answer.status_code == 200
    key, _ = open_p12(tmp_path, answer.content, own)
    assert public_der(key) == public_der(alice.keys[0])
    with pytest.raises(AssertionError):
        open_p12(tmp_path, answer.content, form.passphrase)
    [event] = releases(console)
    assert details(event)["generated_passphrase"] is False


@pytest.mark.parametrize("encryption", ["AES256-SHA256", "TripleDES-SHA1"])
def test_an_own_passphrase_easy_to_guess_is_refused(console, encryption):
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    weak = "aaaaaaaaaaaaaaaa"
    answer = form.post(
        passphrase_choice="own",
        own_passphrase=weak,
        own_passphrase_confirm=weak,
        encryption=encryption,
        **confirmed(boss),
    )
    assert answer.status_code == 400
    assert "too easy to guess: repeated characters" in answer.text
    assert weak not in answer.text and weak[:8] not in answer.text
    assert_nothing_released(console)
    assert [code_of(e) for e in refusals(console)] == ["weak_passphrase"]


def test_own_passphrase_refused_when_the_account_does_not_allow_it(console):
    accounts.set_release_policy(console.ports, TEST_OPERATOR, "acme", allow_own_passphrase=False)
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    assert 'value="own"' not in form.html and "own_passphrase" not in form.html
    own = "forged own passphrase 123"
    forged = form.post(
        passphrase_choice="own", own_passphrase=own, own_passphrase_confirm=own, **confirmed(boss)
    )
    assert forged.status_code == 400
    assert "does not allow" in forged.text
    assert_nothing_released(console)
    assert [code_of(e) for e in refusals(console)] == ["own_passphrase_not_allowed"]
    odd = form.post(passphrase_choice="somebody-elses")
    assert odd.status_code == 400
    assert_nothing_released(console)


# --- re-authentication ----------------------------------------------------------------------


def test_reauthentication_refusals_release_nothing(console):
    alice = console.world.alice
    boss = console.sign_in("boss")
    forget_reauthentication(console)
    form = Form(boss, cert_path(alice.cert_ids[1]))
    assert 'name="password"' in form.html and 'name="code"' in form.html
    sign_in_code = code_for(boss.secret, console.clock.now)  # used up by the sign-in
    fresh = code_for(boss.secret, console.clock.now)
    wrong_password = form.post(password="not-the-password", code=fresh)
    assert wrong_password.status_code == 401 and 'name="password"' in wrong_password.text
    wrong_code = form.post(password=PASSWORD, code="123456" if fresh != "123456" else "654321")
    assert wrong_code.status_code == 401
    replayed = form.post(password=PASSWORD, code=sign_in_code)
    assert replayed.status_code == 401 and "used already" in replayed.text
    empty = form.post()
    assert empty.status_code == 401
    assert_nothing_released(console)
    assert refusals(console) == []
    assert [code_of(e) for e in refusals(console, "admin.reauthenticate")] == [
        "bad_credentials",
        "bad_totp",
        "totp_replayed",
        "bad_request",
    ]
    for event in events(console.ports):
        assert PASSWORD not in event.details and sign_in_code not in event.details
    with console.ports.db.read() as s:
        assert s.scalars(select(FormNonce.used_at)).one() is None
    # Still the same form: it goes through once the password and a fresh code are right.
    done = form.post(password=PASSWORD, code=boss.next_code())
    assert done.status_code == 200
    assert len(releases(console)) == 1
    ok = [e for e in events(console.ports, "admin.reauthenticate") if e.outcome == "success"]
    assert len(ok) == 1


def test_reauthentication_lasts_five_minutes(console):
    alice = console.world.alice
    boss = console.sign_in("boss")
    # Just signed in, and asked all the same: a sign-in is not a re-authentication.
    first = Form(boss, cert_path(alice.cert_ids[1]))
    assert 'name="password"' in first.html and 'name="code"' in first.html
    assert first.post().status_code == 401
    assert first.post(**confirmed(boss)).status_code == 200
    console.clock.advance(minutes=4)
    second = Form(boss, cert_path(alice.cert_ids[1]))
    assert 'name="password"' not in second.html
    console.clock.advance(minutes=2)
    third = Form(boss, cert_path(alice.cert_ids[1]))
    assert 'name="password"' in third.html and 'name="code"' in third.html
    # A form shown inside the window but posted after it asks again.
    refused = second.post()
    assert refused.status_code == 401 and 'name="password"' in refused.text
    assert third.post(password=PASSWORD, code=boss.next_code()).status_code == 200
    assert second.post().status_code == 200
    assert len(releases(console)) == 3


def test_a_new_downloaders_first_sign_in_is_no_reauthentication(console):
    """An administrator just made with the download privilege (say, by a session taken over) is
    asked for the password and a fresh code at the first download, as anyone is."""
    boss = console.sign_in("boss")
    fields = {
        "login": "minter",
        "role": "account",
        "privilege": ["key_vault_download"],
        "password_choice": "choose",
        "password": "minted-password-0123",
        "current_password": PASSWORD,
        "current_code": boss.next_code(),
    }
    assert boss.post("/admin/admins", fields, csrf_from="/admin/admins").status_code == 200
    client, landed = console.password_step("acme", "minter", "minted-password-0123")
    secret = SECRET_RE.search(landed.text).group(1)
    done = client.post(
        "/admin/totp",
        data={"csrf_token": csrf_of(landed.text), "code": code_for(secret, console.clock.now)},
    )
    assert done.url.path == "/admin/"
    minter = ConsoleClient(client, console.clock, "minter", secret)
    form = Form(minter, cert_path(console.world.alice.cert_ids[1]))
    assert 'name="password"' in form.html and 'name="code"' in form.html
    assert form.post(reason="straight after sign-in").status_code == 401
    assert_nothing_released(console)
    answer = form.post(password="minted-password-0123", code=minter.next_code())
    assert answer.status_code == 200 and len(releases(console)) == 1


def test_reauthentication_costs_one_argon2_check(console, monkeypatch):
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    calls = count_argon2(monkeypatch)
    assert form.post(password="wrong-password-123", code=boss.next_code()).status_code == 401
    assert form.post(**confirmed(boss)).status_code == 200
    assert calls == Counter(verify=2)


def test_reauthentication_refused_at_once_while_the_password_checks_are_busy(console, monkeypatch):
    def busy(self, secret_hash, secret):  # every argon2 slot of the process taken by others
        raise PasswordChecksBusy()

    boss = console.sign_in("boss")
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    monkeypatch.setattr(PasswordHashing, "verify", busy)
    answer = form.post(**confirmed(boss))
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) >= 1
    assert 'name="password"' in answer.text
    assert_nothing_released(console)
    assert code_of(refusals(console, "admin.reauthenticate")[-1]) == "busy"
    monkeypatch.undo()
    assert form.post(**confirmed(boss)).status_code == 200  # the form stayed good


def test_reauthentication_is_rate_limited_like_sign_in(console):
    boss = console.sign_in("boss")
    forget_reauthentication(console)
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    limit = console.ports.settings.logins_per_minute_login
    statuses = [form.post(password="wrong", code="000000").status_code for _ in range(limit)]
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}
    limited = form.post(password=PASSWORD, code=boss.next_code())
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert_nothing_released(console)
    assert code_of(refusals(console, "admin.reauthenticate")[-1]) == "rate_limited"


def test_console_downloads_are_rate_limited_once_authorized(console):
    """The limits count a download the console could make, and only that: a clerk's forged
    posts (no privilege) use up nothing of the address's quota."""
    console.ports.settings.downloads_per_hour_ip = 1
    clerk = console.sign_in("clerk")
    for _ in range(3):
        forged = clerk.post(cert_path(console.world.alice.cert_ids[1]), {"form_token": "f" * 43})
        assert forged.status_code == 403
    boss = console.sign_in("boss")
    first = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    assert first.post(**confirmed(boss)).status_code == 200
    second = Form(boss, cert_path(console.world.alice.cert_ids[0])).post()
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
    assert len(releases(console)) == 1
    assert [code_of(e) for e in refusals(console)][-1] == "rate_limited"


# --- reason ---------------------------------------------------------------------------------


def test_reason_required_by_the_account(console):
    accounts.set_release_policy(console.ports, TEST_OPERATOR, "acme", reason_required=True)
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    assert "Reason (required)" in form.html and re.search(r"<textarea[^>]* required", form.html)
    missing = form.post(reason="   ", **confirmed(boss))
    assert missing.status_code == 400 and "reason" in missing.text
    assert_nothing_released(console)
    assert [code_of(e) for e in refusals(console)] == ["reason_required"]
    too_long = form.post(reason="r" * 501)
    assert too_long.status_code == 400 and "at most 500" in too_long.text
    assert_nothing_released(console)
    assert form.post(reason="court order 7").status_code == 200
    [event] = releases(console)
    assert details(event)["reason"] == "court order 7"


def test_a_form_shown_again_shows_the_same_passphrase_and_the_file_opens_with_it(console, tmp_path):
    accounts.set_release_policy(console.ports, TEST_OPERATOR, "acme", reason_required=True)
    alice = console.world.alice
    boss = console.sign_in("boss")
    form = Form(boss, person_path(alice.person_id))
    mismatch = form.post(
        passphrase_choice="own",
        own_passphrase="one own passphrase 42",
        own_passphrase_confirm="another own passphrase 42",
        reason="new laptop",
        **confirmed(boss),
    )
    assert mismatch.status_code == 400 and shown(mismatch.text) == form.passphrase
    missing = form.post(reason="")
    assert missing.status_code == 400 and "reason" in missing.text
    assert shown(missing.text) == form.passphrase
    assert 'id="passphrase-renewed"' not in missing.text
    assert_nothing_released(console)
    answer = form.post(reason="new laptop")
    assert answer.status_code == 200
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        names = archive.namelist()
        assert len(names) == len(alice.cert_ids)
        for name in names:
            key, _ = open_p12(tmp_path, archive.read(name), form.passphrase)
            assert public_der(key) in {public_der(k) for k in alice.keys}


def test_a_held_passphrase_that_no_longer_opens_is_replaced_and_said_so(console, tmp_path):
    alice = console.world.alice
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(alice.cert_ids[1]))
    other = Form(boss, cert_path(alice.cert_ids[0]))
    # The sealed passphrase of another form is bound to that form: it does not open here.
    with console.ports.db.transaction() as s:
        rows = {row.id: row for row in s.scalars(select(FormNonce))}
        mine = rows[form_nonces.nonce_id_of(form.token)]
        mine.sealed = rows[form_nonces.nonce_id_of(other.token)].sealed
    again = form.post(encryption="RC2-40", **confirmed(boss))
    assert again.status_code == 400
    renewed = shown(again.text)
    assert renewed not in (form.passphrase, other.passphrase)
    assert 'id="passphrase-renewed"' in again.text
    # Shown again, the new one stays.
    twice = form.post(encryption="RC2-40")
    assert shown(twice.text) == renewed and 'id="passphrase-renewed"' not in twice.text
    answer = form.post()
    assert answer.status_code == 200
    key, _ = open_p12(tmp_path, answer.content, renewed)
    assert public_der(key) == public_der(alice.keys[1])
    with pytest.raises(AssertionError):
        open_p12(tmp_path, answer.content, form.passphrase)


def test_reason_with_markup_is_shown_escaped_and_stored_as_text(console):
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    reason = '<script>alert("x")</script><b>bold</b>'
    forget_reauthentication(console)
    again = form.post(reason=reason, password="wrong-password", code="000000")
    assert again.status_code == 401
    assert "<script>alert" not in again.text and "<b>bold" not in again.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in again.text
    assert form.post(reason=reason, password=PASSWORD, code=boss.next_code()).status_code == 200
    [event] = releases(console)
    assert details(event)["reason"] == reason
    [mail] = notices(console)
    assert reason in mail.body


def test_unknown_encryption_type_is_refused(console):
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    answer = form.post(encryption="RC2-40", **confirmed(boss))
    assert answer.status_code == 400 and "Unknown encryption type" in answer.text
    assert_nothing_released(console)


# --- the one-use form -----------------------------------------------------------------------


def test_double_submit_releases_once(console):
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    first = form.post(reason="once", **confirmed(boss))
    assert first.status_code == 200
    second = form.post(reason="once")
    assert second.status_code == 409
    assert "This download form was already used; open it again." in second.text
    assert len(releases(console)) == 1
    [refusal] = refusals(console)
    assert code_of(refusal) == "form_reused" and details(refusal)["channel"] == "console"
    assert len(notices(console)) == 1


def test_form_of_another_target_session_or_too_old_is_refused(console):
    alice, sam = console.world.alice, console.world.sam
    boss = console.sign_in("boss")
    old_form = Form(boss, cert_path(alice.cert_ids[0]))
    other_target = boss.client.post(
        cert_path(alice.cert_ids[1]),
        data={"csrf_token": csrf_of(old_form.html), "form_token": old_form.token},
    )
    assert other_target.status_code == 409 and "does not belong" in other_target.text
    sales = console.sign_in("salesboss")
    sales_form = Form(sales, cert_path(sam.cert_ids[0]))
    other_session = boss.client.post(
        cert_path(sam.cert_ids[0]),
        data={"csrf_token": csrf_of(old_form.html), "form_token": sales_form.token},
    )
    assert other_session.status_code == 409
    forged = old_form.client.client.post(
        old_form.path, data={"csrf_token": csrf_of(old_form.html), "form_token": "f" * 43}
    )
    assert forged.status_code == 409
    console.clock.advance(minutes=11)
    stale = old_form.post()
    assert stale.status_code == 409 and "more than 10 minutes old" in stale.text
    assert_nothing_released(console)
    assert [code_of(e) for e in refusals(console)] == [
        "form_invalid",
        "form_invalid",
        "form_invalid",
        "form_expired",
    ]


@pytest.mark.parametrize("csrf", ["forged", "missing"])
def test_forged_or_missing_csrf_changes_nothing(console, csrf):
    boss = console.sign_in("boss")
    form = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    data = {"form_token": form.token, "reason": "x"}
    if csrf == "forged":
        data["csrf_token"] = "A" * 43
    answer = boss.client.post(form.path, data=data)
    assert answer.status_code == 403
    assert_nothing_released(console)
    with console.ports.db.read() as s:
        assert s.scalars(select(FormNonce.used_at)).one() is None
    # The form is still good.
    assert form.post(**confirmed(boss)).status_code == 200


# --- who may ---------------------------------------------------------------------------------


def test_clerk_without_the_privilege_is_refused_and_audited(console):
    alice = console.world.alice
    clerk = console.sign_in("clerk")
    for path in (cert_path(alice.cert_ids[1]), person_path(alice.person_id)):
        page = clerk.get(path)
        assert page.status_code == 403
        assert "This needs the privilege key_vault_download." in page.text
        assert "form_token" not in page.text
    assert [(code_of(e), e.target_type) for e in refusals(console)] == [
        ("forbidden", "certificate"),
        ("forbidden", "person"),
    ]
    with console.ports.db.read() as s:
        assert s.scalars(select(FormNonce)).all() == []
    answer = clerk.post(cert_path(alice.cert_ids[1]), {"form_token": "f" * 43})
    assert answer.status_code == 403 and "key_vault_download" in answer.text
    everything = clerk.post(person_path(alice.person_id), {"form_token": "f" * 43})
    assert everything.status_code == 403
    assert_nothing_released(console)
    # Exactly one refusal per request.
    assert len(refusals(console)) == 4


def test_other_organization_or_account_answers_not_found(console):
    alice, sam, olga = console.world.alice, console.world.sam, console.world.olga
    sales = console.sign_in("salesboss")
    assert sales.get(cert_path(alice.cert_ids[1])).status_code == 404
    assert sales.get(person_path(alice.person_id)).status_code == 404
    assert sales.post(cert_path(alice.cert_ids[1]), {"form_token": "f" * 43}).status_code == 404
    # Their own organization's works.
    assert Form(sales, cert_path(sam.cert_ids[0])).post(**confirmed(sales)).status_code == 200
    foreign = console.sign_in("foreignboss")
    assert foreign.get(cert_path(alice.cert_ids[1])).status_code == 404
    assert foreign.get(person_path(alice.person_id)).status_code == 404
    assert foreign.post(person_path(alice.person_id), {"form_token": "f" * 43}).status_code == 404
    boss = console.sign_in("boss")
    assert boss.get(cert_path(olga.cert_ids[0])).status_code == 404
    assert boss.get(cert_path(999_999)).status_code == 404
    assert [int(e.target_id) for e in releases(console)] == [sam.cert_ids[0]]


def test_certificate_without_a_key_answers_not_found(console):
    boss = console.sign_in("boss")
    path = cert_path(console.world.keyless_cert_id)
    page = boss.get(path)
    assert page.status_code == 404 and "no key in the vault" in page.text
    assert boss.post(path, {"form_token": "f" * 43}).status_code == 404
    assert_nothing_released(console)


def test_signed_out_browser_goes_to_sign_in(console):
    client = console.client()
    page = client.get(cert_path(console.world.alice.cert_ids[1]), follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/admin/login"


def test_old_form_tokens_are_swept(console):
    boss = console.sign_in("boss")
    old = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    with console.ports.db.transaction() as s:
        s.execute(update(FormNonce).values(created_at=console.clock.now - timedelta(days=2)))
    new = Form(boss, cert_path(console.world.alice.cert_ids[1]))
    with console.ports.db.read() as s:
        assert [row.purpose for row in s.scalars(select(FormNonce))] == [
            f"download:certificate:{console.world.alice.cert_ids[1]}"
        ]
    assert old.post().status_code == 409
    assert new.post(**confirmed(boss)).status_code == 200
