"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 and a free port, collecting what it receives.

Use it from a test module: ``from tests.functional.smtp_server import smtp_server``.
The server can be stopped and started again on the same port (a sender meets a closed port in
between), and it can hold the next message in the middle of its delivery (for races).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

HOST = "127.0.0.1"
HOLD_TIMEOUT = 30.0  # seconds a held message waits at most; a failing test must not hang


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        """The decoded text, whatever transfer encoding the sender chose."""
        return str(self.message.get_content())


@dataclass
class Hold:
    """Holds the next message inside the server until :meth:`release`."""

    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


class _Collector:
    def __init__(self) -> None:
        self.messages: list[ReceivedMail] = []
        self.hold: Hold | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        hold, self.hold = self.hold, None
        if hold is not None:
            hold.arrived.set()
            await asyncio.get_running_loop().run_in_executor(None, hold.released.wait, HOLD_TIMEOUT)
        raw = bytes(envelope.original_content or envelope.content)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(
            ReceivedMail(envelope.mail_from, tuple(envelope.rcpt_tos), message, raw)
        )
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class SmtpServer:
    """An aiosmtpd server on a fixed free port; ``messages`` lists what was accepted, in order."""

    def __init__(self) -> None:
        self.host = HOST
        self.port = free_port()
        self._collector = _Collector()
        self._controller: Controller | None = None
        self._holds: list[Hold] = []

    @property
    def messages(self) -> list[ReceivedMail]:
        return list(self._collector.messages)

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        assert self._controller is None, "already running"
        # A Controller's loop is closed when it stops, so every start needs a new one.
        controller = Controller(self._collector, hostname=self.host, port=self.port)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        self._collector.hold = None
        for hold in self._holds:  # never leave a sender blocked behind a failed test
            hold.release()
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def hold_next(self) -> Hold:
        """Keep the next message waiting inside the server (its sender blocks) until released."""
        hold = Hold()
        self._holds.append(hold)
        self._collector.hold = hold
        return hold


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
