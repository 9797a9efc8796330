"""Reading PKCS#12 files in worker processes, for bulk imports.

Reading a file is mostly Python work that holds the GIL, so threads cannot spread it over the
cores; processes can. A worker reads the file with the one reader there is (:func:`read_pkcs12`,
every check included) and hands back what it found as DER (:class:`Portable`, which pickles);
the importing process loads that DER again without repeating the checks, which the worker made.

A file the worker refuses comes back as None: the importing process reads that file itself, so
that the refusal it reports is the reader's own exception. Refusals are rare in a bulk import,
and every read stays within the file's KDF budget (limits.py).

The workers (:class:`ReaderPool`) are fresh interpreters that import this module and nothing
else: not forked from the importing process, so they hold none of its connections, threads or
keys, and not started through multiprocessing, whose children import the parent's main module
again (the whole command line and server: half a second of each worker's start). They start in
about a tenth of a second, with no certvault setting in their environment, and speak to the
importing process over their standard input and output only.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.limits import P12Limits
from certvault.crypto.pkcs12.reader import P12Contents, P12Entry, read_pkcs12
from certvault.errors import CertvaultError


@dataclass(frozen=True)
class Portable:
    """What a file held, as DER: each key as PKCS#8 with its certificate and friendly name."""

    entries: list[tuple[bytes, bytes, str | None]]
    extra_certificates: list[bytes]
    warnings: list[str]
    legacy_password_encoding: bool


def read_portable(data: bytes, password: str, limits: P12Limits) -> Portable | None:
    """In a worker process: read the file; None when the reader refuses it."""
    try:
        contents = read_pkcs12(data, password, limits)
    except CertvaultError:
        return None
    return Portable(
        entries=[
            (
                keylib.to_pkcs8_der(entry.key),
                entry.certificate.public_bytes(Encoding.DER),
                entry.friendly_name,
            )
            for entry in contents.entries
        ],
        extra_certificates=[c.public_bytes(Encoding.DER) for c in contents.extra_certificates],
        warnings=list(contents.warnings),
        legacy_password_encoding=contents.legacy_password_encoding,
    )


def read_portables(files: list[tuple[bytes, str]], limits: P12Limits) -> list[Portable | None]:
    """In a worker process: :func:`read_portable` for each (data, password), in order. Files go
    to a worker in chunks: one task per file would leave the workers waiting on the importing
    process, which is busy writing."""
    return [read_portable(data, password, limits) for data, password in files]


def contents_of(portable: Portable) -> P12Contents:
    """In the importing process: the reader's result again. The keys are loaded without the
    checks the worker's reader made (numbers, pairwise signature, certificate match): they come
    from that reader, through a pipe only this process and its workers hold."""
    return P12Contents(
        entries=[
            P12Entry(
                keylib.load_pkcs8_der(key, validate=False),
                x509.load_der_x509_certificate(cert),
                name,
            )
            for key, cert, name in portable.entries
        ],
        extra_certificates=[x509.load_der_x509_certificate(c) for c in portable.extra_certificates],
        warnings=list(portable.warnings),
        legacy_password_encoding=portable.legacy_password_encoding,
    )


class ReaderFailed(RuntimeError):
    """A reader process stopped or failed; the import stops (nothing it had not read is stored)."""


# A message between the importing process and a worker: its length, then its pickle. Both ends
# are certvault's own processes, joined by pipes that only they hold.
_LENGTH = struct.Struct("!Q")
_Task = tuple[list[tuple[bytes, str]], P12Limits]
# A worker's answer: the readings in order, or the name of the exception that stopped it (its
# message may quote the file).
_Answer = tuple[bool, list[Portable | None] | str]


def _send(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next message; None at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if not head:
        return None
    if len(head) < _LENGTH.size:
        raise EOFError("a message was cut short")
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("a message was cut short")
    return pickle.loads(data)  # noqa: S301 - from certvault's own process, over its own pipe


def serve() -> None:
    """A worker's loop: read each task from standard input, answer on standard output, until the
    input ends. Whatever else writes to standard output goes to standard error instead, so it
    cannot be taken for an answer."""
    os.nice(10)  # the workers yield the CPU to the importing process, whose writes it waits on
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    tasks = sys.stdin.buffer
    while (task := _receive(tasks)) is not None:
        files, limits = task
        try:
            answer: _Answer = (True, read_portables(files, limits))
        except Exception as exc:  # noqa: BLE001 - reported by type, the import stops
            answer = (False, type(exc).__name__)
        _send(answers, answer)


# Run as ``python -I -c _START <source root>``: isolated from the caller's environment and
# working directory, importing certvault from where this process imported it.
_START = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from certvault.crypto.pkcs12.portable import serve; serve()"
)
_SOURCE_ROOT = str(Path(__file__).resolve().parents[3])


class _Worker:
    """One reader process: tasks go in through a feeding thread (the caller never waits on a
    full pipe), answers come back through a collecting thread, in the order sent."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTVAULT_")}
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", _START, _SOURCE_ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        self.waiting: deque[Future[list[Portable | None]]] = deque()
        self.stopped = False  # the collector has ended: nothing more will be answered
        self.lock = threading.Lock()
        self.outbox: SimpleQueue[_Task | None] = SimpleQueue()
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.collector = threading.Thread(target=self._collect, daemon=True)
        self.feeder.start()
        self.collector.start()

    def submit(self, task: _Task) -> Future[list[Portable | None]]:
        future: Future[list[Portable | None]] = Future()
        with self.lock:
            if self.stopped:
                future.set_exception(ReaderFailed("A reader process has stopped."))
                return future
            self.waiting.append(future)
        self.outbox.put(task)
        return future

    def _feed(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (task := self.outbox.get()) is not None:
                _send(stdin, task)
        except OSError:
            pass  # the worker is gone: the collector reports it
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def _collect(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        failure = "A reader process stopped before it answered."
        try:
            while (answer := _receive(stdout)) is not None:
                ok, found = answer
                with self.lock:
                    future = self.waiting.popleft()
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled: its answer is not wanted
                if ok:
                    future.set_result(found)
                else:
                    future.set_exception(ReaderFailed(f"A reader process failed: {found}."))
        except (OSError, EOFError, pickle.UnpicklingError, IndexError):
            pass
        finally:
            with self.lock:
                self.stopped = True
                waiting, self.waiting = self.waiting, deque()
            for future in waiting:
                if future.set_running_or_notify_cancel():
                    future.set_exception(ReaderFailed(failure))

    def close(self, *, stop: bool) -> None:
        """Let the worker finish what it was given (``stop``: end it now) and wait for it."""
        if stop:
            self.process.kill()
        self.outbox.put(None)
        self.feeder.join()
        self.collector.join()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class ReaderPool:
    """Worker processes that read PKCS#12 files (:func:`read_portables`); each task's readings
    come back as a Future. Tasks go to the workers in turn, so which worker reads which files
    depends only on their order."""

    def __init__(self, workers: int) -> None:
        self._workers: list[_Worker] = []
        try:
            for _ in range(max(1, workers)):
                self._workers.append(_Worker())
        except BaseException:
            self.close(stop=True)
            raise
        self._turn = 0

    def submit(
        self, files: Sequence[tuple[bytes, str]], limits: P12Limits
    ) -> Future[list[Portable | None]]:
        worker = self._workers[self._turn % len(self._workers)]
        self._turn += 1
        return worker.submit((list(files), limits))

    def close(self, *, stop: bool = False) -> None:
        for worker in self._workers:
            worker.close(stop=stop)

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self.close(stop=error is not None)
