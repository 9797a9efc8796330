"""The own REST API under /api/v1 (OpenAPI at /openapi.json and /docs)."""

from __future__ import annotations

from fastapi import APIRouter

from certvault.web.api import account, agent, audit, certificates, enroll, forms, keys, persons

router = APIRouter(prefix="/api/v1")
router.include_router(account.router)
router.include_router(persons.router)
router.include_router(enroll.router)  # first: /certificates/enroll is no certificate id
router.include_router(certificates.router)
router.include_router(keys.router)
router.include_router(audit.router)
router.include_router(forms.router)
router.include_router(agent.router)
