"""The one check of a caller's own passphrase: length, form, and how easy it is to guess."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import pytest

from certvault.crypto.passphrase import (
    GENERATED_BITS,
    PassphraseRejected,
    check_passphrase,
    generate_passphrase,
)

# Each at least 12 characters, so that only its strength is wrong: what it is, and why.
WEAK = {
    "aaaaaaaaaaaa": "repeated characters or words",
    "2024202420242024": "repeated characters or words",
    "abcdefghijklmnop": "a run of characters such as abc or 9876",
    "sdfghjkl;lkjhgfd": "a keyboard pattern such as qwerty",
    "iloveyou12345678": "a commonly used password",
    "P@ssw0rd1234": "predictable substitutions",
    "drowssap1234": "written backwards",
    "1990-12-24 1991": "a date",
}


@pytest.mark.parametrize(("passphrase", "why"), WEAK.items(), ids=list(WEAK))
def test_easy_to_guess_passphrases_are_refused_saying_why(passphrase, why):
    with pytest.raises(PassphraseRejected) as refused:
        check_passphrase(passphrase, 12)
    message = refused.value.message
    assert message.startswith("The passphrase is too easy to guess: ") and why in message
    assert refused.value.code == "weak_passphrase" and refused.value.status == 422
    # Never the passphrase, nor a recognisable piece of it.
    for piece in (passphrase, passphrase[:6], passphrase[-6:]):
        assert piece.lower() not in message.lower()


@pytest.mark.parametrize(
    "passphrase",
    [
        "correct horse battery staple",
        "a-good-long-passphrase",
        "Straße-Ünïcode-Ω-passphrase",
        "jdk3-vn7q-pw2x-h8mz",
        "my own Pässphrase 42",
    ],
)
def test_hard_to_guess_passphrases_pass_unchanged(passphrase):
    assert check_passphrase(passphrase, 12) is passphrase


def test_generated_passphrases_pass_the_check_they_skip():
    assert GENERATED_BITS >= 112
    for _ in range(20):
        phrase = generate_passphrase()
        assert check_passphrase(phrase, 12) == phrase


def test_generated_passphrases_use_every_symbol_in_every_place():
    phrases = [generate_passphrase() for _ in range(3000)]
    assert all(re.fullmatch(r"([a-z2-9]{4}-){5}[a-z2-9]{4}", p) for p in phrases)
    assert len(set(phrases)) == len(phrases)
    for place in (i for i in range(29) if i % 5 != 4):  # every fifth character is a dash
        seen = Counter(p[place] for p in phrases)
        assert set(seen) == set("abcdefghijkmnpqrstuvwxyz23456789")  # no 0/o, 1/l
        assert max(seen.values()) < 3 * min(seen.values())  # about 94 each


def test_the_passphrase_is_kept_exactly_as_given():
    """No Unicode normalisation: the file opens with the bytes the person typed."""
    nfd = "Cafe\u0301 au lait sans sucre"
    assert unicodedata.normalize("NFC", nfd) != nfd
    kept = check_passphrase(nfd, 12)
    assert kept == nfd and kept.encode() == nfd.encode()
    nfc = unicodedata.normalize("NFC", nfd)
    assert check_passphrase(nfc, 12) == nfc


def test_the_strongest_window_counts_and_only_the_first_128_characters_are_judged():
    # A weak start does not sink a passphrase that goes on to be hard to guess.
    assert check_passphrase("a" * 40 + "jdk3-vn7q-pw2x-h8mz", 12)
    # Easy to guess all along, however long: refused, without judging a kilobyte of it.
    with pytest.raises(PassphraseRejected, match="repeated"):
        check_passphrase("ab" * 500, 12)
    with pytest.raises(PassphraseRejected, match="repeated"):
        check_passphrase("a" * 128 + "jdk3-vn7q-pw2x-h8mz", 12)


@pytest.mark.parametrize(
    ("passphrase", "message"),
    [
        ("", "must not be empty"),
        ("jdk3-vn7q", "at least 12 characters"),
        ("jdk3-vn7q-pw2x-h8mz" * 60, "at most 1024 characters"),
        ("jdk3-vn7q-\x00-pw2x-h8mz", "control characters"),
        ("jdk3-vn7q-\ud800-pw2x-h8mz", "control characters"),
        (" jdk3-vn7q-pw2x-h8mz", "white space"),
    ],
)
def test_form_rules_come_first(passphrase, message):
    with pytest.raises(PassphraseRejected, match=message):
        check_passphrase(passphrase, 12)
