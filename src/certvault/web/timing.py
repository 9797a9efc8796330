"""`Server-Timing: kdf;dur=…, total;dur=…` on every response, when CERTVAULT_SERVER_TIMING=1.

For benchmarks: the load generator shares the machine, so the server's own clock says where a
request's time went. Off by default (it tells a client how long the KDF ran).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certvault import timing

ENV = "CERTVAULT_SERVER_TIMING"


class ServerTiming:
    """Outermost middleware: ``total`` runs until the response starts, which for our (buffered)
    responses is when the route has finished its work."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        with timing.collecting() as phases:

            async def timed_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    total = time.perf_counter() - start
                    parts = [f"{name};dur={sec * 1000:.3f}" for name, sec in phases.items()]
                    parts.append(f"total;dur={total * 1000:.3f}")
                    headers = list(message.get("headers", []))
                    headers.append((b"server-timing", ", ".join(parts).encode()))
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, timed_send)
