"""About page: version and the account's Key Vault UI URL."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
