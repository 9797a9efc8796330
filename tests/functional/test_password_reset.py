"""Password resets of administrators: a single-use set-password link, mailed (read from a real
SMTP server), started by the operator's `certvault admin reset-password` or by an account
administrator on the Admins page (after confirming their own password and code). The resetter
never sees the link or the password; the old password works until the link is used; TOTP stays
and the page asks for a code; sessions end when the password is set; every step and every
refusal is audited without secrets."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from certvault.db.models import AuditEvent, MailMessage, PasswordReset
from certvault.errors import NotFound
from certvault.services.access import admins, password_links, password_resets
from certvault.services.access.tokens import token_digest
from certvault.services.kernel import notify, seals
from certvault.services.kernel.ports import open_ports
from certvault.services.kernel.ratelimit import DatabaseRateLimiter
from certvault.web.app import create_app
from tests.conftest import TEST_OPERATOR
from tests.functional import cli_env
from tests.functional.console_fixtures import (  # noqa: F401
    PASSWORD,
    ConsoleClient,
    ConsoleWorld,
    console_fixture,
    csrf_of,
)
from tests.functional.helpers import events, mails
from tests.functional.recovery_fixtures import settings_fixture  # noqa: F401 - mail to smtp_server
from tests.functional.smtp_server import SmtpServer, smtp_server  # noqa: F401 - the fixture
from tests.functional.test_control_characters import _drive_forms as drive_forms
from tests.functional.test_control_characters import forms_of

PAGE = password_resets.PAGE_PATH
PUBLIC = "https://certs.example.org"
LINK_RE = re.compile(re.escape(PUBLIC + PAGE) + r"\?token=([A-Za-z0-9_-]+)")
ERROR_RE = re.compile(r'id="error"><p>(.*?)</p>', re.S)
NOTICE_RE = re.compile(r'id="notice"><p>(.*?)</p>', re.S)
NEW_PASSWORD = "a-brand-new-password-4711"


# --- helpers ----------------------------------------------------------------------------------


def _links(console: ConsoleWorld, smtp: SmtpServer, address: str) -> list[str]:
    """The tokens of the set-password links delivered to ``address`` so far."""
    console.clock.advance(minutes=1)  # the outbox stamps by the wall clock
    notify.send_pending(console.ports)
    found = []
    for m in smtp.messages:
        if address in m.rcpt_tos and m.subject == password_resets.SUBJECT:
            match = LINK_RE.search(m.body)
            assert match is not None, m.body
            found.append(match.group(1))
    return found


def _reset(who: ConsoleClient, admin_id: int, confirm: bool = True) -> Any:
    data = {"reset_password": PASSWORD, "reset_code": who.next_code()} if confirm else {}
    return who.post(
        f"/admin/admins/{admin_id}/reset-password", data, csrf_from=f"/admin/admins/{admin_id}"
    )


def _open(browser: TestClient, token: str) -> Any:
    return browser.get(PAGE, params={"token": token})


def _set(
    browser: TestClient,
    token: str,
    password: str = NEW_PASSWORD,
    again: str | None = None,
    code: str = "",
) -> Any:
    page = browser.get("/admin/login")  # any page: a CSRF token for this browser
    fields = {
        "csrf_token": csrf_of(page.text),
        "token": token,
        "password": password,
        "password_again": password if again is None else again,
        "code": code,
    }
    return browser.post(PAGE, data=fields)


def _sign_in(console: ConsoleWorld, login: str, password: str, code: str) -> Any:
    client = console.client()
    page = client.get("/admin/login")
    data = {"account": "acme", "login": login, "password": password, "code": code}
    return client.post("/admin/login", data={"csrf_token": csrf_of(page.text), **data})


def _error(answer: Any) -> str:
    found = ERROR_RE.search(answer.text)
    assert found is not None, answer.text
    return found.group(1).strip()


def _refusals(ports: Any, action: str) -> list[str]:
    return [
        json.loads(e.details)["reason"] for e in events(ports, action) if e.outcome == "refused"
    ]


def _no_secrets(ports: Any, *secrets: str) -> None:
    """No audit event and no stored message holds any of ``secrets``."""
    with ports.db.read() as s:
        stored = [f"{e.actor} {e.target_id} {e.details}" for e in s.scalars(select(AuditEvent))] + [
            f"{m.to_addr} {m.subject} {m.body}" for m in s.scalars(select(MailMessage))
        ]
    for secret in secrets:
        assert not any(secret in row for row in stored), "a secret was stored"


# --- the console: an account administrator resets, the administrator sets ---------------------


def test_console_reset_mails_a_link_that_sets_the_password_and_ends_sessions(
    console,
    smtp_server,  # noqa: F811
):
    boss = console.sign_in("boss")
    clerk = console.sign_in("clerk")
    clerk_id = console.admin_ids["clerk"]

    answer = _reset(boss, clerk_id)
    assert answer.status_code == 200 and answer.url.path == f"/admin/admins/{clerk_id}"
    assert "was mailed" in NOTICE_RE.search(answer.text).group(1)
    [token] = _links(console, smtp_server, "clerk@acme.example")
    assert len(token) >= 43  # 256 random bits
    # The resetter's pages never hold the link.
    assert token not in answer.text and token not in boss.get(f"/admin/admins/{clerk_id}").text
    # Only its digest is stored; the mail body is sealed at rest.
    with console.ports.db.read() as s:
        row = s.scalars(select(PasswordReset)).one()
        assert row.token_sha256 != token and row.used_at is None
        assert row.requested_by == "admin:boss"
    _no_secrets(console.ports, token)

    # Until the link is used, the old password still works (a reset cannot lock anyone out).
    assert clerk.get("/admin/").status_code == 200
    # GET only shows the form, and asks for a code: TOTP is kept.
    browser = console.client()
    page = _open(browser, token)
    assert page.status_code == 200
    assert 'id="reset-login">clerk<' in page.text and 'name="code"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert _open(browser, token).status_code == 200  # not used up by looking

    done = _set(browser, token, code=clerk.next_code())
    assert done.status_code == 200, done.text
    assert 'id="password-set"' in done.text and NEW_PASSWORD not in done.text
    # The old sessions ended; the old password no longer works, the new one does (with TOTP).
    assert clerk.get("/admin/").url.path == "/admin/login"
    old = _sign_in(console, "clerk", PASSWORD, clerk.next_code())
    assert old.status_code == 401
    new = _sign_in(console, "clerk", NEW_PASSWORD, clerk.next_code())
    assert new.status_code == 200 and new.url.path == "/admin/"
    # Single use.
    again = _set(console.client(), token, code=clerk.next_code())
    assert again.status_code == 409 and "does not work" in _error(again)

    [requested] = events(console.ports, password_resets.REQUEST)
    assert requested.actor == "admin:boss" and requested.target_id == str(clerk_id)
    assert json.loads(requested.details)["email"] == "clerk@acme.example"
    [set_event] = events(console.ports, password_links.SET)
    assert set_event.actor == "admin:clerk" and set_event.target_id == str(clerk_id)
    details = json.loads(set_event.details)
    assert details["requested_by"] == "admin:boss" and details["sessions_ended"] >= 1
    assert _refusals(console.ports, password_links.LINK) == ["used"]
    changed = [m for m in mails(console.ports) if m.subject == password_links.CHANGED_SUBJECT]
    assert [m.to_addr for m in changed] == ["clerk@acme.example"]
    _no_secrets(console.ports, token, NEW_PASSWORD, PASSWORD)
    assert seals.check_rows(console.ports).ok


def test_the_console_asks_the_resetter_to_confirm_it_is_them(console, smtp_server):  # noqa: F811
    boss = console.sign_in("boss")
    clerk_id = console.admin_ids["clerk"]
    page = boss.get(f"/admin/admins/{clerk_id}")
    assert 'id="reset-password"' in page.text and 'name="reset_code"' in page.text

    unconfirmed = _reset(boss, clerk_id, confirm=False)
    assert unconfirmed.status_code == 403 and "Confirm" in _error(unconfirmed)
    wrong = boss.post(
        f"/admin/admins/{clerk_id}/reset-password",
        {"reset_password": "not-my-password-at-all", "reset_code": boss.next_code()},
    )
    assert wrong.status_code == 401
    assert _links(console, smtp_server, "clerk@acme.example") == []
    assert _refusals(console.ports, password_resets.REQUEST) == ["reauthentication_required"]
    with console.ports.db.read() as s:
        assert s.scalars(select(PasswordReset)).all() == []


def test_a_wrong_code_or_a_bad_password_leaves_the_link_working(console, smtp_server):  # noqa: F811
    clerk = console.sign_in("clerk")
    password_resets.request_reset(console.ports, TEST_OPERATOR, "acme", console.admin_ids["clerk"])
    [token] = _links(console, smtp_server, "clerk@acme.example")
    browser = console.client()

    wrong = _set(browser, token, code="000000" if clerk.next_code() != "000000" else "111111")
    assert wrong.status_code == 422 and "code is not right" in _error(wrong)
    assert 'name="token"' in wrong.text  # the form again
    assert _set(browser, token, code="").status_code == 422
    differ = _set(browser, token, again=NEW_PASSWORD + "x", code=clerk.next_code())
    assert differ.status_code == 422 and "not the same" in _error(differ)
    short = _set(browser, token, password="short-one", code=clerk.next_code())
    assert short.status_code == 422 and "12" in _error(short)
    for answer in (wrong, differ, short):
        assert NEW_PASSWORD not in answer.text and "short-one" not in answer.text
    with console.ports.db.read() as s:
        assert s.scalars(select(PasswordReset)).one().used_at is None
    assert _refusals(console.ports, password_links.LINK) == ["bad_totp", "bad_totp"]
    # Refused tries are not put in the administrator's name: whoever holds a link is not yet
    # known to be them.
    refused = events(console.ports, password_links.LINK)
    assert {(e.actor, e.target_id) for e in refused} == {
        ("web-password-link", str(console.admin_ids["clerk"]))
    }
    assert clerk.get("/admin/").status_code == 200  # nothing changed

    assert _set(browser, token, code=clerk.next_code()).status_code == 200


def test_an_expired_or_replaced_link_is_refused(console, smtp_server):  # noqa: F811
    clerk_id = console.admin_ids["clerk"]
    password_resets.request_reset(console.ports, TEST_OPERATOR, "acme", clerk_id)
    password_resets.request_reset(console.ports, TEST_OPERATOR, "acme", clerk_id)
    [first, second] = _links(console, smtp_server, "clerk@acme.example")
    browser = console.client()
    replaced = _open(browser, first)
    assert replaced.status_code == 409 and "does not work" in _error(replaced)
    assert _open(browser, second).status_code == 200

    console.clock.advance(minutes=console.ports.settings.password_reset_minutes)
    expired = _open(browser, second)
    assert expired.status_code == 409
    assert _set(browser, second).status_code == 409
    assert _refusals(console.ports, password_links.LINK) == ["replaced", "expired", "expired"]
    # The request event names how many older links it replaced.
    details = [json.loads(e.details) for e in events(console.ports, password_resets.REQUEST)]
    assert [d["links_replaced"] for d in details] == [0, 1]


def test_a_new_address_a_totp_reset_or_a_deactivation_ends_open_links(console, smtp_server):  # noqa: F811
    clerk_id = console.admin_ids["clerk"]
    browser = console.client()

    def mailed() -> str:
        password_resets.request_reset(console.ports, TEST_OPERATOR, "acme", clerk_id)
        return _links(console, smtp_server, "clerk@acme.example")[-1]

    moved = mailed()
    admins.update_admin(
        console.ports,
        TEST_OPERATOR,
        "acme",
        clerk_id,
        role="account",
        organizations=(),
        privileges=("persons_manage", "certificates_manage"),
        email="clerk@elsewhere.example",
    )
    assert _open(browser, moved).status_code == 409
    admins.update_admin(
        console.ports,
        TEST_OPERATOR,
        "acme",
        clerk_id,
        role="account",
        organizations=(),
        privileges=("persons_manage", "certificates_manage"),
        email="clerk@acme.example",
    )
    reset = mailed()
    admins.reset_totp(console.ports, TEST_OPERATOR, "acme", "clerk")
    assert _open(browser, reset).status_code == 409
    deactivated = mailed()
    admins.deactivate_admin(console.ports, TEST_OPERATOR, "acme", clerk_id)
    assert _open(browser, deactivated).status_code == 409
    assert _refusals(console.ports, password_links.LINK) == ["replaced"] * 3
    assert seals.check_rows(console.ports).ok


def test_who_may_reset_whom(console, smtp_server):  # noqa: F811
    boss_id, clerk_id = console.admin_ids["boss"], console.admin_ids["clerk"]
    # An organization administrator (a helpdesk) does not manage administrators.
    sales = console.sign_in("salesboss")
    refused = sales.post(
        f"/admin/admins/{clerk_id}/reset-password",
        {"reset_password": PASSWORD, "reset_code": sales.next_code()},
    )
    assert refused.status_code == 403
    # An account administrator cannot reset one who holds privileges they do not hold.
    clerk = console.sign_in("clerk")
    assert _reset(clerk, boss_id).status_code == 403
    # Nor an administrator of another account: as missing as a made-up id.
    foreign = console.sign_in("foreignboss")
    seen = foreign.post(
        f"/admin/admins/{clerk_id}/reset-password",
        {"reset_password": PASSWORD, "reset_code": foreign.next_code()},
    )
    missing = foreign.post(
        "/admin/admins/999999/reset-password",
        {"reset_password": PASSWORD, "reset_code": foreign.next_code()},
    )
    assert seen.status_code == missing.status_code == 404
    assert _error(seen) == _error(missing)

    assert _refusals(console.ports, password_resets.REQUEST) == [
        "forbidden",
        "forbidden",
        "not_found",
        "not_found",
    ]
    with console.ports.db.read() as s:
        assert s.scalars(select(PasswordReset)).all() == []
    assert _links(console, smtp_server, "clerk@acme.example") == []
    assert _links(console, smtp_server, "boss@acme.example") == []


def test_an_administrator_without_an_address_or_inactive_gets_no_link(console):
    with pytest.raises(password_resets.NoAddress):  # salesboss has no address
        password_resets.request_reset(
            console.ports, TEST_OPERATOR, "acme", console.admin_ids["salesboss"]
        )
    admins.deactivate_admin(console.ports, TEST_OPERATOR, "acme", console.admin_ids["clerk"])
    with pytest.raises(password_resets.AdminInactive):
        password_resets.request_reset(
            console.ports, TEST_OPERATOR, "acme", console.admin_ids["clerk"]
        )
    with console.ports.db.read() as s:
        assert s.scalars(select(PasswordReset)).all() == []


# --- the database is not trusted ---------------------------------------------------------------


def test_a_tampered_or_inserted_reset_row_is_refused(console, smtp_server):  # noqa: F811
    clerk_id, boss_id = console.admin_ids["clerk"], console.admin_ids["boss"]
    password_resets.request_reset(console.ports, TEST_OPERATOR, "acme", clerk_id)
    [token] = _links(console, smtp_server, "clerk@acme.example")
    with console.ports.db.engine.begin() as conn:
        # The link moved to another administrator, with SQL.
        conn.execute(text("UPDATE password_resets SET admin_id = :b"), {"b": boss_id})
        row = dict(conn.execute(text("SELECT * FROM password_resets")).mappings().one())
    answer = _set(console.client(), token)
    assert answer.status_code == 503 and "integrity" in _error(answer)
    problems = seals.check_rows(console.ports).problems
    assert [(p.table, p.uuid) for p in problems] == [("password_resets", row["uuid"])]

    # A row put in by SQL with a token the attacker chose.
    chosen = "chosen-by-the-attacker-0123456789abcdefghijk"
    forged = {
        **{k: v for k, v in row.items() if k != "id"},
        "uuid": str(uuid.uuid4()),
        "token_sha256": token_digest(chosen),
        "mac": None,
    }
    with console.ports.db.engine.begin() as conn:
        names = ", ".join(forged)
        values = ", ".join(":" + n for n in forged)
        conn.execute(text(f"INSERT INTO password_resets ({names}) VALUES ({values})"), forged)
    assert _open(console.client(), chosen).status_code == 503
    refused = {e.target_id for e in events(console.ports, "integrity.row_refused")}
    assert {row["uuid"], forged["uuid"]} <= refused


# --- hostile input ------------------------------------------------------------------------------


def test_hostile_input_is_refused_cleanly(console, smtp_server):  # noqa: F811
    clerk = console.sign_in("clerk")
    password_resets.request_reset(console.ports, TEST_OPERATOR, "acme", console.admin_ids["clerk"])
    [token] = _links(console, smtp_server, "clerk@acme.example")
    browser = console.client()
    for bad in ("x" * 5000, token + "\x00", token[:-1] + "\u202e", "", "../../etc/passwd"):
        answer = _open(browser, bad)
        assert answer.status_code in (400, 409), (repr(bad[:20]), answer.status_code)
        assert answer.headers["content-type"].startswith("text/html")
        assert bad[:40] not in answer.text or not bad
    assert _set(browser, "x" * 5000).status_code in (409, 422)
    # Control characters and overlong fields: refused before anything is read.
    control = _set(browser, token, password=NEW_PASSWORD + "\x1b", code=clerk.next_code())
    assert control.status_code == 422 and NEW_PASSWORD not in control.text
    overlong = _set(browser, token, password="p" * 5000, code=clerk.next_code())
    assert overlong.status_code == 422 and "p" * 100 not in overlong.text
    too_long = "q" * 1030
    assert _set(browser, token, password=too_long, code=clerk.next_code()).status_code == 422
    for account, login in (
        ("acme", "clerk\x00"),
        ("acme", "x" * 5000),
        ("acme", "clerk\n"),
        ("acme\x00", "clerk"),
        ("a" * 5000, "clerk"),
    ):
        with pytest.raises(NotFound):
            password_resets.request_reset_by_login(console.ports, TEST_OPERATOR, account, login)
    with console.ports.db.read() as s:
        rows = s.scalars(select(PasswordReset)).all()
        assert len(rows) == 1 and rows[0].used_at is None
    assert _set(browser, token, code=clerk.next_code()).status_code == 200


def test_every_field_of_the_set_password_page_refuses_control_characters(console, smtp_server):  # noqa: F811
    console.sign_in("clerk")  # TOTP set up: the page asks for a code
    password_resets.request_reset(console.ports, TEST_OPERATOR, "acme", console.admin_ids["clerk"])
    [token] = _links(console, smtp_server, "clerk@acme.example")
    browser = console.client()
    forms = forms_of(PAGE, _open(browser, token).text)
    assert {"token", "password", "password_again", "code"} <= set(forms[0].names)
    assert drive_forms(browser, forms) >= 4
    with console.ports.db.read() as s:
        assert s.scalars(select(PasswordReset)).one().used_at is None
    assert events(console.ports, password_links.SET) == []


def test_link_tries_are_rate_limited_per_client(console, smtp_server):  # noqa: F811
    console.ports.settings.password_reset_checks_per_hour_ip = 3
    password_resets.request_reset(console.ports, TEST_OPERATOR, "acme", console.admin_ids["clerk"])
    [token] = _links(console, smtp_server, "clerk@acme.example")
    browser = console.client()
    for _ in range(3):
        assert _open(browser, "guess-" + uuid.uuid4().hex + "0123456789").status_code == 409
    limited = _open(browser, token)
    assert limited.status_code == 429 and "Retry-After" in limited.headers
    assert _refusals(console.ports, password_links.LINK) == ["unknown"] * 3 + ["rate_limited"]


# --- the operator's command ---------------------------------------------------------------------


@pytest.fixture
def cli(backend, tmp_path):
    yield from cli_env.cli_for(backend, tmp_path)


def test_cli_reset_mails_a_link_that_sets_the_password(cli, smtp_server):  # noqa: F811
    cli.bootstrap()
    ports = cli.ports()
    try:
        admins.create_admin(
            ports, TEST_OPERATOR, "acme", "boss", password=PASSWORD, email="boss@acme.example"
        )
    finally:
        ports.close()
    done = cli.run("admin", "reset-password", "boss", "--account", "acme")
    assert done.returncode == 0, cli_env.text(done)
    said = cli_env.text(done)
    assert "was mailed to boss@acme.example" in said and "token=" not in said
    unknown = cli.run("admin", "reset-password", "nobody", "--account", "acme")
    assert unknown.returncode == 1 and "[not_found]" in cli_env.text(unknown)

    ports = _open_with_smtp(cli, smtp_server)
    try:
        assert notify.send_pending(ports).sent == 1
        [mail] = [m for m in smtp_server.messages if m.subject == password_resets.SUBJECT]
        assert mail.rcpt_tos == ("boss@acme.example",)
        token = re.search(r"\?token=([A-Za-z0-9_-]+)", mail.body).group(1)
        limiter = DatabaseRateLimiter(ports.db, clock=lambda: 1_800_000_030)
        browser = TestClient(create_app(ports, limiter=limiter), base_url="https://testserver")
        page = _open(browser, token)
        assert page.status_code == 200 and 'name="code"' not in page.text  # no TOTP yet
        assert _set(browser, token).status_code == 200
        assert _set(browser, token).status_code == 409
        # The new password signs in (to the TOTP set-up step); the old one no longer does.
        for password, expected in ((PASSWORD, 401), (NEW_PASSWORD, 200)):
            login_page = browser.get("/admin/login")
            fields = {"account": "acme", "login": "boss", "password": password, "code": ""}
            answer = browser.post(
                "/admin/login", data={"csrf_token": csrf_of(login_page.text), **fields}
            )
            assert answer.status_code == expected, answer.text
        assert answer.url.path == "/admin/totp"
        [requested] = events(ports, password_resets.REQUEST)
        assert requested.actor.startswith("operator:")
        _no_secrets(ports, token, NEW_PASSWORD)
    finally:
        ports.close()


def _open_with_smtp(cli: cli_env.Cli, smtp: SmtpServer) -> Any:
    return open_ports(cli.settings(smtp_host=smtp.host, smtp_port=smtp.port, smtp_security="none"))
