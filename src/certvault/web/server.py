"""The HTTP protocol `certvault serve` runs its workers with: uvicorn's own, on connections with
Nagle's algorithm switched off.

A response goes out in two writes, its headers and then its body. With Nagle's algorithm on,
the kernel holds the body back until the client has acknowledged the headers, and a client
delays that acknowledgement by 40 ms on Linux: every request after the first on a kept-alive
connection then takes 40 ms longer. asyncio switches the algorithm off only on a connection
whose listening socket was made naming ``IPPROTO_TCP``, and uvicorn's supervisor of several
workers binds its socket without naming it. uvloop switches it off itself, but a worker must not
depend on which event loop it runs: each connection switches it off here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.auto import AutoHTTPProtocol

# How `certvault serve` names this protocol to uvicorn (a name, so that each worker imports it).
PROTOCOL = "certvault.web.server:HttpProtocol"


def send_at_once(transport: asyncio.BaseTransport) -> None:
    """Switch Nagle's algorithm off for a TCP connection; anything else is left as it is."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        # A peer that hung up already: the connection fails at its first read instead.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class HttpProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    def connection_made(self, transport: asyncio.Transport) -> None:
        send_at_once(transport)
        super().connection_made(transport)
