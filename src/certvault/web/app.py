"""The FastAPI application factory."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from certvault import __version__
from certvault.config import Settings
from certvault.services.access.credentials import CredentialCache
from certvault.services.kernel import notify
from certvault.services.kernel.passwords import password_hashing
from certvault.services.kernel.ports import Ports, open_ports
from certvault.services.kernel.ratelimit import RateLimiter, rate_limiter
from certvault.web import errors, metrics, timing
from certvault.web.control_characters import add_parameter_patterns, refuse_in_parameters
from certvault.web.deps import client_ip
from certvault.web.middleware import AccessLog, BodyLimit, Shield

log = logging.getLogger("certvault.web")

KEY_UPLOAD_LIMIT = 1024 * 1024
DEFAULT_LIMIT = 64 * 1024
_KEY_UPLOAD = re.compile(r"^/api/(person/v[12]/[^/]+/import-key|v1/persons/[^/]+/keys)$")


def body_limit(path: str) -> int:
    return KEY_UPLOAD_LIMIT if _KEY_UPLOAD.match(path) else DEFAULT_LIMIT


class MailSender:
    """Drains the outbox in the background of each worker; claims keep workers from sending a
    message twice."""

    def __init__(self, ports: Ports) -> None:
        self._ports = ports
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="certvault-mail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._ports.settings.mail_send_interval):
            try:
                result = notify.send_pending(self._ports)
                if result.held:
                    log.warning("mail sender: %d message(s) failed their seal; held", result.held)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive a bad moment
                log.warning("mail sender: %s", type(exc).__name__)


def create_app(
    ports: Ports | None = None, *, limiter: RateLimiter | None = None, send_mail: bool = False
) -> FastAPI:
    ports = ports or open_ports(Settings())
    limiter = limiter or rate_limiter(ports.settings, ports.db)
    sender = MailSender(ports) if send_mail and ports.settings.smtp_host else None
    # Made now, so that no sign-in with an unknown login pays for it (and takes longer).
    password_hashing(ports.settings).dummy_hash()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if sender:
            sender.start()
        yield
        if sender:
            sender.stop()

    app = FastAPI(
        title="certvault",
        version=__version__,
        description="Key escrow vault for the private keys of client certificates. "
        "The own API lives under /api/v1; the SCM-compatible endpoints under /api/person, "
        "/api/smime and /api/organization. Text refuses control characters (NUL, escapes, "
        "C1 controls) in every field and parameter; only `csr`, `p12`, `reason` and `comments` "
        "may hold line breaks and tabs.",
        lifespan=lifespan,
        # Served from the installed package instead of a CDN (web/apidocs.py).
        docs_url=None,
        redoc_url=None,
        # Before any route reads its parameters: a NUL must never reach a query.
        dependencies=[Depends(refuse_in_parameters)],
    )
    app.state.ports = ports
    app.state.limiter = limiter
    app.state.credential_cache = CredentialCache()
    errors.install(app)

    from certvault.web import apidocs
    from certvault.web.admin import router as admin_router
    from certvault.web.api import router as api_router
    from certvault.web.compat import router as compat_router
    from certvault.web.crl import router as crl_router
    from certvault.web.enroll import router as enroll_router
    from certvault.web.recovery import router as recovery_router

    app.include_router(api_router)
    app.include_router(compat_router)
    app.include_router(enroll_router)
    app.include_router(recovery_router)
    app.include_router(crl_router)
    app.include_router(admin_router)
    app.include_router(apidocs.router)

    # The schema states the control-character rule of every parameter (refuse_in_parameters).
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_parameter_patterns(build_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        # The console is where a person who opens the server's address wants to go.
        return RedirectResponse("/admin/", status_code=307)

    # On the event loop, not in the thread pool: it answers while every worker thread is busy
    # (with password checks, say).
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "Not ready"}})
    def readyz() -> JSONResponse:
        checks = {"database": ports.db.ping(), "master_key": ports.master_key.is_available()}
        status = 200 if all(checks.values()) else 503
        return JSONResponse({"ready": status == 200, "checks": checks}, status_code=status)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    def metrics_endpoint(request: Request) -> Response:
        if not _metrics_allowed(request, ports.settings):
            return errors.error_response(
                request, 403, "forbidden", "Metrics answer on loopback or with the metrics token."
            )
        body, content_type = metrics.render()
        return Response(body + metrics.render_drill(ports), media_type=content_type)

    # Outermost last: Shield wraps everything, so nothing escapes with its message.
    app.add_middleware(BodyLimit, limit_for=body_limit)
    app.add_middleware(AccessLog)
    app.add_middleware(Shield)
    return app


def create_served_app() -> FastAPI:
    """What `certvault serve` runs in each worker: with the mail sender, and with Server-Timing
    headers when CERTVAULT_SERVER_TIMING=1 (benchmarks)."""
    app = create_app(send_mail=True)
    if os.environ.get(timing.ENV) == "1":
        app.add_middleware(timing.ServerTiming)
    return app


def _metrics_allowed(request: Request, settings: Settings) -> bool:
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    header = request.headers.get("authorization", "")
    if token and hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
        return True
    try:
        return ipaddress.ip_address(client_ip(request)).is_loopback
    except ValueError:
        return False
