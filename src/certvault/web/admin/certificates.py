"""Client Certificates page: list with filters, a certificate's details."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
