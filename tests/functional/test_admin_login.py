"""Console sign-in through the real pages (TestClient over https): password, TOTP, sessions,
lockout, CSRF, audit."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import argon2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db.models import Admin, AuditEvent, WebSession
from certvault.services.access import admins, web_sessions
from certvault.services.access.web_sessions import SESSION_COOKIE
from certvault.services.directory import accounts
from certvault.services.kernel.passwords import PasswordChecksBusy, PasswordHashing
from certvault.services.kernel.ratelimit import DatabaseRateLimiter
from certvault.web.app import create_app
from certvault.web.security import CSRF_COOKIE
from tests.conftest import make_settings
from tests.functional import cli_env
from tests.functional.console_fixtures import CSRF_RE, SECRET_RE, Clock, code_for
from tests.functional.helpers import count_argon2

PASSWORD = "console-password-0123"
LOGIN_LIMIT = 3


@pytest.fixture
def settings(tmp_path, database_url):
    limits = {"logins_per_minute_login": LOGIN_LIMIT, "logins_per_minute_ip": 50}
    return make_settings(tmp_path / "home", database_url, **limits)


@pytest.fixture
def clock(ports):
    c = Clock()
    ports.clock = c
    return c


@pytest.fixture
def console(ports, operator, account, clock):
    for login, extra in (
        ("alice", {}),
        ("robot", {"api_only": True}),
        ("gone", {}),
    ):
        admins.create_admin(ports, operator, "acme", login, password=PASSWORD, **extra)

    def deactivate(session):
        session.scalars(select(Admin).where(Admin.login == "gone")).one().active = False

    ports.db.run(deactivate)
    # The limiter's clock stands still: no window boundary falls inside a test.
    limiter = DatabaseRateLimiter(ports.db, clock=lambda: 1_800_000_030)
    return TestClient(create_app(ports, limiter=limiter), base_url="https://testserver")


def csrf(client: TestClient, path: str = "/admin/login") -> str:
    page = client.get(path)
    assert page.status_code == 200
    return CSRF_RE.search(page.text).group(1)


def post_login(client, *, login="alice", password=PASSWORD, code="", account="acme", **kw):
    data = {"csrf_token": csrf(client), "account": account, "login": login}
    data.update(password=password, code=code)
    return client.post("/admin/login", data=data, **kw)


def enroll(client: TestClient, clock: Clock, login: str = "alice") -> str:
    """Sign in for the first time and set up TOTP; the base32 secret the page showed."""
    page = post_login(client, login=login)
    assert page.status_code == 200 and page.url.path == "/admin/totp"
    assert "<svg" in page.text and "otpauth" not in page.text.split("<svg", 1)[0]
    secret = SECRET_RE.search(page.text).group(1)
    token = CSRF_RE.search(page.text).group(1)
    done = client.post(
        "/admin/totp", data={"csrf_token": token, "code": code_for(secret, clock.now)}
    )
    assert done.status_code == 200 and done.url.path == "/admin/"
    assert "Welcome, alice" in done.text or login != "alice"
    return secret


def sign_in(client: TestClient, clock: Clock, secret: str, login: str = "alice"):
    clock.advance(seconds=30)  # a code is good once: take the next time step
    return post_login(client, login=login, code=code_for(secret, clock.now))


def events(ports, action):
    with ports.db.read() as s:
        return list(
            s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        )


def reasons(ports) -> list[str]:
    return [e.details for e in events(ports, "admin.sign_in") if e.outcome == "refused"]


def test_enroll_then_sign_in_with_totp(ports, console, clock):
    secret = enroll(console, clock)
    with ports.db.read() as s:
        admin = s.scalars(select(Admin).where(Admin.login == "alice")).one()
        assert admin.totp_secret and secret not in admin.totp_secret  # sealed, not the text
    assert [e.outcome for e in events(ports, "admin.totp_enroll")] == ["success"]

    console.cookies.clear()
    page = sign_in(console, clock, secret)
    assert page.status_code == 200 and page.url.path == "/admin/"
    assert "Welcome, alice" in page.text and "Acme Corp" in page.text
    signed = [e for e in events(ports, "admin.sign_in") if e.outcome == "success"]
    assert len(signed) == 2 and signed[-1].actor == "admin:alice"
    for event in signed:
        assert PASSWORD not in event.details and secret not in event.details


def test_login_page_headers_and_cookie_attributes(ports, console, clock):
    page = console.get("/admin/login")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    answer = post_login(console, follow_redirects=False)
    assert answer.status_code == 303
    csrf_cookie = next(c for c in page.headers.get_list("set-cookie") if CSRF_COOKIE in c)
    session = next(c for c in answer.headers.get_list("set-cookie") if SESSION_COOKIE in c)
    for cookie, name in ((csrf_cookie, CSRF_COOKIE), (session, SESSION_COOKIE)):
        assert name.startswith("__Host-") and cookie.startswith(name + "=")
        lowered = cookie.lower()
        for attribute in ("secure", "httponly", "samesite=strict", "path=/"):
            assert attribute in lowered
        assert "domain=" not in lowered


def test_unenrolled_session_reaches_only_the_enrollment_page(ports, console, clock):
    post_login(console)
    assert console.get("/admin/", follow_redirects=False).headers["location"] == "/admin/login"
    token = csrf(console, "/admin/totp")
    wrong = console.post("/admin/totp", data={"csrf_token": token, "code": "000000"})
    assert wrong.status_code == 401 and "not right" in wrong.text
    with ports.db.read() as s:
        assert s.scalars(select(Admin).where(Admin.login == "alice")).one().totp_secret is None
    assert [e.details for e in events(ports, "admin.totp_enroll")] == ['{"reason":"bad_totp"}']


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-password", "bad_credentials"),
        ("unknown-login", "bad_credentials"),
        ("wrong-code", "bad_totp"),
        ("replayed-code", "totp_replayed"),
        ("api-only", "api_only"),
        ("inactive", "inactive"),
    ],
)
def test_refused_sign_ins_are_audited(ports, console, clock, case, reason):
    secret = enroll(console, clock)
    console.cookies.clear()
    code = code_for(secret, clock.now + timedelta(seconds=30))
    kwargs = {
        "wrong-password": {"password": PASSWORD + "x", "code": code},
        "unknown-login": {"login": "nobody", "code": code},
        "wrong-code": {"code": f"{(int(code) + 1) % 1_000_000:06d}"},
        "replayed-code": {"code": code_for(secret, clock.now)},
        "api-only": {"login": "robot", "code": code},
        "inactive": {"login": "gone", "code": code},
    }[case]
    clock.advance(seconds=30)
    page = post_login(console, **kwargs)
    assert page.status_code == 401 and page.url.path == "/admin/login"
    assert "not right" in page.text and SESSION_COOKIE not in console.cookies
    assert PASSWORD not in page.text
    assert reasons(ports) == [f'{{"method":"console","reason":"{reason}"}}']
    refused = [e for e in events(ports, "admin.sign_in") if e.outcome == "refused"]
    assert code not in refused[0].details and PASSWORD not in refused[0].details


def test_replayed_code_is_refused_even_in_the_next_step(ports, console, clock):
    secret = enroll(console, clock)
    console.cookies.clear()
    clock.advance(seconds=30)
    code = code_for(secret, clock.now)
    assert post_login(console, code=code).url.path == "/admin/"
    console.cookies.clear()
    clock.advance(seconds=20)  # still within the ±1 step window of that code
    assert post_login(console, code=code).status_code == 401


def test_lockout_after_failures_without_argon2(ports, console, clock, monkeypatch):
    secret = enroll(console, clock)
    console.cookies.clear()
    calls = []
    real_verify = argon2.PasswordHasher.verify

    def counting(self, hash_, password):
        calls.append(1)
        return real_verify(self, hash_, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting)
    # Every attempt counts within the window; enrolling was the first.
    for _ in range(LOGIN_LIMIT - 1):
        assert post_login(console, password="wrong-password-123").status_code == 401
    assert len(calls) == LOGIN_LIMIT - 1
    clock.advance(seconds=30)
    locked = post_login(console, code=code_for(secret, clock.now))  # even the right password
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    assert len(calls) == LOGIN_LIMIT - 1  # refused before argon2 ran
    assert SESSION_COOKIE not in console.cookies
    assert reasons(ports)[-1] == '{"method":"console","reason":"rate_limited"}'


@pytest.mark.parametrize(
    ("slug", "login"), [("acme", "alice"), ("acme", "nobody"), ("no-such-account", "alice")]
)
def test_sign_in_costs_one_argon2_check_known_login_or_not(
    ports, console, clock, monkeypatch, slug, login
):
    """A wrong password for a known login and any password for an unknown login (or account)
    cost the same: one argon2 check against a hash made before (the dummy, once per process)."""
    calls = count_argon2(monkeypatch)
    for _ in range(2):
        page = post_login(console, account=slug, login=login, password="wrong-password-123")
        assert page.status_code == 401
    assert calls == Counter(verify=2)
    assert [r.split('"reason":')[1] for r in reasons(ports)] == ['"bad_credentials"}'] * 2


def test_sign_in_refused_at_once_while_the_password_checks_are_busy(ports, console, monkeypatch):
    """Past the process's few argon2 slots a sign-in is refused at once, with Retry-After, and
    audited like any refused sign-in."""
    tried: list[int] = []

    def busy(self, secret_hash, secret):  # every slot taken by others
        tried.append(1)
        raise PasswordChecksBusy()

    monkeypatch.setattr(PasswordHashing, "verify", busy)
    page = post_login(console, password="any-password-1234")
    assert tried == [1]
    assert page.status_code == 429 and int(page.headers["retry-after"]) >= 1
    assert PasswordChecksBusy.__doc__ in page.text
    assert reasons(ports) == ['{"method":"console","reason":"busy"}']
    assert SESSION_COOKIE not in console.cookies


def test_idle_timeout(ports, console, clock):
    enroll(console, clock)
    clock.advance(minutes=29)
    assert console.get("/admin/").status_code == 200
    clock.advance(minutes=29)  # seen 29 minutes ago: still alive
    assert console.get("/admin/").url.path == "/admin/"
    clock.advance(minutes=31)
    assert console.get("/admin/", follow_redirects=False).headers["location"] == "/admin/login"
    clock.now -= timedelta(minutes=31)  # an expired session stays revoked
    assert console.get("/admin/").url.path == "/admin/login"


def test_absolute_timeout(ports, console, clock):
    enroll(console, clock)
    for _ in range(12 * 3 - 1):
        clock.advance(minutes=20)
        assert console.get("/admin/").url.path == "/admin/", "active within 12 h"
    clock.advance(minutes=21)
    assert console.get("/admin/").url.path == "/admin/login"


def test_each_sign_in_makes_a_new_session(ports, console, clock):
    secret = enroll(console, clock)
    first = console.cookies[SESSION_COOKIE]
    sign_in(console, clock, secret)
    second = console.cookies[SESSION_COOKIE]
    assert first != second
    with ports.db.read() as s:
        rows = {r.id: r for r in s.scalars(select(WebSession))}
    assert web_sessions.session_id_of(second) in rows and second not in rows  # only the hash
    assert rows[web_sessions.session_id_of(first)].revoked_at is not None  # the old one ended
    fresh = TestClient(console.app, base_url="https://testserver")
    fresh.cookies.set(SESSION_COOKIE, first)
    assert fresh.get("/admin/").url.path == "/admin/login"


def test_sign_out_revokes_the_session(ports, console, clock):
    enroll(console, clock)
    token = console.cookies[SESSION_COOKIE]
    page = console.post("/admin/logout", data={"csrf_token": csrf(console, "/admin/")})
    assert page.url.path == "/admin/login"
    assert [e.outcome for e in events(ports, "admin.sign_out")] == ["success"]
    replay = TestClient(console.app, base_url="https://testserver")
    replay.cookies.set(SESSION_COOKIE, token)
    assert replay.get("/admin/").url.path == "/admin/login"


@pytest.mark.parametrize("token", [None, "forged-token-0123456789abcdef"])
@pytest.mark.parametrize("path", ["/admin/login", "/admin/totp", "/admin/logout"])
def test_missing_or_forged_csrf_is_refused_first(ports, console, clock, monkeypatch, path, token):
    enroll(console, clock)
    session_before = console.cookies[SESSION_COOKIE]
    calls = []
    monkeypatch.setattr(argon2.PasswordHasher, "verify", lambda *a: calls.append(1))
    audited = len(reasons(ports))
    data = {"account": "acme", "login": "alice", "password": PASSWORD, "code": "123456"}
    if token:
        data["csrf_token"] = token
    answer = console.post(path, data=data)
    assert answer.status_code == 403 and "did not come from this site" in answer.text
    assert calls == [] and len(reasons(ports)) == audited
    assert console.get("/admin/").url.path == "/admin/"  # the session was not touched
    assert console.cookies[SESSION_COOKIE] == session_before


def test_csrf_token_is_bound_to_the_session(ports, operator, console, clock):
    """A token fetched with one session, or from the sign-in page with its own cookie, is refused
    with another session's cookie: a planted CSRF cookie no longer carries a forged form."""
    admins.create_admin(ports, operator, "acme", "bob", password=PASSWORD)
    enroll(console, clock)
    bob = TestClient(console.app, base_url="https://testserver")
    enroll(bob, clock, "bob")
    alices_token = csrf(console, "/admin/")
    stranger = TestClient(console.app, base_url="https://testserver")
    strangers_token = csrf(stranger)  # and its cookie, from the sign-in page
    # Bob's browser, with a CSRF cookie planted from the stranger's sign-in page.
    victim = TestClient(console.app, base_url="https://testserver")
    victim.cookies.set(SESSION_COOKIE, bob.cookies[SESSION_COOKIE])
    victim.cookies.set(CSRF_COOKIE, stranger.cookies[CSRF_COOKIE])
    assert "Welcome, bob" in victim.get("/admin/").text  # the cookies are sent
    for client, token in ((bob, alices_token), (victim, strangers_token), (victim, alices_token)):
        answer = client.post("/admin/logout", data={"csrf_token": token})
        assert answer.status_code == 403 and "did not come from this site" in answer.text
    assert bob.get("/admin/").url.path == "/admin/"  # still signed in
    assert events(ports, "admin.sign_out") == []
    # Bob's own page's token goes through; after signing out the sign-in page's token is bound
    # to the CSRF cookie again.
    assert bob.post("/admin/logout", data={"csrf_token": csrf(bob, "/admin/")}).status_code == 200
    assert [e.outcome for e in events(ports, "admin.sign_out")] == ["success"]
    assert csrf(bob) != alices_token
    assert post_login(bob, login="bob", code="000000").status_code == 401  # checked, not forged


def test_session_of_another_account_stays_in_it(ports, operator, console, clock):
    accounts.create_account(ports, operator, "Beta Ltd", "beta", key_vault_enabled=True)
    admins.create_admin(ports, operator, "beta", "alice", password=PASSWORD)
    page = post_login(console, account="beta")
    secret = SECRET_RE.search(page.text).group(1)
    token = CSRF_RE.search(page.text).group(1)
    code = code_for(secret, clock.now)
    home = console.post("/admin/totp", data={"csrf_token": token, "code": code})
    assert "Beta Ltd" in home.text and "Acme Corp" not in home.text
    # A session row pointed at another account than its admin's is refused, not followed.

    def move(session):
        acme = session.scalars(select(Admin).where(Admin.login == "robot")).one().account_id
        for row in session.scalars(select(WebSession)):
            row.account_id = acme

    ports.db.run(move)
    assert console.get("/admin/").url.path == "/admin/login"
    # Beta's TOTP does not sign in Acme's alice.
    console.cookies.clear()
    clock.advance(seconds=30)
    assert post_login(console, account="acme", code=code_for(secret, clock.now)).url.path == (
        "/admin/totp"  # acme's alice has no TOTP yet: enrollment, not a session
    )
    assert console.get("/admin/").url.path == "/admin/login"


def test_reset_totp_command(backend, tmp_path, ports, console, clock, operator):
    secret = enroll(console, clock)
    admins.reset_totp(ports, operator, "acme", "alice")
    assert console.get("/admin/").url.path == "/admin/login"  # sessions ended
    assert [e.actor for e in events(ports, "admin.totp_reset")] == [operator.name]
    console.cookies.clear()
    clock.advance(seconds=30)
    assert post_login(console, code=code_for(secret, clock.now)).url.path == "/admin/totp"


@pytest.fixture
def cli(backend, tmp_path):
    yield from cli_env.cli_for(backend, tmp_path)


def test_reset_totp_cli(cli):
    cli.bootstrap()
    ports = cli.ports()

    def set_up_totp(session: Session) -> None:
        admin = session.scalars(select(Admin).where(Admin.login == "alice")).one()
        admin.totp_secret, admin.totp_last_step = "x", 5

    try:
        admins.create_admin(ports, cli_env.TEST_OPERATOR, "acme", "alice", password=PASSWORD)
        ports.db.run(set_up_totp)  # through certvault: a row changed by SQL is refused
    finally:
        ports.close()
    proc = cli.run("admin", "reset-totp", "--account", "acme", "alice")
    assert proc.returncode == 0, cli_env.text(proc)
    assert cli.sql("SELECT totp_secret, totp_last_step FROM admins") == [(None, None)]
    missing = cli.run("admin", "reset-totp", "--account", "acme", "nobody")
    assert missing.returncode != 0 and "No such administrator" in cli_env.text(missing)


def test_per_address_limit_covers_every_login(ports, console, clock, monkeypatch):
    monkeypatch.setattr(ports.settings, "logins_per_minute_ip", 2)
    for login in ("mallory", "trudy"):
        assert post_login(console, login=login).status_code == 401
    assert post_login(console, login="eve").status_code == 429
    assert post_login(console, login="alice").status_code == 429  # a real one too, from here
    assert SESSION_COOKIE not in console.cookies
