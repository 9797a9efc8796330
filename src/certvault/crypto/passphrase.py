"""Passphrases for released PKCS#12 files: generated ones, and the policy for callers' own."""

from __future__ import annotations

import secrets
import unicodedata
from typing import Any

from certvault.errors import InvalidInput

# 32 symbols without the look-alikes 0/o and 1/l: 5 bits each.
_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
GENERATED_GROUPS = 6
GROUP_LENGTH = 4
GENERATED_BITS = GENERATED_GROUPS * GROUP_LENGTH * 5  # 120 >= the 112 the S/MIME BR ask for
MAX_LENGTH = 1024


class PassphraseMismatch(InvalidInput):
    """The two passphrases are not the same."""

    code = "passphrase_mismatch"
    status = 400


class OwnPassphraseNotAllowed(InvalidInput):
    """This account does not allow choosing the passphrase: use the one shown."""

    code = "own_passphrase_not_allowed"
    status = 400


class PassphraseRejected(InvalidInput):
    """The passphrase does not meet the account's policy."""

    code = "weak_passphrase"


def generate_passphrase() -> str:
    # 32 symbols take exactly 5 bits each: 120 random bits, read at once, make every symbol with
    # no bias (one read of the system's generator, not one per symbol).
    bits = int.from_bytes(secrets.token_bytes(GENERATED_BITS // 8))
    symbols = [_ALPHABET[(bits >> (5 * i)) & 31] for i in range(GENERATED_GROUPS * GROUP_LENGTH)]
    return "-".join(
        "".join(symbols[g * GROUP_LENGTH : (g + 1) * GROUP_LENGTH]) for g in range(GENERATED_GROUPS)
    )


def check_passphrase(passphrase: str, min_length: int) -> str:
    """Return the passphrase exactly as given, or raise without ever repeating it.

    No Unicode normalisation: the file must open with the very bytes the person typed, and
    OpenSSL, NSS and cryptography do not normalise either (an e with a combining accent and a
    precomposed é are different passphrases to them). Strength is judged on that same form.
    """
    if not passphrase:
        raise PassphraseRejected("The passphrase must not be empty.")
    if len(passphrase) < min_length:
        raise PassphraseRejected(f"The passphrase needs at least {min_length} characters.")
    if len(passphrase) > MAX_LENGTH:
        raise PassphraseRejected(f"The passphrase may have at most {MAX_LENGTH} characters.")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in passphrase):
        raise PassphraseRejected("The passphrase contains control characters.")
    if passphrase.strip() != passphrase:
        raise PassphraseRejected("The passphrase must not start or end with white space.")
    weakness = _weakness(passphrase)
    if weakness is not None:
        raise PassphraseRejected(
            f"The passphrase is too easy to guess: {weakness}. Use a longer one, for instance "
            "four or five unrelated words."
        )
    return passphrase


# Whoever gets the file can try passphrases offline for as long as they like. zxcvbn's bar for
# that case (its score 4, "strong protection from an offline slow-hash attack") is 10^10 guesses.
MIN_GUESSES_LOG10 = 10.0
# zxcvbn's cost grows fast with length (its l33t matching is exponential in the substitutions it
# sees): it judges windows of 32 characters of the first 128, and the strongest window counts. A
# passphrase is at least as hard to guess as any part of it.
_WINDOW, _JUDGED = 32, 128

_PATTERNS = {
    "repeat": "repeated characters or words",
    "sequence": "a run of characters such as abc or 9876",
    "spatial": "a keyboard pattern such as qwerty",
    "date": "a date",
    "regex": "a recent year",
}


def _weakness(passphrase: str) -> str | None:
    """Why ``passphrase`` is easy to guess, or None when it is not; never the passphrase itself."""
    # Imported here: its word lists take tens of milliseconds to load, which most commands and
    # every worker that never checks a passphrase should not pay.
    from zxcvbn import zxcvbn

    from certvault.crypto import dictionary_match

    dictionary_match.install()
    weakest: dict[str, Any] | None = None
    for start in range(0, min(len(passphrase), _JUDGED), _WINDOW):
        result = zxcvbn(passphrase[start : start + _WINDOW])
        if result["guesses_log10"] >= MIN_GUESSES_LOG10:
            return None
        if weakest is None or result["guesses_log10"] > weakest["guesses_log10"]:
            weakest = result
    assert weakest is not None  # the passphrase is not empty
    return _reason(weakest["sequence"])


def _reason(matches: list[dict[str, Any]]) -> str:
    """The pattern that covers most of the passphrase, in words (never the matched text)."""
    known = [m for m in matches if m["pattern"] != "bruteforce"]
    if not known:
        return "too few characters that are hard to predict"
    widest = max(known, key=lambda m: len(m["token"]))
    if widest["pattern"] != "dictionary":
        return _PATTERNS.get(widest["pattern"], "a predictable pattern")
    if widest.get("l33t"):
        return "a common word or password with predictable substitutions such as @ for a"
    if widest.get("reversed"):
        return "a common word or password written backwards"
    if widest.get("dictionary_name") == "passwords":
        return "a commonly used password"
    return "common words or names"
