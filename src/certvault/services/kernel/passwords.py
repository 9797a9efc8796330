"""argon2 for administrator passwords, access codes and Secret IDs, and what counts as text.

Every argon2 hash and check of certvault runs here, through one gate per process: each one holds
``argon2_memory_kib`` of memory and a core for its duration, so a burst of guesses (bad logins
from many addresses at once) would otherwise take the memory and every worker thread. A few run
at once, a few more wait briefly, and anyone past that is refused at once (429 ``busy``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from certvault.config import Settings
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import RateLimited

# How long a check waits for a free slot before it is refused: about one argon2 run.
WAIT_SECONDS = 0.5
_DUMMY_PASSWORD = "certvault-dummy-password"  # noqa: S105 - hashed once, verified for unknown logins


class PasswordChecksBusy(RateLimited):
    """Too many password checks are running; try again in a moment."""

    code = "busy"

    def __init__(self) -> None:
        super().__init__(1)


class _Gate:
    """At most ``slots`` holders at once and at most ``waiting`` more waiting for one, each for
    at most WAIT_SECONDS; anyone past that is refused rather than queued."""

    def __init__(self, slots: int, waiting: int) -> None:
        self._slots = slots
        self._waiting_max = waiting
        self._running = 0
        self._waiting = 0
        self._free = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._free:
            if self._running >= self._slots:
                if self._waiting >= self._waiting_max:
                    raise PasswordChecksBusy()
                self._waiting += 1
                try:
                    got = self._free.wait_for(lambda: self._running < self._slots, WAIT_SECONDS)
                finally:
                    self._waiting -= 1
                if not got:
                    raise PasswordChecksBusy()
            self._running += 1
        try:
            yield
        finally:
            with self._free:
                self._running -= 1
                self._free.notify()


class PasswordHashing:
    """argon2id with the installation's parameters, behind the process's gate."""

    def __init__(self, time_cost: int, memory_kib: int, slots: int, waiting: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        self._gate = _Gate(slots, waiting)
        self._dummy: str | None = None

    def hash(self, secret: str) -> str:
        with self._gate.slot():
            return self._hasher.hash(secret)

    def verify(self, secret_hash: str | None, secret: str) -> bool:
        """Whether ``secret`` matches ``secret_hash``. With no hash (an unknown login) the same
        one argon2 check runs against a dummy hash, so that timing does not tell logins apart."""
        against = self.dummy_hash() if secret_hash is None else secret_hash
        try:
            with self._gate.slot():
                matches = self._hasher.verify(against, secret)
        except (VerificationError, InvalidHashError, UnicodeEncodeError):
            return False
        return matches and secret_hash is not None

    def dummy_hash(self) -> str:
        """A hash with the same parameters, made once per process (not per unknown login); the
        application makes it when it starts, so no request pays for it."""
        if self._dummy is None:
            self._dummy = self.hash(_DUMMY_PASSWORD)
        return self._dummy


_hashings: dict[tuple[int, int, int, int], PasswordHashing] = {}
_hashings_lock = threading.Lock()


def password_hashing(settings: Settings) -> PasswordHashing:
    """The process's argon2 for these settings (one gate per process and configuration)."""
    key = (
        settings.argon2_time_cost,
        settings.argon2_memory_kib,
        settings.password_checks_at_once,
        settings.password_checks_waiting,
    )
    with _hashings_lock:
        found = _hashings.get(key)
        if found is None:
            found = _hashings[key] = PasswordHashing(*key)
        return found


def hash_password(ports: Ports, secret: str) -> str:
    """The stored form of a password, access code or Secret ID."""
    return password_hashing(ports.settings).hash(secret)


def verify_password(ports: Ports, secret_hash: str | None, secret: str) -> bool:
    """Check a password with argon2; an unknown login (no hash) costs the same one check."""
    return password_hashing(ports.settings).verify(secret_hash, secret)


def is_text(value: str) -> bool:
    """Printable text that survives UTF-8 (JSON may carry lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return value.isprintable()
