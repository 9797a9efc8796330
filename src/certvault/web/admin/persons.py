"""Persons page: list, search, a person's certificates and keys, Secret ID, email changes."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
