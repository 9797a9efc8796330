"""Text from uploaded files and certificates, made fit for a text column."""

from __future__ import annotations

import pytest

from certvault.services.kernel.text import REPLACEMENT, column_text


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("alice rsa2048", "alice rsa2048"),
        ("Straße Ω 証明書", "Straße Ω 証明書"),
        ("6BC162DA\x00", "6BC162DA"),  # a C terminator
        ("6BC162DA\x00\x00", "6BC162DA"),
        ("ad\x00min", f"ad{REPLACEMENT}min"),  # not "admin"
        ("bell\x07\x1b[2J", f"bell{REPLACEMENT}{REPLACEMENT}[2J"),
        ("line\nbreak\ttab\x7f", f"line{REPLACEMENT}break{REPLACEMENT}tab{REPLACEMENT}"),
        ("half \ud800 pair", f"half {REPLACEMENT} pair"),
        ("\x00", ""),
    ],
)
def test_control_characters_and_lone_surrogates_are_replaced(given, stored):
    assert column_text(given) == stored
    column_text(given).encode("utf-8")  # what every driver can send: no UnicodeEncodeError


def test_limit():
    assert column_text("x" * 300, 200) == "x" * 200
    assert column_text("a\x01b", 2) == f"a{REPLACEMENT}"
