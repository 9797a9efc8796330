"""zxcvbn's dictionary matcher, answering exactly as zxcvbn's own and about six times faster.

zxcvbn looks every substring of a passphrase up in each of its word lists in turn, and does it
again for the reversed passphrase and for every l33t reading of it: close to half of the time
it spends on a passphrase. Here every word of every list is put in one set, once (about 40 ms,
on the first passphrase a process judges); only a substring found there is looked up in the
lists, and a substring longer than the longest word is not looked up at all. The matches come
out in zxcvbn's order: by position, then in the order of its lists.

:func:`install` puts the matcher in place of zxcvbn's (which its reversed and l33t matchers call
as well); zxcvbn's own stays at :data:`reference` for the tests that hold the two to the same
answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from zxcvbn import matching

Match = dict[str, Any]

reference: Callable[..., list[Match]] = matching.dictionary_match


@dataclass(frozen=True)
class _Index:
    lists: tuple[tuple[str, Mapping[str, int]], ...]  # the lists indexed, in zxcvbn's order
    words: frozenset[str]  # every word of every list
    longest: int

    def covers(self, dictionaries: Mapping[str, Mapping[str, int]]) -> bool:
        """Whether ``dictionaries`` starts with exactly the lists indexed, in their order."""
        given = iter(dictionaries.items())
        for name, words in self.lists:
            pair = next(given, None)
            if pair is None or pair[0] != name or pair[1] is not words:
                return False
        return True


def _build(dictionaries: Mapping[str, Mapping[str, int]]) -> _Index:
    lists = tuple((name, words) for name, words in dictionaries.items() if words)
    merged = frozenset().union(*(words.keys() for _, words in lists))
    return _Index(lists, merged, max(map(len, merged), default=0))


_index: _Index | None = None


def _match(password: str, index: _Index, extra: list[tuple[str, Mapping[str, int]]]) -> list[Match]:
    matches = []
    length = len(password)
    # zxcvbn slices the lowered passphrase at the passphrase's own positions. Lowering never
    # shortens a string (it lengthens a dotted capital I), so each slice has j - i + 1
    # characters, and one longer than the longest word cannot be a word.
    lower = password.lower()
    words = index.words
    for i in range(length):
        for j in range(i, min(length, i + index.longest)):
            word = lower[i : j + 1]
            if word in words:  # rare: one look-up in every list
                for name, ranked in index.lists:
                    rank = ranked.get(word)
                    if rank is not None:
                        matches.append(_dictionary_match(password, i, j, word, rank, name))
    for name, ranked in extra:  # lists indexed later than these come after them in zxcvbn too
        for i in range(length):
            for j in range(i, length):
                word = lower[i : j + 1]
                rank = ranked.get(word)
                if rank is not None:
                    matches.append(_dictionary_match(password, i, j, word, rank, name))
    return sorted(matches, key=lambda m: (m["i"], m["j"]))


def _dictionary_match(password: str, i: int, j: int, word: str, rank: int, name: str) -> Match:
    return {
        "pattern": "dictionary",
        "i": i,
        "j": j,
        "token": password[i : j + 1],
        "matched_word": word,
        "rank": rank,
        "dictionary_name": name,
        "reversed": False,
        "l33t": False,
    }


def dictionary_match(
    password: str, _ranked_dictionaries: Mapping[str, Mapping[str, int]] | None = None
) -> list[Match]:
    """zxcvbn's ``matching.dictionary_match``, with the same arguments and the same answer."""
    dictionaries = (
        matching.RANKED_DICTIONARIES if _ranked_dictionaries is None else _ranked_dictionaries
    )
    index = _index
    if index is None or not index.covers(dictionaries):  # lists of their own: zxcvbn's way
        return reference(password, dictionaries)
    extra = [(n, w) for n, w in list(dictionaries.items())[len(index.lists) :] if w]
    return _match(password, index, extra)


def install() -> None:
    """Index zxcvbn's word lists (once) and answer its dictionary lookups from here on."""
    global _index
    if _index is None:
        # zxcvbn adds this (empty) list on its first call; added now, the lists never change
        # size while a lookup in another thread walks them.
        matching.RANKED_DICTIONARIES.setdefault("user_inputs", {})
        _index = _build(matching.RANKED_DICTIONARIES)
    matching.dictionary_match = dictionary_match
