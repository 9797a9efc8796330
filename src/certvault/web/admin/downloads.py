"""Download key: re-authentication, reason, passphrase, encryption type; the release itself
goes through services.release."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
