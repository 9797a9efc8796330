"""Endpoints with the paths and JSON shapes of the commercial product's REST API, so existing
scripts work unchanged: thin adapters over the same services."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api")
