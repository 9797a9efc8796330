"""The workers' HTTP protocol (web/server.py): every accepted connection sends at once.

The listening socket is made by uvicorn's own ``Config.bind_socket``, as its supervisor makes it
for several workers; the option is read off the socket the server accepted, not timed.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from certvault.web.server import PROTOCOL, send_at_once


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("hello")(scope, receive, send)


def _read_response(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"hello"):
        chunk = conn.recv(4096)
        assert chunk, data
        data += chunk
    return data


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_accepted_connection_has_nagle_off(loop):
    config = uvicorn.Config(
        _hello, host="127.0.0.1", port=0, http=PROTOCOL, loop=loop, lifespan="off", log_config=None
    )
    listener = config.bind_socket()
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        with socket.create_connection(listener.getsockname()[:2], timeout=10) as conn:
            for _ in range(2):  # kept alive: the second answer is the one Nagle would hold back
                conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                assert _read_response(conn).startswith(b"HTTP/1.1 200")
            [protocol] = server.server_state.connections
            accepted = protocol.transport.get_extra_info("socket")
            assert accepted.getpeername() == conn.getsockname()
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


class _Transport:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> socket.socket | None:
        assert name == "socket"
        return self.sock


def test_other_connections_are_left_as_they_are():
    send_at_once(_Transport(None))  # a transport without a socket (a pipe, a test double)
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        send_at_once(_Transport(left))  # no TCP option on a Unix socket, and no error
    gone = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    gone.close()  # a peer that hung up before the connection was set up
    send_at_once(_Transport(gone))
