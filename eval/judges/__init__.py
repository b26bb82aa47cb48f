"""Judges for UA_g: does a generated answer mention (reveal) the concept?

    judge = WordMatchJudge({"cat": ["kitten", "feline"]})       # or WordMatchJudge("synonyms.json")
    judge = ChatJudge(synonyms="synonyms.json")                 # SAUCE_JUDGE_BASE_URL / _MODEL / _API_KEY
    judge.judge("cat", ["A kitten on a sofa.", "A dog."])       # -> array([ True, False])

Both implement the `Judge` protocol; `make_judge("words" | "chat", ...)` picks one by name
(the `--judge` option of `sauce-jax eval`).
"""

from __future__ import annotations

import os

from .base import Judge, JudgeError, concept_word, load_synonyms
from .cache import VerdictCache, cache_key
from .chat import INSTRUCTION, ChatJudge, parse_verdict
from .words import WordMatchJudge, mentions, plural_forms

__all__ = ["INSTRUCTION", "ChatJudge", "Judge", "JudgeError", "VerdictCache", "WordMatchJudge", "cache_key",
           "concept_word", "load_synonyms", "make_judge", "mentions", "parse_verdict", "plural_forms"]

JUDGES = ("words", "chat")


def make_judge(kind: str, synonyms: str | os.PathLike | dict | None = None, **chat_options) -> Judge:
    """`WordMatchJudge` for "words", `ChatJudge` (endpoint from the environment unless given in
    `chat_options`) for "chat"."""
    from sauce_jax.errors import ConfigError

    if kind == "words":
        if chat_options:
            raise ConfigError(f"the words judge takes no endpoint options, got {sorted(chat_options)}")
        return WordMatchJudge(synonyms)
    if kind == "chat":
        return ChatJudge(synonyms=synonyms, **chat_options)
    raise ConfigError(f"judge must be one of {JUDGES}, got {kind!r}")
