"""The own REST API under /api/v1 (OpenAPI at /openapi.json and /docs)."""

from __future__ import annotations

from fastapi import APIRouter

from certvault.web.api import account

router = APIRouter(prefix="/api/v1")
router.include_router(account.router)
