"""The process's argon2 gate: a few checks at once, a few more waiting, the rest refused at once;
one check for an unknown login, against a dummy hash made once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from certvault.services.kernel import passwords
from certvault.services.kernel.passwords import PasswordChecksBusy, PasswordHashing


class BlockingHasher:
    """Stands in for argon2: every call waits until the test lets it go, and the most calls
    running at once are counted."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.running = self.most = self.calls = 0
        self._lock = threading.Lock()

    def _run(self) -> None:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        self.go.wait(30)
        with self._lock:
            self.running -= 1

    def hash(self, secret: str) -> str:
        self._run()
        return "$argon2id$stand-in"

    def verify(self, secret_hash: str, secret: str) -> bool:
        self._run()
        return True


@pytest.fixture
def hashing(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[PasswordHashing, BlockingHasher]]:
    monkeypatch.setattr(passwords, "WAIT_SECONDS", 30.0)  # waiters never give up in this test
    made = PasswordHashing(1, 8, slots=2, waiting=1)
    fake = BlockingHasher()
    made._hasher = fake  # type: ignore[assignment]
    yield made, fake
    fake.go.set()


def _until(condition: Any) -> None:
    """Wait for another thread to get somewhere (a bound, not a speed assertion)."""
    done = threading.Event()
    for _ in range(3000):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("the other threads did not get there")


def test_past_the_slots_and_the_queue_a_check_is_refused_at_once(hashing) -> None:
    made, fake = hashing
    results: list[object] = []

    def check() -> None:
        try:
            results.append(made.verify("$argon2id$stored", "guess"))
        except PasswordChecksBusy as exc:
            results.append(exc)

    threads = [threading.Thread(target=check) for _ in range(3)]
    for t in threads[:2]:
        t.start()
    _until(lambda: fake.running == 2)
    threads[2].start()  # waits for a slot
    _until(lambda: made._gate._waiting == 1)
    with pytest.raises(PasswordChecksBusy) as busy:
        made.hash("one more")  # the slots and the queue are full: refused without waiting
    assert busy.value.status == 429 and busy.value.retry_after >= 1 and busy.value.code == "busy"
    fake.go.set()
    for t in threads:
        t.join()
    assert results == [True, True, True] and fake.most == 2 and fake.calls == 3


def test_a_waiter_gives_up_after_its_wait(hashing, monkeypatch: pytest.MonkeyPatch) -> None:
    made, fake = hashing
    holders = [threading.Thread(target=made.hash, args=("x",)) for _ in range(2)]
    for t in holders:
        t.start()
    _until(lambda: fake.running == 2)
    monkeypatch.setattr(passwords, "WAIT_SECONDS", 0.01)
    with pytest.raises(PasswordChecksBusy):
        made.verify("$argon2id$stored", "guess")
    fake.go.set()
    for t in holders:
        t.join()
    assert fake.calls == 2  # the refused check never ran


def test_an_unknown_login_costs_one_check_against_a_dummy_made_once() -> None:
    made = PasswordHashing(1, 8, slots=2, waiting=1)
    real = made._hasher
    calls: list[str] = []

    class Counting:
        def hash(self, secret: str) -> str:
            calls.append("hash")
            return real.hash(secret)

        def verify(self, secret_hash: str, secret: str) -> bool:
            calls.append("verify")
            return real.verify(secret_hash, secret)

    made._hasher = Counting()  # type: ignore[assignment]
    made.dummy_hash()  # what the application does when it starts
    stored = made.hash("the right password")
    calls.clear()
    assert made.verify(stored, "the right password") is True
    assert made.verify(stored, "a wrong password") is False
    assert made.verify(None, "a wrong password") is False
    assert made.verify(None, "certvault-dummy-password") is False  # the dummy opens nothing
    assert made.verify("not an argon2 hash", "x") is False
    assert made.verify(stored, "lone \ud800 surrogate") is False
    assert calls == ["verify"] * 6  # one check each, never a hash
