"""The schema's patterns agree with the rules the services enforce."""

from __future__ import annotations

import re

import pytest

from certvault.errors import InvalidInput
from certvault.services.directory.persons import normalize_email
from certvault.web.compat.schemas import decode_p12
from certvault.web.control_characters import MULTI_LINE_PATTERN, PATTERN, has_control_characters
from certvault.web.patterns import BASE64, EMAIL, PASSPHRASE


def _accepted(check: object, value: str) -> bool:
    try:
        check(value)  # type: ignore[operator]
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize(
    "value",
    ["a@b", " Alice@Example.org ", "a b@c", "@b", "a@", "a@b@c", "x" * 64 + "@b", "x" * 65 + "@b"]
    + ["a@" + "d" * 255, "a@" + "d" * 256, "ä@ö.de", "a\u00a0b@c"],
)
def test_email_pattern_is_the_services_rule(value: str) -> None:
    assert (re.fullmatch(EMAIL, value) is not None) == _accepted(normalize_email, value), value


@pytest.mark.parametrize(
    "value",
    ["AAAA", "AA==", "AAA=", "A A\nA=\n", "\tAAAA\r\n", "AA=A", "", " ", "AAAAA", "A===", "AA-_"],
)
def test_base64_pattern_is_the_decoders_rule(value: str) -> None:
    assert (re.fullmatch(BASE64, value) is not None) == _accepted(decode_p12, value), value


@pytest.mark.parametrize("value", ["word", " word", "word ", "two words", "tab\tin", "é"])
def test_passphrase_pattern_refuses_white_space_at_the_ends(value: str) -> None:
    expected = value == value.strip() and not has_control_characters(value)
    assert (re.fullmatch(PASSPHRASE, value) is not None) == expected, value


@pytest.mark.parametrize("value", ["plain", "line\nbreak", "tab\t", "nul\x00", "esc\x1b", "c1\x85"])
def test_control_character_patterns_are_the_rule(value: str) -> None:
    assert (re.fullmatch(PATTERN, value) is None) == has_control_characters(value)
    multi = re.fullmatch(MULTI_LINE_PATTERN, value) is None
    assert multi == has_control_characters(value, multiline=True)
