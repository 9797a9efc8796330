"""TOTP for console sign-in (RFC 6238, as authenticator apps implement it), and the sealing of
the administrators' TOTP secrets under a service key: a copy of the table cannot make codes."""

from __future__ import annotations

import base64
import hmac
import os
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from certvault.errors import CertvaultError
from certvault.services.kernel import keyring
from certvault.services.kernel.ports import Ports

TOTP_KEY_PURPOSE = "admin-totp"
TOTP_DIGITS = 6
TOTP_STEP = 30
TOTP_ISSUER = "certvault"


def _totp(secret: bytes) -> TOTP:
    # RFC 6238 with SHA-1 is what authenticator apps implement; HMAC-SHA-1 is not broken.
    return TOTP(secret, TOTP_DIGITS, SHA1(), TOTP_STEP)  # noqa: S303


def totp_step(moment: datetime) -> int:
    return int(moment.timestamp()) // TOTP_STEP


def matching_step(secret: bytes, code: str, moment: datetime) -> int | None:
    """The time step (now, one before or one after) whose code is ``code``, if any."""
    if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = _totp(secret)
    now = totp_step(moment)
    found = None
    for step in (now - 1, now, now + 1):
        # Every step is compared, so the time taken does not say which one matched.
        if hmac.compare_digest(totp.generate(step * TOTP_STEP), code.encode()):
            found = step
    return found


def base32_text(secret: bytes) -> str:
    return base64.b32encode(secret).decode().rstrip("=")


def provisioning_uri(secret: bytes, account_slug: str, login: str) -> str:
    return _totp(secret).get_provisioning_uri(f"{login}@{account_slug}", TOTP_ISSUER)


def seal_secret(ports: Ports, admin_id: int, secret: bytes) -> str:
    # TOTP secrets are sealed under a service key: a copy of the table cannot make codes.
    key = keyring.service_secrets(ports, TOTP_KEY_PURPOSE)[0]
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(key).encrypt(nonce, secret, _aad(admin_id))
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def open_secret(ports: Ports, admin_id: int, sealed_text: str) -> bytes:
    sealed = base64.urlsafe_b64decode(sealed_text + "=" * (-len(sealed_text) % 4))
    for key in keyring.service_secrets(ports, TOTP_KEY_PURPOSE):
        try:
            return AESGCM(key).decrypt(sealed[:12], sealed[12:], _aad(admin_id))
        except InvalidTag:
            continue
    raise CertvaultError("A stored TOTP secret cannot be opened.")


def _aad(admin_id: int) -> bytes:
    return f"certvault-totp:{admin_id}".encode()
