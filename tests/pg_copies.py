"""Fresh PostgreSQL databases for tests, copied from templates ahead of time on a thread.

``CREATE DATABASE … TEMPLATE`` writes the whole copy to PostgreSQL's log and waits for it to
reach the disk: about a tenth of a second when the disk is idle, more than half a second when it
is busy, for every PostgreSQL test. Made while the previous test runs, and dropped after the test
on the same thread, a test's database no longer holds the test up, and every test still gets its
own copy, exactly as the template is.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

# Copies kept ready for each template a test has asked for: one is taken while the next is made.
AHEAD = 2


class DatabaseCopies:
    def __init__(
        self, execute: Callable[[str], None], *, ahead: int = AHEAD, prefix: str = "cv_"
    ) -> None:
        self._execute = execute  # one statement on the maintenance database, autocommit
        self._prefix = prefix  # of the copies' names
        self._ahead = ahead
        self._cond = threading.Condition()
        self._ready: dict[str, list[str]] = {}  # template -> copies made and not yet taken
        self._making: str | None = None  # the template being copied right now
        self._doomed: list[str] = []
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def take(self, template: str) -> str:
        """The name of a fresh copy of ``template``, now the caller's (give it back to drop)."""
        with self._cond:
            self._check()
            self._ready.setdefault(template, [])
            self._start()
            self._cond.notify_all()
            while not self._ready[template]:
                self._cond.wait(timeout=1)
                self._check()
            name = self._ready[template].pop(0)
            self._cond.notify_all()  # one fewer ready: make the next
            return name

    def drop(self, name: str) -> None:
        """Drop the database ``name`` (on the thread, soon, with any connection still open)."""
        with self._cond:
            self._doomed.append(name)
            self._start()
            self._cond.notify_all()

    def forget(self, template: str) -> None:
        """Stop copying ``template`` and drop its copies: it may be dropped once this returns."""
        with self._cond:
            ready = self._ready.pop(template, [])
            while self._making == template:
                self._cond.wait(timeout=1)
            ready += self._ready.pop(template, [])
        for name in ready:
            self._drop(name)

    def close(self) -> None:
        """Stop the thread and drop every database not yet dropped."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        leftovers = self._doomed + [n for names in self._ready.values() for n in names]
        self._doomed, self._ready = [], {}
        for name in leftovers:
            self._drop(name)

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("The database copies are closed.")
        if self._failure is not None:
            raise RuntimeError("Copying a template database failed.") from self._failure

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pg-copies", daemon=True)
            self._thread.start()

    def _next_job(self) -> tuple[str, str] | None:
        """A copy a caller waits for, then a drop, then a copy made ahead; None: nothing to do."""
        short = sorted((len(n), t) for t, n in self._ready.items() if len(n) < self._ahead)
        if short and short[0][0] == 0:
            return "copy", short[0][1]
        if self._doomed:
            return "drop", self._doomed.pop(0)
        if short:
            return "copy", short[0][1]
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                job = None
                while not self._closed and (job := self._next_job()) is None:
                    self._cond.wait()
                if job is None:  # closed: close() drops what is left
                    return
                kind, target = job
                if kind == "copy":
                    self._making = target
            try:
                if kind == "drop":
                    self._drop(target)
                    continue
                name = f"{self._prefix}{uuid.uuid4().hex[:16]}"
                self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{target}"')
            except BaseException as exc:  # noqa: BLE001 - handed to the test that waits
                with self._cond:
                    self._failure = exc
                    self._making = None
                    self._cond.notify_all()
                return
            with self._cond:
                self._making = None
                if target in self._ready and not self._closed:
                    self._ready[target].append(name)
                else:  # forgotten or closed meanwhile
                    self._doomed.append(name)
                self._cond.notify_all()

    def _drop(self, name: str) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
