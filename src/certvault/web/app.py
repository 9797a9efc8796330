"""The FastAPI application factory. This version serves health and readiness checks."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from certvault import __version__
from certvault.config import Settings
from certvault.services.ports import Ports, open_ports


def create_app(ports: Ports | None = None) -> FastAPI:
    ports = ports or open_ports(Settings())
    app = FastAPI(title="certvault", version=__version__)
    app.state.ports = ports

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        checks = {"database": ports.db.ping(), "master_key": ports.master_key.is_available()}
        status = 200 if all(checks.values()) else 503
        return JSONResponse({"ready": status == 200, "checks": checks}, status_code=status)

    return app
