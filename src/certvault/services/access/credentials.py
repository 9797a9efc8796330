"""Header authentication of the SCM-compatible API (`login`, `password`, `customerUri`).

Only for administrators created `--api-only`, optionally from an IP allow-list. Attempts are
rate-limited before any argon2 check runs; a verified credential is remembered briefly, keyed by
a hash of the credential itself, so scripts that send it with every request stay cheap.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import time

from certvault.db.models import Admin
from certvault.services.access.admins import actor_for, signing_in
from certvault.services.access.tokens import Unauthenticated
from certvault.services.audit import log as audit
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.passwords import verify_password
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import Limit, RateLimiter, enforce


class CredentialCache:
    """Recently verified credentials: sha256(account, login, password) -> admin id."""

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: bytes) -> int | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None or found[1] < time.monotonic():
                self._entries.pop(key, None)
                return None
            return found[0]

    def put(self, key: bytes, admin_id: int, ttl: float) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = (admin_id, time.monotonic() + ttl)


def _ip_allowed(admin: Admin, ip: str) -> bool:
    allowed = admin.allowed_ips.split()
    if not allowed:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in allowed)


def authenticate_password(
    ports: Ports,
    limiter: RateLimiter,
    cache: CredentialCache,
    *,
    account_slug: str,
    login: str,
    password: str,
    ip: str,
) -> Actor:
    s = ports.settings
    if not account_slug or not login or not password or len(password) > 1024 or len(login) > 200:
        raise Unauthenticated()
    key = hashlib.sha256("\0".join((account_slug, login, password)).encode()).digest()
    cached = cache.get(key)
    if cached is None:
        # Only guesses are limited: a credential verified moments ago costs no argon2 check, and
        # scripts send it with every request (a paged listing would otherwise hit the limit).
        enforce(
            limiter,
            Limit(f"login-ip:{ip}", s.logins_per_minute_ip, 60),
            Limit(f"login:{account_slug}:{login}", s.logins_per_minute_login, 60),
        )
    with ports.db.read() as session:
        account, admin = signing_in(session, account_slug, login)
        if cached is None or admin is None or cached != admin.id:
            if not verify_password(ports, admin.password_hash if admin else None, password):
                admin = None
        usable = admin is not None and admin.active and admin.api_only and _ip_allowed(admin, ip)
        if admin is None or not usable:
            refused_account = account.id if account is not None else None
        else:
            actor = actor_for(admin, ip=ip)
    if admin is None or not usable:
        audit.record_refusal(
            ports,
            account_id=refused_account,
            actor=Actor(name=f"api-login:{login[:100]}", kind="anonymous", ip=ip),
            action="auth.login",
            reason_code=Unauthenticated.code,
            details={"method": "header"},
        )
        raise Unauthenticated()
    cache.put(key, actor.admin_id or 0, s.credential_cache_seconds)
    return actor
