"""Passphrases for released PKCS#12 files: generated ones, and the policy for callers' own."""

from __future__ import annotations

import secrets
import unicodedata

from certvault.errors import InvalidInput

# 32 symbols without the look-alikes 0/o and 1/l: 5 bits each.
_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
GENERATED_GROUPS = 6
GROUP_LENGTH = 4
GENERATED_BITS = GENERATED_GROUPS * GROUP_LENGTH * 5  # 120 >= the 112 the S/MIME BR ask for
MAX_LENGTH = 1024


class PassphraseRejected(InvalidInput):
    """The passphrase does not meet the account's policy."""

    code = "weak_passphrase"


def generate_passphrase() -> str:
    groups = (
        "".join(secrets.choice(_ALPHABET) for _ in range(GROUP_LENGTH))
        for _ in range(GENERATED_GROUPS)
    )
    return "-".join(groups)


def check_passphrase(passphrase: str, min_length: int) -> str:
    """Return the passphrase NFC-normalized, or raise without ever repeating it."""
    value = unicodedata.normalize("NFC", passphrase)
    if not value:
        raise PassphraseRejected("The passphrase must not be empty.")
    if len(value) < min_length:
        raise PassphraseRejected(f"The passphrase needs at least {min_length} characters.")
    if len(value) > MAX_LENGTH:
        raise PassphraseRejected(f"The passphrase may have at most {MAX_LENGTH} characters.")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise PassphraseRejected("The passphrase contains control characters.")
    if value.strip() != value:
        raise PassphraseRejected("The passphrase must not start or end with white space.")
    return value
