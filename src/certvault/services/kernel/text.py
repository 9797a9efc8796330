"""Text that comes from uploaded files and certificates, made fit for a text column.

Friendly names, subjects and issuers are whatever a file or a certificate says. PostgreSQL refuses
a NUL in text outright (one such name would fail the whole transaction of a bulk import), SQLite's
driver refuses lone surrogates, and control characters in a name shown on a page, in a mail or in
a terminal hide or fake what it says. Every such column is filled through :func:`column_text`.
"""

from __future__ import annotations

import unicodedata

REPLACEMENT = "\ufffd"


def column_text(value: str, limit: int | None = None) -> str:
    """``value`` with control characters and lone surrogates replaced by U+FFFD, cut to ``limit``.

    Replaced rather than dropped, so that "ad\\x00min" is not shown as "admin". Trailing NULs go:
    they are C string terminators some writers keep (pyca's no-password.p12 names its key
    "6BC162DA\\x00").
    """
    value = value.rstrip("\x00")
    if not value.isprintable():
        value = "".join(
            REPLACEMENT if unicodedata.category(c) in ("Cc", "Cs") else c for c in value
        )
    return value if limit is None else value[:limit]
