"""API tokens, header credentials and rate limiters, below the web layer."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from sqlalchemy import select

from certvault.db.models import Admin, ApiToken, AuditEvent
from certvault.errors import InvalidInput, NotFound
from certvault.services.access import admins, tokens
from certvault.services.access.credentials import CredentialCache, authenticate_password
from certvault.services.access.tokens import Unauthenticated
from certvault.services.kernel.actors import Scope
from certvault.services.kernel.passwords import password_hashing
from certvault.services.kernel.ratelimit import (
    DatabaseRateLimiter,
    Limit,
    Quota,
    RateLimited,
    RedisRateLimiter,
    enforce,
)
from tests.functional.helpers import count_argon2

PASSWORD = "api-password-0123456789"


@pytest.fixture
def api_admin(ports, operator, account):
    admins.create_admin(
        ports,
        operator,
        "acme",
        "robot",
        api_only=True,
        password=PASSWORD,
        privileges=["key_vault_download"],
    )
    admins.create_admin(
        ports, operator, "acme", "human", password=PASSWORD, privileges=["key_vault_download"]
    )
    return "robot"


def test_token_defaults_to_the_scopes_the_privileges_back(ports, operator, api_admin):
    created = tokens.create_token(ports, operator, "acme", "robot")
    assert set(created.scopes) == {"read", "keys:download"}
    actor, account = tokens.authenticate(ports, created.token)
    assert account.slug == "acme" and actor.scopes == {Scope.READ, Scope.KEYS_DOWNLOAD}
    assert actor.token_id == created.token_id and actor.admin_id is not None
    with ports.db.read() as s:
        row = s.get_one(ApiToken, created.token_id)
        assert created.token not in (row.token_sha256, row.prefix) and row.last_used_at
        assert row.prefix == created.token[:12]


def test_token_cannot_exceed_privileges(ports, operator, api_admin):
    with pytest.raises(InvalidInput, match="manage"):
        tokens.create_token(ports, operator, "acme", "robot", scopes=["manage"])
    with pytest.raises(InvalidInput):
        tokens.create_token(ports, operator, "acme", "robot", scopes=["root"])
    with pytest.raises(NotFound):
        tokens.create_token(ports, operator, "acme", "nobody")


def test_expired_revoked_and_orphaned_tokens_fail(ports, operator, api_admin):
    expired = tokens.create_token(ports, operator, "acme", "robot", expires_days=1)
    revoked = tokens.create_token(ports, operator, "acme", "robot")
    orphan = tokens.create_token(ports, operator, "acme", "human")
    tokens.revoke_token(ports, operator, "acme", revoked.token_id)
    with ports.db.transaction() as s:
        s.scalars(select(Admin).where(Admin.login == "human")).one().active = False
    later = ports.clock() + dt.timedelta(days=2)
    ports.clock = lambda: later
    for token in (expired.token, revoked.token, orphan.token, "cvt_guess", "", "x" * 500):
        with pytest.raises(Unauthenticated):
            tokens.authenticate(ports, token)


def test_header_credentials_only_for_api_only_admins(ports, operator, api_admin):
    limiter, cache = DatabaseRateLimiter(ports.db), CredentialCache()

    def login(user: str, password: str = PASSWORD, ip: str = "10.0.0.1"):  # type: ignore[no-untyped-def]
        return authenticate_password(
            ports, limiter, cache, account_slug="acme", login=user, password=password, ip=ip
        )

    assert login("robot").name == "admin:robot"
    for user, password in (
        ("human", PASSWORD),
        ("robot", "wrong-password-xx"),
        ("ghost", PASSWORD),
    ):
        with pytest.raises(Unauthenticated):
            login(user, password)
    with ports.db.transaction() as s:
        s.scalars(select(Admin).where(Admin.login == "robot")).one().allowed_ips = "192.0.2.0/24"
    cache = CredentialCache()  # the allow-list is checked on every request, cached or not
    assert login("robot", ip="192.0.2.7").admin_id is not None
    with pytest.raises(Unauthenticated):
        login("robot", ip="10.0.0.1")
    with ports.db.read() as s:
        refusals = s.scalars(select(AuditEvent).where(AuditEvent.action == "auth.login")).all()
    assert len(refusals) == 4
    assert all(PASSWORD not in e.details and "wrong-password" not in e.details for e in refusals)


@pytest.mark.parametrize(
    ("account_slug", "login"),
    [("acme", "robot"), ("acme", "ghost"), ("no-such-account", "robot")],
)
def test_header_login_costs_one_argon2_check_known_or_not(
    ports, operator, api_admin, monkeypatch, account_slug, login
):
    """A known login with a wrong password and an unknown one (or account) cost the same: one
    argon2 check each, never a hash made on the way."""
    limiter, cache = DatabaseRateLimiter(ports.db), CredentialCache()
    password_hashing(ports.settings).dummy_hash()  # made when the application starts
    calls = count_argon2(monkeypatch)
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            authenticate_password(
                ports,
                limiter,
                cache,
                account_slug=account_slug,
                login=login,
                password="wrong-password-xx",
                ip="10.0.0.1",
            )
    assert calls == Counter(verify=2)


def test_header_login_attempts_are_limited_before_argon2(ports, operator, api_admin, monkeypatch):
    from certvault.services.access import credentials

    ports.settings.logins_per_minute_login = 3
    limiter, cache = DatabaseRateLimiter(ports.db), CredentialCache()
    checks: list[int] = []
    real = credentials.verify_password
    monkeypatch.setattr(credentials, "verify_password", lambda *a: checks.append(1) or real(*a))  # type: ignore[func-returns-value]
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            authenticate_password(
                ports,
                limiter,
                cache,
                account_slug="acme",
                login="robot",
                password="wrong-password-xx",
                ip="10.0.0.9",
            )
    with pytest.raises(RateLimited) as limited:
        authenticate_password(
            ports,
            limiter,
            cache,
            account_slug="acme",
            login="robot",
            password=PASSWORD,
            ip="10.0.0.9",
        )
    assert limited.value.retry_after >= 1
    assert len(checks) == 3  # the fourth attempt never reached argon2


def test_database_limiter_is_shared_between_processes(ports, settings):
    from certvault.services.kernel.ports import open_ports

    other = open_ports(settings)  # a second worker on the same database
    try:
        now = [1_000_000.0]
        a = DatabaseRateLimiter(ports.db, clock=lambda: now[0])
        b = DatabaseRateLimiter(other.db, clock=lambda: now[0])
        assert [
            a.hit(Limit("k", 3, 60)).allowed,
            b.hit(Limit("k", 3, 60)).allowed,
            a.hit(Limit("k", 3, 60)).allowed,
        ] == [True, True, True]
        denied = b.hit(Limit("k", 3, 60))
        assert not denied.allowed and 1 <= denied.retry_after <= 60
        assert a.hit(Limit("other-key", 3, 60)).allowed
        now[0] += 60
        assert a.hit(Limit("k", 3, 60)).allowed
        with pytest.raises(RateLimited):
            for _ in range(3):
                enforce(b, Limit("k", 3, 60))
    finally:
        other.close()


def test_a_quota_is_checked_without_counting_and_counted_with_the_work(ports):
    now = [1_000_000.0]
    limiter = DatabaseRateLimiter(ports.db, clock=lambda: now[0])
    quota = Quota(limiter, (Limit("q-a", 2, 60), Limit("q-b", 5, 60)))
    quota.check()
    quota.check()  # checking counts nothing
    with pytest.raises(RuntimeError), ports.db.transaction() as session:
        quota.count(session)
        raise RuntimeError("the work failed")  # its count rolls back with it
    for _ in range(2):
        quota.check()
        ports.db.run(quota.count)
    with pytest.raises(RateLimited):
        quota.check()
    with pytest.raises(RateLimited):
        ports.db.run(quota.count)  # over the limit: refused, and rolled back with the work
    # Both limits were counted by the two that committed, and only by them.
    assert limiter.check(Limit("q-b", 3, 60)).allowed
    assert not limiter.check(Limit("q-b", 2, 60)).allowed
    assert not limiter.check(Limit("q-a", 2, 60)).allowed


def test_redis_limiter():
    import uuid

    limiter = RedisRateLimiter("redis://127.0.0.1:6379/0")
    key = f"test-{uuid.uuid4()}"
    assert all(limiter.hit(Limit(key, 2, 60)).allowed for _ in range(2))
    denied = limiter.hit(Limit(key, 2, 60))
    assert not denied.allowed and 1 <= denied.retry_after <= 60
