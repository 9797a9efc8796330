"""Enrollment forms page: create, edit, disable."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
