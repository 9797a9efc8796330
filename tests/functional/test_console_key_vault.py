"""The Key Vault page and its Key Vault Recovery Options dialog, through the real pages."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import func, select

from certvault.crypto import keys as keylib
from certvault.db.models import Certificate, EscrowedKey, KeyVaultSettings, ServiceKey
from certvault.services.directory import accounts
from certvault.services.kernel import tenancy
from certvault.services.kernel.ports import Ports
from certvault.services.vault import imports
from certvault.services.vault import settings as kv_settings
from tests.conftest import TEST_OPERATOR
from tests.factories import make_ca, make_cert, make_p12, new_key
from tests.functional.console_fixtures import console_fixture  # noqa: F401
from tests.functional.helpers import events

PAGE = "/admin/key-vault"
SAVE = "/admin/key-vault/recovery-options"
UPDATE = "key_vault.settings_update"
VECTORS = Path(__file__).parent.parent / "vectors" / "p12"
VECTOR_PASSWORD = "vector-pass-1234"
P12_PASSWORD = "signing-pass-5678"
LABELS = (
    "Recovery Method",
    "Digitally Sign iOS Mobile Config",
    "Subject",
    "Issuer",
    "Serial Number",
    "Expires",
    "If the signing certificate has expired, deliver profiles unsigned",
    "Include Exchange in iOS Mobile Config",
    "Exchange Server Host Name",
    "Use SSL for Communication",
    "Number of Past Days to Sync",
    "Prevent Moving Messages to Another Account",
)
DEFAULTS = (
    "Administrators only (no self-service recovery)",
    "No",
    "Not set",
    "Not set",
    "Not set",
    "Not set",
    "No",
    "No",
    "Not set",
    "Yes",
    "7 days",
    "No",
)
VALID = {
    "recovery_method": "email_code",
    "exchange_enabled": "on",
    "exchange_host": "mail.acme.example",
    "exchange_use_ssl": "on",
    "exchange_past_days": "14",
}
ROW_RE = re.compile(r'<th scope="row">([^<]*)</th><td>([^<]*)</td>')


def _table(page: str) -> list[tuple[str, str]]:
    start = page.index('<table class="details" id="key-vault-settings">')
    body = page[start : page.index("</table>", start)]
    return [(html.unescape(k), html.unescape(v)) for k, v in ROW_RE.findall(body)]


def _row(ports: Ports, slug: str = "acme") -> KeyVaultSettings | None:
    with ports.db.read() as s:
        account = tenancy.get_account(s, slug)
        return s.get(KeyVaultSettings, account.id)


def _service_keys(ports: Ports) -> list[ServiceKey]:
    with ports.db.read() as s:
        query = select(ServiceKey).where(ServiceKey.purpose == "profile-signing")
        return list(s.scalars(query.order_by(ServiceKey.id)))


def _signing_identity(days: int = 365, cn: str = "Acme Profile Signing"):  # type: ignore[no-untyped-def]
    key = new_key("ec256")
    ca = make_ca("Acme Signing CA")
    cert = make_cert(key, "profiles@acme.example", issuer=ca, days=days, cn=cn)
    return key, cert, make_p12(key, cert, P12_PASSWORD)


def _p12_file(data: bytes) -> dict[str, Any]:
    return {"signing_p12": ("signing.p12", data, "application/x-pkcs12")}


def _unchanged(console) -> None:  # type: ignore[no-untyped-def]
    """Nothing was stored: no settings row, no signing key, no successful update."""
    assert _row(console.ports) is None
    assert _service_keys(console.ports) == []
    assert [e for e in events(console.ports, UPDATE) if e.outcome == "success"] == []


# --- the page -----------------------------------------------------------------------------------


def test_page_shows_the_defaults_in_the_product_order(console):
    boss = console.sign_in("boss")
    page = boss.get(PAGE)
    assert page.status_code == 200
    assert _table(page.text) == list(zip(LABELS, DEFAULTS, strict=True))
    assert 'id="signing-expiry-warning"' not in page.text
    assert 'data-open-dialog="recovery-options"' in page.text
    assert (
        '<dialog id="recovery-options"' in page.text and "Key Vault Recovery Options" in page.text
    )
    assert '<dialog id="recovery-options" aria-labelledby="recovery-options-title">' in page.text
    assert 'enctype="multipart/form-data"' in page.text and f'action="{SAVE}"' in page.text
    assert _row(console.ports) is None  # looking stores nothing


@pytest.mark.parametrize(
    ("method", "said", "at_the_form"),
    [
        ("disabled", "the form tells them to ask their administrators", "recovered by the"),
        ("email_code", "get a one-time code by mail", "We mail a one-time code"),
        ("email_code_and_secret", "the code and the Secret ID", "We mail a one-time code"),
        (
            "admin_approval",
            "an administrator with Approve key recovery requests approves each request on the "
            "Recovery requests page; the person then gets a one-time link by mail",
            "An administrator approves each recovery",
        ),
    ],
)
def test_page_says_what_people_meet_at_the_form_it_links(console, method, said, at_the_form):
    kv_settings.update_recovery_options(
        console.ports, TEST_OPERATOR, "acme", kv_settings.RecoveryOptions(recovery_method=method)
    )
    page = console.sign_in("clerk").get(PAGE).text
    found = re.search(r'id="kv-method-in-use">(.*?)</p>', page, re.S)
    assert found is not None
    text = " ".join(found.group(1).split())
    label = kv_settings.RECOVERY_METHODS[method]
    assert text.startswith(f"Recovery Method in use: <strong>{label}</strong>.")
    assert said in text
    url = kv_settings.key_vault_ui_url(console.ports.settings, "acme")
    assert f'<a href="{url}" id="kv-form-link">{url}</a>' in page
    # The link leads to the form, which tells the person the same.
    form = console.client().get(urlsplit(url).path)
    assert form.status_code == 200 and at_the_form in " ".join(form.text.split())


def test_boss_edits_every_field_in_one_audited_change(console):
    boss = console.sign_in("boss")
    key, cert, p12 = _signing_identity()
    answer = boss.post(
        SAVE,
        {
            **VALID,
            "sign_profiles": "on",
            "unsigned_fallback": "on",
            "exchange_prevent_move": "on",
            "signing_password": P12_PASSWORD,
        },
        files=_p12_file(p12),
        csrf_from=PAGE,
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/admin/key-vault?notice=key_vault_saved"
    page = boss.get(answer.headers["location"])
    assert "The Key Vault Recovery Options were saved." in page.text
    serial = format(cert.serial_number, "X")
    expires = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    assert _table(page.text) == list(
        zip(
            LABELS,
            (
                "Email one-time code",
                "Yes",
                "CN=Acme Profile Signing",
                "CN=Acme Signing CA",
                serial,
                expires,
                "Yes",
                "Yes",
                "mail.acme.example",
                "Yes",
                "14 days",
                "Yes",
            ),
            strict=True,
        )
    )

    row = _row(console.ports)
    assert row is not None
    assert (row.recovery_method, row.sign_profiles, row.exchange_enabled) == (
        "email_code",
        True,
        True,
    )
    assert (row.exchange_host, row.exchange_use_ssl, row.exchange_past_days) == (
        "mail.acme.example",
        True,
        14,
    )
    assert row.exchange_prevent_move is True and row.unsigned_fallback is True
    [stored] = _service_keys(console.ports)
    assert row.signing_key_id == stored.id
    assert stored.certificate_der == cert.public_bytes(Encoding.DER)
    assert stored.spki_sha256 == keylib.spki_sha256(key.public_key())
    assert stored.chain_pem is None  # the file held no other certificate

    [event] = events(console.ports, UPDATE)
    assert (event.outcome, event.actor, event.target_type) == ("success", "admin:boss", "account")
    details = json.loads(event.details)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    assert details == {
        "old": {
            "recovery_method": "disabled",
            "sign_profiles": False,
            "unsigned_fallback": False,
            "exchange_enabled": False,
            "exchange_host": "",
            "exchange_past_days": 7,
            "exchange_prevent_move": False,
            "signing_certificate": None,
        },
        "new": {
            "recovery_method": "email_code",
            "sign_profiles": True,
            "unsigned_fallback": True,
            "exchange_enabled": True,
            "exchange_host": "mail.acme.example",
            "exchange_past_days": 14,
            "exchange_prevent_move": True,
            "signing_certificate": {"sha256": fingerprint, "serial": serial, "chain": []},
        },
    }
    # Key material goes nowhere near the audit log.
    pkcs8 = keylib.to_pkcs8_der(key)
    assert pkcs8.hex() not in event.details and P12_PASSWORD not in event.details


def test_a_second_save_audits_only_what_changed_and_nothing_when_nothing_did(console):
    boss = console.sign_in("boss")
    boss.post(SAVE, VALID, csrf_from=PAGE)
    boss.post(SAVE, {**VALID, "exchange_past_days": "0"}, csrf_from=PAGE)
    boss.post(SAVE, {**VALID, "exchange_past_days": "0"}, csrf_from=PAGE)
    updates = events(console.ports, UPDATE)
    assert len(updates) == 2
    assert json.loads(updates[1].details) == {
        "old": {"exchange_past_days": 14},
        "new": {"exchange_past_days": 0},
    }
    assert ("Number of Past Days to Sync", "No limit") in _table(boss.get(PAGE).text)


def test_replacing_the_signing_identity_deletes_the_old_key(console):
    boss = console.sign_in("boss")
    _, first, p12 = _signing_identity()
    form = {**VALID, "sign_profiles": "on", "signing_password": P12_PASSWORD}
    boss.post(SAVE, form, files=_p12_file(p12), csrf_from=PAGE)
    [old] = _service_keys(console.ports)
    _, second, p12 = _signing_identity(cn="Acme Profile Signing 2")
    answer = boss.post(SAVE, form, files=_p12_file(p12), csrf_from=PAGE)
    assert answer.status_code == 200 and answer.url.path == PAGE
    [new] = _service_keys(console.ports)
    assert new.id != old.id and new.certificate_der == second.public_bytes(Encoding.DER)
    row = _row(console.ports)
    assert row is not None and row.signing_key_id == new.id
    details = json.loads(events(console.ports, UPDATE)[-1].details)
    assert details["old"] == {
        "signing_certificate": {
            "sha256": first.fingerprint(hashes.SHA256()).hex(),
            "serial": format(first.serial_number, "X"),
            "chain": [],
        }
    }
    assert (
        details["new"]["signing_certificate"]["sha256"] == second.fingerprint(hashes.SHA256()).hex()
    )
    # Signing stays on without a new upload: the stored identity counts.
    again = boss.post(SAVE, {**form, "recovery_method": "admin_approval"}, csrf_from=PAGE)
    assert again.status_code == 200 and "Administrator approval" in again.text
    assert [k.id for k in _service_keys(console.ports)] == [new.id]


def test_the_signing_chain_is_stored_and_the_unsigned_fallback_offered(console):
    boss = console.sign_in("boss")
    page = boss.get(PAGE).text
    assert "If the signing certificate has expired, deliver profiles unsigned" in page
    assert "checked" not in _fallback_checkbox(page)
    key = new_key("ec256")
    root = make_ca("Acme Root")
    intermediate = make_ca("Acme Intermediate")  # the file's extra certificate, as it comes
    cert = make_cert(key, "profiles@acme.example", issuer=root, cn="Acme Profile Signing")
    p12 = make_p12(key, cert, P12_PASSWORD, chain=[intermediate[1], root[1]])
    form = {**VALID, "sign_profiles": "on", "unsigned_fallback": "on"}
    answer = boss.post(
        SAVE, {**form, "signing_password": P12_PASSWORD}, files=_p12_file(p12), csrf_from=PAGE
    )
    assert answer.status_code == 200 and answer.url.path == PAGE
    [stored] = _service_keys(console.ports)
    assert stored.chain_pem == "".join(
        c.public_bytes(Encoding.PEM).decode() for c in (intermediate[1], root[1])
    )
    details = json.loads(events(console.ports, UPDATE)[-1].details)
    assert details["new"]["unsigned_fallback"] is True
    assert details["new"]["signing_certificate"]["chain"] == [
        c.fingerprint(hashes.SHA256()).hex() for c in (intermediate[1], root[1])
    ]
    assert ("If the signing certificate has expired, deliver profiles unsigned", "Yes") in _table(
        answer.text
    )
    assert "checked" in _fallback_checkbox(boss.get("/admin/key-vault/edit").text)


def _fallback_checkbox(page: str) -> str:
    [tag] = re.findall(r'<input[^>]*name="unsigned_fallback"[^>]*>', page)
    return tag


def test_the_edit_page_works_without_javascript(console):
    boss = console.sign_in("boss")
    page = boss.get("/admin/key-vault/edit")
    assert page.status_code == 200
    assert "<h1>Key Vault Recovery Options</h1>" in page.text
    answer = boss.post(SAVE, VALID, csrf_from="/admin/key-vault/edit")
    assert answer.status_code == 200 and answer.url.path == PAGE
    row = _row(console.ports)
    assert row is not None and row.exchange_host == "mail.acme.example"


@pytest.mark.parametrize(
    ("host", "stored"),
    [
        ("Mail.Acme.Example.", "mail.acme.example"),
        ("192.0.2.10", "192.0.2.10"),
        ("2001:DB8::1", "2001:db8::1"),
        ("exchange", "exchange"),
    ],
)
def test_host_names_and_addresses_are_accepted(console, host, stored):
    boss = console.sign_in("boss")
    answer = boss.post(SAVE, {**VALID, "exchange_host": host}, csrf_from=PAGE)
    assert answer.status_code == 200 and answer.url.path == PAGE, answer.text
    row = _row(console.ports)
    assert row is not None and row.exchange_host == stored


# --- bad input ----------------------------------------------------------------------------------

SCRIPT = "<script>alert(1)</script>"
LONG_HOST = ".".join(["a" * 63] * 4)  # 255 characters


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exchange_past_days": "2"}, "Number of Past Days to Sync must be one of"),
        ({"exchange_past_days": "-1"}, "Number of Past Days to Sync must be one of"),
        ({"exchange_past_days": "x"}, "Number of Past Days to Sync must be one of"),
        ({"exchange_past_days": "32"}, "Number of Past Days to Sync must be one of"),
        ({"exchange_past_days": ""}, "Number of Past Days to Sync must be one of"),
        ({"exchange_host": "exa mple.com"}, "Exchange Server Host Name must be"),
        ({"exchange_host": "-bad-.com"}, "Exchange Server Host Name must be"),
        ({"exchange_host": LONG_HOST}, "Exchange Server Host Name must be"),
        ({"exchange_host": "10.0.0.256"}, "Exchange Server Host Name must be"),
        ({"exchange_host": SCRIPT}, "Exchange Server Host Name must be"),
        ({"exchange_host": ""}, "needs the Exchange Server Host Name"),
        ({"recovery_method": "root"}, "Recovery Method must be one of"),
        ({"recovery_method": ""}, "Recovery Method must be one of"),
        ({"recovery_method": SCRIPT}, "Recovery Method must be one of"),
        ({"exchange_past_days": SCRIPT}, "Number of Past Days to Sync must be one of"),
        ({"sign_profiles": "on"}, "needs a signing identity"),
    ],
)
def test_out_of_range_values_are_refused_and_change_nothing(console, changes, message):
    boss = console.sign_in("boss")
    form = {**VALID, **changes}
    answer = boss.post(SAVE, form, csrf_from=PAGE)
    assert answer.status_code == 422
    assert message in html.unescape(answer.text)
    # The page again, with the dialog open and what was entered, escaped.
    assert '<dialog id="recovery-options" aria-labelledby="recovery-options-title" open>' in (
        answer.text
    )
    assert f'value="{html.escape(form["exchange_host"])}"' in answer.text
    assert SCRIPT not in answer.text
    assert _table(answer.text) == list(zip(LABELS, DEFAULTS, strict=True))
    _unchanged(console)
    [refused] = events(console.ports, UPDATE)
    assert refused.outcome == "refused"
    assert json.loads(refused.details)["reason"] == "settings_invalid"


def test_an_overlong_field_is_refused_clearly(console):
    boss = console.sign_in("boss")
    answer = boss.post(SAVE, {**VALID, "exchange_host": "a" * 2000}, csrf_from=PAGE)
    assert answer.status_code == 422 and "at most 1024 characters" in answer.text
    assert _row(console.ports) is None


def test_an_upload_over_the_body_limit_is_refused(console):
    boss = console.sign_in("boss")
    answer = boss.post(SAVE, VALID, files=_p12_file(b"0" * 70_000), csrf_from=PAGE)
    assert answer.status_code == 413
    _unchanged(console)


@pytest.mark.parametrize(
    ("vector", "password", "code_message"),
    [
        ("p256.p12", "wrong-password-1", "The password does not open this PKCS#12 file."),
        ("certs-only.p12", VECTOR_PASSWORD, "The PKCS#12 file holds no private key."),
        ("key-only.p12", VECTOR_PASSWORD, "holds a private key without its certificate"),
        ("mismatch.p12", VECTOR_PASSWORD, "holds a private key without its certificate"),
        ("two-pairs.p12", VECTOR_PASSWORD, "must hold exactly one key"),
        ("not-a-p12", VECTOR_PASSWORD, "not a readable PKCS#12 file"),
    ],
)
def test_unusable_signing_files_are_refused(console, vector, password, code_message):
    boss = console.sign_in("boss")
    data = (
        b"this is not a PKCS#12 file" if vector == "not-a-p12" else (VECTORS / vector).read_bytes()
    )
    answer = boss.post(
        SAVE,
        {**VALID, "sign_profiles": "on", "signing_password": password},
        files=_p12_file(data),
        csrf_from=PAGE,
    )
    assert answer.status_code == 422
    assert code_message in answer.text
    assert password not in answer.text  # never echoed
    assert "open>" in answer.text
    _unchanged(console)


@pytest.mark.parametrize(
    "vector",
    ["iter-mac-100m.p12", "iter-certs-100m.p12", "iter-key-100m.p12", "iter-nested-100m.p12"],
)
def test_a_signing_file_asking_for_100m_kdf_rounds_is_refused_fast(console, vector):
    boss = console.sign_in("boss")
    started = time.monotonic()
    answer = boss.post(
        SAVE,
        {**VALID, "signing_password": VECTOR_PASSWORD},
        files=_p12_file((VECTORS / vector).read_bytes()),
        csrf_from=PAGE,
    )
    assert time.monotonic() - started < 5
    assert answer.status_code == 422
    assert "more key-derivation" in answer.text
    _unchanged(console)


def test_an_expired_signing_certificate_is_refused(console):
    boss = console.sign_in("boss")
    key = new_key("ec256")
    cert = make_cert(key, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=30), days=10)
    answer = boss.post(
        SAVE,
        {**VALID, "signing_password": P12_PASSWORD},
        files=_p12_file(make_p12(key, cert, P12_PASSWORD)),
        csrf_from=PAGE,
    )
    assert answer.status_code == 422 and "The signing certificate has expired." in answer.text
    _unchanged(console)


def test_html_in_the_signing_certificate_is_shown_escaped(console):
    boss = console.sign_in("boss")
    _, cert, p12 = _signing_identity(cn=SCRIPT)
    boss.post(
        SAVE, {**VALID, "signing_password": P12_PASSWORD}, files=_p12_file(p12), csrf_from=PAGE
    )
    page = boss.get(PAGE).text
    assert SCRIPT not in page
    assert "&lt;script" in page
    assert ("Subject", cert.subject.rfc4514_string()) in _table(page)


# --- who may -------------------------------------------------------------------------------------


@pytest.mark.parametrize("login", ["clerk", "salesboss"])
def test_admins_without_account_settings_rights_see_but_cannot_edit(console, login):
    admin = console.sign_in(login)
    page = admin.get(PAGE)
    assert page.status_code == 200
    assert _table(page.text) == list(zip(LABELS, DEFAULTS, strict=True))
    assert "recovery-options" not in page.text and "/admin/key-vault/edit" not in page.text
    assert admin.get("/admin/key-vault/edit").status_code == 403
    _, _, p12 = _signing_identity()
    answer = admin.post(
        SAVE, {**VALID, "signing_password": P12_PASSWORD}, files=_p12_file(p12), csrf_from=PAGE
    )
    assert answer.status_code == 403
    _unchanged(console)
    [refused] = events(console.ports, UPDATE)
    assert refused.outcome == "refused" and json.loads(refused.details)["reason"] == "forbidden"


def test_another_accounts_settings_stay_apart(console):
    console.sign_in("boss").post(SAVE, VALID, csrf_from=PAGE)
    foreign = console.sign_in("foreignboss")
    assert _table(foreign.get(PAGE).text) == list(zip(LABELS, DEFAULTS, strict=True))
    assert _row(console.ports, "other") is None


@pytest.mark.parametrize("token", [None, "forged-token"])
def test_forged_or_missing_csrf_is_refused(console, token):
    boss = console.sign_in("boss")
    boss.get(PAGE)
    data = {**VALID} if token is None else {**VALID, "csrf_token": token}
    answer = boss.client.post(SAVE, data=data)
    assert answer.status_code == 403
    _unchanged(console)
    assert events(console.ports, UPDATE) == []


def test_key_vault_disabled_shows_nothing_and_stores_nothing(console, operator):
    boss = console.sign_in("boss")
    csrf = boss.token(PAGE)
    accounts.set_key_vault(console.ports, operator, "acme", False)
    page = boss.get(PAGE)
    assert page.status_code == 200
    assert "Key Vault is not enabled for this account." in page.text
    assert "<table" not in page.text and '<form method="post" action="/admin/key-vault' not in (
        page.text
    )
    assert "recovery-options" not in page.text
    assert boss.get("/admin/key-vault/edit").status_code == 403
    answer = boss.client.post(SAVE, data={**VALID, "csrf_token": csrf})
    assert answer.status_code == 403
    assert "Key Vault is not enabled for this account." in answer.text
    _unchanged(console)


# --- the expiry warning ---------------------------------------------------------------------------


@pytest.mark.parametrize(("days", "warned"), [(10, True), (60, False)])
def test_expiry_warning_within_30_days(console, days, warned):
    boss = console.sign_in("boss")
    key = new_key("ec256")
    cert = make_cert(key, not_before=console.clock.now - dt.timedelta(days=1), days=days + 1)
    boss.post(
        SAVE,
        {**VALID, "signing_password": P12_PASSWORD},
        files=_p12_file(make_p12(key, cert, P12_PASSWORD)),
        csrf_from=PAGE,
    )
    page = boss.get(PAGE).text
    assert ('id="signing-expiry-warning"' in page) is warned
    if warned:
        assert f"expires on {cert.not_valid_after_utc:%Y-%m-%d}" in page
        assert "profile downloads are refused." in " ".join(page.split())
        console.clock.advance(days=days + 1)
        # Boss's session timed out meanwhile; the clerk signs in for the first time and sees it.
        later = console.sign_in("clerk").get(PAGE).text
        assert 'id="signing-expiry-warning"' in later and "expired on" in later


# --- the signing key is a service key ------------------------------------------------------------


def test_the_signing_key_can_never_be_released(console, operator):
    boss = console.sign_in("boss")
    key, cert, p12 = _signing_identity()
    boss.post(
        SAVE, {**VALID, "signing_password": P12_PASSWORD}, files=_p12_file(p12), csrf_from=PAGE
    )
    spki = keylib.spki_sha256(key.public_key())
    sha256 = cert.fingerprint(hashes.SHA256())
    with console.ports.db.read() as s:
        assert s.scalar(select(func.count()).where(EscrowedKey.spki_sha256 == spki)) == 0
        assert s.scalar(select(func.count()).where(Certificate.spki_sha256 == spki)) == 0
        assert s.scalar(select(func.count()).where(Certificate.sha256 == sha256)) == 0
    # Brought in again as a user's key, it is refused at the vault's door.
    [entry] = imports.import_p12(console.ports, operator, "acme", p12, P12_PASSWORD)
    assert entry.code == "service_key"
    with console.ports.db.read() as s:
        assert s.scalar(select(func.count()).where(EscrowedKey.spki_sha256 == spki)) == 0


def test_an_escrowed_key_cannot_become_the_signing_key(console, operator):
    boss = console.sign_in("boss")
    key, cert, p12 = _signing_identity()
    [entry] = imports.import_p12(console.ports, operator, "acme", p12, P12_PASSWORD)
    assert entry.ok, entry.message
    answer = boss.post(
        SAVE, {**VALID, "signing_password": P12_PASSWORD}, files=_p12_file(p12), csrf_from=PAGE
    )
    assert answer.status_code == 422 and "held in the vault as an escrowed key" in answer.text
    _unchanged(console)
