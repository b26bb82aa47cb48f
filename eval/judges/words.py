"""`WordMatchJudge`: an answer mentions a concept when it contains the concept's word or a synonym.

Matching is case-insensitive and on whole words ("cat" is in "Two cats." and "the cat's
tail", not in "category"); the last word of a term also matches its regular English plural
(cat/cats, box/boxes, berry/berries, leaf/leaves); the words of a multi-word term ("ice rink")
may be separated by any spaces or hyphens. It cannot see negation: "there is no cat" mentions
cat. `ChatJudge` is the paper's judge; this one is free, fast and deterministic.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence

import numpy as np

from .base import Synonyms, check_answers, load_synonyms, terms_of

_SEPARATOR = r"[\s\-]+"
_VOWELS = set("aeiou")


def plural_forms(word: str) -> tuple[str, ...]:
    """The word and its regular English plurals (over-generating is harmless for matching)."""
    forms = [word, word + "s", word + "es"]
    if len(word) > 1 and word.endswith("y") and word[-2] not in _VOWELS:
        forms.append(word[:-1] + "ies")
    if word.endswith("fe"):
        forms.append(word[:-2] + "ves")
    elif word.endswith("f"):
        forms.append(word[:-1] + "ves")
    return tuple(dict.fromkeys(forms))


@functools.lru_cache(maxsize=4096)
def term_pattern(term: str) -> re.Pattern:
    """A regex matching `term` as whole words, its last word in singular or plural."""
    words = term.lower().replace("-", " ").split() or [term.lower()]  # a bare "-" stays itself
    *head, last = words
    tail = "(?:" + "|".join(re.escape(f) for f in sorted(plural_forms(last), key=len, reverse=True)) + ")"
    body = _SEPARATOR.join([re.escape(w) for w in head] + [tail])
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def mentions(answer: str, terms: Sequence[str]) -> bool:
    """Whether `answer` contains any of `terms` (whole words, plural-aware)."""
    return any(term_pattern(t).search(answer) for t in terms)


class WordMatchJudge:
    """Concept-word matching with a synonym table (a dict or a JSON file of
    {"concept": ["synonym", ...]}); implements `Judge`."""

    def __init__(self, synonyms: Synonyms | str | os.PathLike | None = None):
        self.synonyms = load_synonyms(synonyms)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> WordMatchJudge:
        return cls(path)

    def terms(self, concept: str, synonyms: Sequence[str] | None = None) -> tuple[str, ...]:
        """Every term that counts as a mention of `concept`."""
        return terms_of(concept, self.synonyms, synonyms)

    def judge(self, concept: str, answers: Sequence[str], synonyms: Sequence[str] | None = None) -> np.ndarray:
        """[len(answers)] bool: does each answer name the concept or a synonym?"""
        terms = self.terms(concept, synonyms)
        return np.array([mentions(a, terms) for a in check_answers(answers)], dtype=bool)

    def __repr__(self) -> str:
        return f"WordMatchJudge({len(self.synonyms)} concepts with synonyms)"
