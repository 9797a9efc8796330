"""Audit page: the account's events, filters, chain verification."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
