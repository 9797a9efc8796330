"""Text taken from uploaded files, made safe to store, show and log."""

from __future__ import annotations

import unicodedata

# Control characters (C0, DEL, C1), invisible format characters (bidi overrides that reorder
# what a page shows, zero-width characters), lone surrogates, and line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def safe_text(value: str | None) -> str | None:
    """``value`` without trailing NULs, or None if it is empty or still holds an unsafe character.

    Tools that write C strings leave a NUL at the end (pyca's ``no-password.p12`` names its key
    ``'6BC162DA\\x00'``); that is stripped. Any other control or invisible character drops the
    text entirely rather than replacing it: this is for optional labels such as a friendly name,
    and no label is better than one its owner did not write.
    """
    if value is None:
        return None
    text = value.rstrip("\x00")
    if not text or any(unicodedata.category(c) in _UNSAFE_CATEGORIES for c in text):
        return None
    return text
