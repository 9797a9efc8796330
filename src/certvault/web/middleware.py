"""ASGI middleware: request size caps, a last line of defence for errors, access logs, metrics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certvault.db.engine import failure_of
from certvault.web import metrics
from certvault.web.errors import compat_code, is_compat

access_log = logging.getLogger("certvault.access")
log = logging.getLogger("certvault.web")


async def _send_json(
    send: Send,
    path: str,
    status: int,
    code: str,
    description: str,
    headers: dict[str, str] | None = None,
) -> None:
    body: dict[str, Any] = {
        "code": compat_code(status) if is_compat(path) else code,
        "description": description,
    }
    raw = json.dumps(body).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class ResponseWatch:
    """Wraps ``send`` to see whether, and with which status, the response has started."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started, self.status = True, message["status"]
        await self._send(message)


class BodyTooLarge(HTTPException):
    """A body over the cap, found while the application reads it (chunked, or longer than its
    Content-Length claimed). An HTTPException, because FastAPI turns any other exception raised
    while it reads a body into a 400 "error parsing the body"; the application's handler for
    HTTP errors answers it with 413 in the area's error shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


class BodyLimit:
    """Refuse bodies over a per-path cap with 413: at once when Content-Length says so, and as
    soon as the bytes read pass the cap when it does not (Transfer-Encoding: chunked)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])

        async def refuse() -> None:
            await _send_json(send, scope["path"], 413, "too_large", too_large_message(limit))

        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = True
                if too_big:
                    await refuse()
                    return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        watch = ResponseWatch(send)
        try:
            await self.app(scope, counting_receive, watch)
        except BodyTooLarge:
            # Read where no handler of the application answers for it.
            if not watch.started:
                await refuse()


class Shield:
    """Outermost: an exception that escaped every handler becomes a bare 500. Only its type is
    logged; its message and traceback locals may carry submitted data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = ResponseWatch(send)
        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # noqa: BLE001 - nothing may escape with its message
            failure = failure_of(exc) if isinstance(exc, DBAPIError) else None
            if failure is not None:
                # A database that is down or full, met outside any route (a middleware's query).
                if not watch.started:
                    await _send_json(
                        send,
                        scope["path"],
                        failure.status,
                        failure.code,
                        failure.message,
                        {"Retry-After": str(failure.retry_after)},
                    )
                return
            log.error(
                "unhandled %s on %s %s", type(exc).__name__, scope.get("method"), scope.get("path")
            )
            if not watch.started:
                await _send_json(send, scope["path"], 500, "internal", "Internal error.")


def route_template(scope: Scope) -> str:
    """The matched route with the prefixes of the routers it was included through:
    ``/api/smime/v2/keystore/{certId}``, never the id itself."""
    inner = getattr(scope.get("route"), "path", None)
    if not inner:
        return "unmatched"
    # FastAPI hands out the included route with its own path only; its routers' prefixes are
    # literal, so they are the leading segments of the request path that the route leaves over.
    segments = scope.get("path", "").split("/")
    prefix = "/".join(segments[: max(len(segments) - inner.count("/"), 1)])
    return prefix + inner


class AccessLog:
    """One JSON line per request: method, route, status, time, client, actor. Never headers,
    bodies or query strings (they may carry credentials or addresses)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        watch = ResponseWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            status = watch.status
            elapsed = time.perf_counter() - start
            template = route_template(scope)
            state = scope.get("state") or {}
            client = scope.get("client") or ("", 0)
            metrics.observe_request(scope.get("method", ""), template, status, elapsed)
            access_log.info(
                json.dumps(
                    {
                        "method": scope.get("method"),
                        "route": template,
                        "status": status,
                        "ms": round(elapsed * 1000, 1),
                        "ip": client[0],
                        "actor": state.get("actor_name", ""),
                    }
                )
            )
