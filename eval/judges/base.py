"""What every judge shares: the `Judge` protocol, `JudgeError`, and synonym tables.

A judge answers the paper's UA_g question for a batch of generated answers: does this answer
mention (reveal) the concept? Concepts are named as their folders are ("golden_retriever"); a
synonym table maps a concept to other words for it ({"cat": ["kitten", "feline"]}).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from sauce_jax.errors import InputError, SauceError

Synonyms = Mapping[str, Sequence[str]]


class JudgeError(SauceError, RuntimeError):
    """A judge could not reach a verdict: the endpoint kept failing, or answered something that
    is not a verdict. The message names the endpoint, the attempts and the last response."""


@runtime_checkable
class Judge(Protocol):
    """Decides, per answer, whether it mentions or reveals a concept."""

    def judge(self, concept: str, answers: Sequence[str], synonyms: Sequence[str] | None = None) -> np.ndarray:
        """[len(answers)] bool: True where the answer mentions `concept` (or one of `synonyms`;
        None: the judge's own synonym table)."""
        ...


def concept_word(concept: str) -> str:
    """A concept's name as words: folder names use underscores ("golden_retriever")."""
    return " ".join(concept.replace("_", " ").split())


def _key(concept: str) -> str:
    return concept_word(concept).lower()


def normalize_synonyms(table: Synonyms, where: str = "synonym table") -> dict[str, tuple[str, ...]]:
    """Check a {concept: [synonym, ...]} table and key it by lower-case concept words."""
    if not isinstance(table, Mapping):
        raise InputError(f"{where} must map concept -> list of synonyms, got {type(table).__name__}")
    out: dict[str, tuple[str, ...]] = {}
    for concept, words in table.items():
        if not isinstance(concept, str) or not concept_word(concept):
            raise InputError(f"{where}: concept {concept!r} is not a non-empty string")
        if isinstance(words, str) or not isinstance(words, Sequence):
            raise InputError(f"{where}: synonyms of {concept!r} must be a list of strings, got {words!r}")
        bad = [w for w in words if not isinstance(w, str) or not w.strip()]
        if bad:
            raise InputError(f"{where}: synonyms of {concept!r} include {bad[0]!r}, not a non-empty string")
        key = _key(concept)
        out[key] = tuple(dict.fromkeys(out.get(key, ()) + tuple(" ".join(w.split()) for w in words)))
    return out


def load_synonyms(source: str | os.PathLike | Synonyms | None) -> dict[str, tuple[str, ...]]:
    """A synonym table from a dict, or a JSON file holding {"concept": ["synonym", ...]}."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return normalize_synonyms(source)
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"synonyms file {str(path)!r} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"synonyms file {str(path)!r} cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"synonyms file {str(path)!r} is not valid JSON: {exc}") from exc
    return normalize_synonyms(data, where=f"synonyms file {str(path)!r}")


def terms_of(concept: str, table: Mapping[str, Sequence[str]], synonyms: Sequence[str] | None = None) -> tuple[str, ...]:
    """The concept's own words first, then its synonyms (given, else from the table)."""
    word = concept_word(concept)
    if not word:
        raise InputError(f"concept {concept!r} is empty")
    if synonyms is None:
        synonyms = table.get(_key(concept), ())
    elif isinstance(synonyms, str):
        raise InputError(f"synonyms of {concept!r} must be a list of strings, not the string {synonyms!r}")
    return tuple(dict.fromkeys([word, *(" ".join(s.split()) for s in synonyms if s.strip())]))


def check_answers(answers: Sequence[str]) -> list[str]:
    if isinstance(answers, str):
        raise InputError("answers must be a list of strings, got one string")
    answers = list(answers)
    bad = [i for i, a in enumerate(answers) if not isinstance(a, str)]
    if bad:
        raise InputError(f"answer {bad[0]} is {type(answers[bad[0]]).__name__}, not a string")
    return answers
