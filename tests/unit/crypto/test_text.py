"""Text from uploaded files: a C string's trailing NUL goes, anything else unsafe drops the text."""

from __future__ import annotations

import pytest

from certvault.crypto.text import safe_text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6BC162DA\x00", "6BC162DA"),  # pyca's no-password.p12
        ("alice\x00\x00\x00", "alice"),  # a padded fixed-size buffer
        ("alice rsa2048", "alice rsa2048"),
        ("Ålice Ω 🔑 東京", "Ålice Ω 🔑 東京"),
        (None, None),
        ("", None),
        ("\x00", None),
    ],
)
def test_clean_text_is_kept(value, expected):
    assert safe_text(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "ali\x00ce",  # a NUL inside is no C-string artifact
        "\x00alice",
        "alice\n",
        "alice\r\nSet-Cookie: x",
        "alice\t",
        "\x1b[31mred",  # a terminal escape
        "alice\x7f",  # DEL
        "alice\x85",  # C1 next line
        "evil\u202egnp.exe",  # right-to-left override
        "al\u200bice",  # zero-width space
        "alice\u2028",  # line separator
        "alice\u2029",  # paragraph separator
        "alice\ud800",  # lone surrogate
    ],
)
def test_unsafe_text_is_dropped(value):
    assert safe_text(value) is None
