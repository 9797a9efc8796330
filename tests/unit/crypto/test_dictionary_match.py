"""crypto/dictionary_match.py answers exactly as zxcvbn's own dictionary matcher: the same
matches in the same order, and so the same guesses and the same pattern sequence from zxcvbn."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zxcvbn import matching, zxcvbn

from certvault.crypto import dictionary_match
from certvault.crypto.passphrase import PassphraseRejected, check_passphrase

dictionary_match.install()

# Words from every list, short and long, so that generated passphrases hit them.
_WORDS = sorted(
    {
        word
        for words in matching.RANKED_DICTIONARIES.values()
        for word in itertools.islice(words, 0, None, 997)
    }
)
_LEET = "4@8({[<3691!|70$5+%2"
_pieces = st.one_of(
    st.sampled_from(_WORDS),
    st.sampled_from(_WORDS).map(str.upper),
    st.sampled_from(_WORDS).map(lambda w: w[::-1]),
    st.sampled_from(_WORDS).map(lambda w: w.translate(str.maketrans("aeiolst", "4310|57"))),
    st.text(alphabet=_LEET + "abcxyz -_.19", max_size=4),
    # Lower case that changes the length, that folds, and combining marks.
    st.sampled_from(["İ", "ß", "ǅ", "e\u0301", "Σ", "ﬁ", "K"]),
    st.text(max_size=3),
)
# zxcvbn itself fails on an empty string; certvault refuses one before it asks.
passphrases = (
    st.lists(_pieces, min_size=1, max_size=6).map("".join).map(lambda p: p[:72]).filter(bool)
)


@contextmanager
def _reference_matcher() -> Iterator[None]:
    matching.dictionary_match = dictionary_match.reference
    try:
        yield
    finally:
        matching.dictionary_match = dictionary_match.dictionary_match


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(passphrases)
def test_the_same_matches_in_the_same_order(passphrase):
    expected = dictionary_match.reference(passphrase, matching.RANKED_DICTIONARIES)
    assert dictionary_match.dictionary_match(passphrase) == expected
    assert dictionary_match.dictionary_match(passphrase, matching.RANKED_DICTIONARIES) == expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(passphrases)
def test_zxcvbn_judges_the_same(passphrase):
    with _reference_matcher():
        expected = zxcvbn(passphrase)
    assert _judgement(zxcvbn(passphrase)) == _judgement(expected)


@pytest.mark.parametrize(
    "passphrase",
    [
        "bench-download-passphrase-1",
        "P@ssw0rd!P@ssw0rd!",
        "drowssapdrowssap",
        "correct horse battery staple",
        "İstanbul-İzmir-1999",
        "Tr0ub4dor&3",
        "qwertyuiopasdfgh",
        "x" * 72,
    ],
)
def test_known_passphrases_judged_the_same(passphrase):
    with _reference_matcher():
        expected = zxcvbn(passphrase)
        verdict_before = _verdict(passphrase)
    assert _judgement(zxcvbn(passphrase)) == _judgement(expected)
    assert _verdict(passphrase) == verdict_before


def _judgement(result: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """The guesses and the pattern sequence; a regex match's ``re.Match`` (equal only to itself,
    even between two runs of zxcvbn's own) by what it matched where."""
    sequence = [
        {k: (v.span(), v.group()) if isinstance(v, re.Match) else v for k, v in m.items()}
        for m in result["sequence"]
    ]
    return result["guesses"], sequence


def _verdict(passphrase: str) -> str:
    try:
        check_passphrase(passphrase, 1)
    except PassphraseRejected as exc:
        return str(exc)
    return "accepted"


def test_the_longest_words_of_every_list():
    for words in matching.RANKED_DICTIONARIES.values():
        for word in sorted(words, key=len)[-3:]:
            for phrase in (word, f"x{word}1", word.upper(), word[::-1], word[:-1]):
                expected = dictionary_match.reference(phrase, matching.RANKED_DICTIONARIES)
                assert dictionary_match.dictionary_match(phrase) == expected


def test_a_word_in_several_lists_comes_in_the_lists_order():
    lists = {"first": {"pass": 3, "word": 1}, "second": {"word": 2, "pass": 9}, "third": {}}
    index = dictionary_match._build(lists)
    for phrase in ("password", "wordpass", "PassWord-word"):
        assert dictionary_match._match(phrase, index, []) == dictionary_match.reference(
            phrase, lists
        )


def test_lowering_that_lengthens_keeps_zxcvbns_positions():
    for phrase in (
        "İpassword",
        "passİword",
        "İİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİpassword",
    ):
        expected = dictionary_match.reference(phrase, matching.RANKED_DICTIONARIES)
        assert dictionary_match.dictionary_match(phrase) == expected


def test_lists_of_its_own_and_extra_lists_go_as_zxcvbn_goes():
    own = {"words": {"hunter": 1, "two": 2}}
    assert dictionary_match.dictionary_match("hunter2two", own) == dictionary_match.reference(
        "hunter2two", own
    )
    with_inputs = {**matching.RANKED_DICTIONARIES, "user_inputs": {"acme": 1, "passwords": 2}}
    for phrase in ("acme-passwords-acme", "Password-ACME"):
        assert dictionary_match.dictionary_match(phrase, with_inputs) == dictionary_match.reference(
            phrase, with_inputs
        )


def test_installed_in_place_of_zxcvbns_own():
    check_passphrase("an unremarkable passphrase of words", 12)  # installs it, as it runs
    assert matching.dictionary_match is dictionary_match.dictionary_match
    assert dictionary_match.reference is not dictionary_match.dictionary_match
