"""Secrets held between two pages (a passphrase shown now and used when the form is posted):
sealed under a service key and bound to what holds them, so that a database reader learns
nothing usable and a sealed value moved to another row does not open there."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from certvault.crypto import envelope
from certvault.crypto.passphrase import generate_passphrase
from certvault.errors import SealBroken
from certvault.services.kernel import keyring
from certvault.services.kernel.ports import Ports


def _aad(purpose: str, binding: str) -> bytes:
    return f"certvault/{purpose}:{binding}".encode()


def seal(ports: Ports, purpose: str, binding: str, secret: str) -> str:
    """``secret`` sealed under the newest key of ``purpose``, bound to ``binding``."""
    key = keyring.service_secrets(ports, purpose)[0]
    sealed = envelope.seal(key, secret.encode(), _aad(purpose, binding))
    return base64.urlsafe_b64encode(sealed.nonce + sealed.ciphertext).decode()


def open_held(ports: Ports, purpose: str, binding: str, text: str) -> str:
    """The secret ``seal`` made; :class:`SealBroken` when it does not open here."""
    try:
        raw = base64.urlsafe_b64decode(text)
    except ValueError as exc:
        raise SealBroken("A held secret cannot be opened.") from exc
    sealed = envelope.Sealed(raw[: envelope.NONCE_BYTES], raw[envelope.NONCE_BYTES :])
    # Every key is tried: two processes that met no key at once may each have made one.
    for key in keyring.service_secrets(ports, purpose):
        try:
            return envelope.open_sealed(key, sealed, _aad(purpose, binding)).decode()
        except SealBroken:
            continue
    raise SealBroken("A held secret cannot be opened.")


@dataclass(frozen=True)
class HeldPassphrase:
    """The passphrase a download page shows: the one shown before whenever it can be opened
    again, so that a form error never loses it; otherwise a new one, and the page says so."""

    value: str
    sealed: str  # what to keep until the form is posted
    renewed: bool  # a passphrase was shown before and could not be shown again: this is new


def held_passphrase(ports: Ports, purpose: str, binding: str, sealed: str | None) -> HeldPassphrase:
    if sealed is not None:
        try:
            return HeldPassphrase(open_held(ports, purpose, binding, sealed), sealed, False)
        except SealBroken:
            pass
    value = generate_passphrase()
    return HeldPassphrase(value, seal(ports, purpose, binding, value), sealed is not None)
