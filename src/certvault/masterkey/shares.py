"""Shamir shares of the master key, as SLIP-39 mnemonics (``shamir-mnemonic``).

SLIP-39 carries a checksum in every share and a digest of the secret, so a mistyped share or a
share of another secret is refused instead of silently rebuilding a wrong key.
"""

from __future__ import annotations

from collections.abc import Sequence

import shamir_mnemonic
from shamir_mnemonic import MnemonicError
from shamir_mnemonic.share import Share

from certvault.errors import InvalidInput


class SharesInvalid(InvalidInput):
    """The shares do not rebuild a master key."""

    code = "shares_invalid"


def split_secret(secret: bytes, threshold: int, count: int) -> list[str]:
    if not 1 <= threshold <= count <= 16:
        raise InvalidInput("Need 1 <= threshold <= shares <= 16.")
    if threshold == 1 and count > 1:
        # SLIP-39 forbids 1-of-N with N > 1: every share would simply be the secret.
        raise InvalidInput("A threshold of 1 with several shares gives each custodian the key.")
    groups = shamir_mnemonic.generate_mnemonics(
        group_threshold=1, groups=[(threshold, count)], master_secret=secret, passphrase=b""
    )
    return list(groups[0])


def combine_shares(mnemonics: Sequence[str]) -> bytes:
    """Rebuild the secret; every message names shares by position, never by their words."""
    cleaned = [" ".join(m.lower().split()) for m in mnemonics if m.strip()]
    if not cleaned:
        raise SharesInvalid("No shares were given.")
    parsed = []
    for position, mnemonic in enumerate(cleaned, start=1):
        share = _parse(mnemonic)
        if share is None:
            raise SharesInvalid(
                f"Share {position} is not a valid share (a word is wrong or missing)."
            )
        parsed.append(share)
    first = parsed[0]
    for position, share in enumerate(parsed[1:], start=2):
        if share.common_parameters() != first.common_parameters():
            raise SharesInvalid(f"Share {position} belongs to another set of shares.")
    indexes = {share.index for share in parsed}
    if len(indexes) < first.member_threshold:
        raise SharesInvalid(
            f"{first.member_threshold} different shares are needed; {len(indexes)} were given."
        )
    secret = _combine(cleaned)
    if secret is None:
        raise SharesInvalid("The shares do not rebuild a master key (a share is wrong).")
    return secret


# The library's exceptions quote share words. They are dropped here, and our own errors are
# raised outside the `except` blocks so that not even an exception's hidden context keeps them.


def _parse(mnemonic: str) -> Share | None:
    try:
        return Share.from_mnemonic(mnemonic)
    except (MnemonicError, ValueError, KeyError, IndexError):
        return None


def _combine(mnemonics: list[str]) -> bytes | None:
    try:
        return bytes(shamir_mnemonic.combine_mnemonics(mnemonics, passphrase=b""))
    except (MnemonicError, ValueError, KeyError, IndexError):
        return None
