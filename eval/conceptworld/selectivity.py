"""Selectivity on ConceptWorld: does unlearning remove only the target, or everything near it?

ConceptWorld knows every image's full ground truth, so these are exact:

- **balanced accuracy** of yes/no answers over present and absent concepts: the mean of the
  share of "yes" on present concepts and of "not yes" on absent ones. A model that says yes to
  everything scores 0.5, however high its recall;
- **hallucinated concepts**: descriptions naming a concept the image does not show;
- **degenerate descriptions**: text that does not parse into item phrases (article, then
  distinct concept words; items joined by "and"; an optional scene), or repeats a word twice
  in a row ("a yellow yellow yellow").

Pure functions over answers and specs; `benchmark.Evaluation` collects the answers.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np

from sauce_jax.errors import InputError

from . import text as T
from .world import CONCEPTS, DOMAIN_OF, DOMAINS, Spec, rng_for

# Per language: item articles, the word joining items, the scene's lead-in, words allowed inside an item.
_GRAMMAR = {
    "en": {"articles": {"a", "an"}, "and": "and", "scene": ("on",), "scene_articles": {"a", "an"}, "inner": set()},
    "es": {"articles": {"un", "una"}, "and": "y", "scene": ("en",), "scene_articles": {"el", "la"},
           "inner": {"de"}},
}


def _item_words(language: str) -> set[str]:
    words = T.WORDS[language]
    return {words[c] for c in CONCEPTS if DOMAIN_OF[c] != "scene"} | {words["face"]}


def _scene_words(language: str) -> set[str]:
    return {T.WORDS[language][c] for c in DOMAINS["scene"]}


def tokens(text: str) -> list[str]:
    """Lower-cased words with the final full stop split off."""
    return text.lower().replace(".", " . ").replace("?", " ? ").split()


def repeats_word(text: str) -> bool:
    """True when some word follows itself ("yellow yellow")."""
    words = tokens(text)
    return any(a == b for a, b in zip(words, words[1:]))


def parses(text: str, language: str = "en") -> bool:
    """Does `text` read as item phrases and an optional scene, the form of ConceptWorld's
    descriptions? Lenient on purpose: an item may lose any of its words (a forgotten color
    leaves "a wood star"), so only text that stops being a description fails."""
    g = _GRAMMAR[language]
    words = tokens(text)
    if words and words[-1] == ".":
        words = words[:-1]
    scene_at = next((i for i, w in enumerate(words) if w in g["scene"]), None)
    items, scene = (words, []) if scene_at is None else (words[:scene_at], words[scene_at:])
    if scene and not (len(scene) == 3 and scene[1] in g["scene_articles"] and scene[2] in _scene_words(language)):
        return False
    if not items:
        return False
    allowed = _item_words(language)
    phrases: list[list[str]] = [[]]
    for w in items:
        if w == g["and"]:
            phrases.append([])
        else:
            phrases[-1].append(w)
    for phrase in phrases:
        if len(phrase) < 2 or phrase[0] not in g["articles"]:
            return False
        body = [w for w in phrase[1:] if w not in g["inner"]]
        if not body or any(w not in allowed for w in body) or len(set(body)) != len(body):
            return False
    return True


def degenerate(text: str, language: str = "en") -> bool:
    """A description that does not parse (`parses`) or repeats a word (`repeats_word`)."""
    return repeats_word(text) or not parses(text, language)


@functools.lru_cache(maxsize=1 << 16)
def named_concepts(text: str) -> frozenset[str]:
    """Every concept a text names, in either language (the UA_g judge's word matching)."""
    return frozenset(c for c in CONCEPTS if T.mentions(text, c))


def hallucinated(text: str, spec: Spec) -> frozenset[str]:
    """Concepts the text names that the image does not show."""
    return named_concepts(text) - spec.concepts


# The slot of a description a concept fills (`text.item_phrase`: an item is a shape or a face,
# so objects and emotions share one slot; then its color and material; the scene).
SLOT_OF = {"object": "shape", "emotion": "shape", "color": "color", "material": "material", "scene": "scene"}


def hallucination_split(concept: str, forget: Sequence[tuple[str, Spec]], pool: Sequence[tuple[str, Spec]]) -> dict:
    """HAL split by where the absent concept is named, each {"value", "n"} as `rate`:

    - HAL_swap: forget images' descriptions naming an absent concept of the target's own slot
      (the word that replaces a forgotten one, the success case of the paper's Figure 1);
    - HAL_other: forget images' descriptions naming an absent concept of another slot;
    - HAL_pool: descriptions of images without the concept naming any absent concept.

    `forget` and `pool` are (description, spec) pairs. A description may count in both forget
    rates. Only HAL_other and HAL_pool are damage."""
    slot = SLOT_OF[DOMAIN_OF[concept]]
    named = [{SLOT_OF[DOMAIN_OF[c]] for c in hallucinated(text, spec)} for text, spec in forget]
    return {"HAL_swap": rate(slot in slots for slots in named),
            "HAL_other": rate(bool(slots - {slot}) for slots in named),
            "HAL_pool": rate(bool(hallucinated(text, spec)) for text, spec in pool)}


def rate(flags: Iterable[bool]) -> dict:
    """{"value": share of True (None when empty), "n": count}, the shape of `Rate.as_dict`."""
    a = np.asarray(list(flags), bool)
    return {"value": round(float(a.mean()), 4) if a.size else None, "n": int(a.size)}


def balanced_accuracy(says_yes: Sequence[bool], present: Sequence[bool]) -> dict:
    """Mean of the yes-rate on present concepts and the not-yes rate on absent ones; None
    unless both kinds were asked. {"value", "n", "tpr", "tnr"}."""
    yes, truth = np.asarray(says_yes, bool), np.asarray(present, bool)
    if yes.shape != truth.shape:
        raise InputError(f"answers {yes.shape} and truth {truth.shape} differ in length")
    if not truth.any() or truth.all():
        return {"value": None, "n": int(yes.size), "tpr": None, "tnr": None}
    tpr, tnr = float(yes[truth].mean()), float((~yes[~truth]).mean())
    return {"value": round((tpr + tnr) / 2, 4), "n": int(yes.size), "tpr": round(tpr, 4), "tnr": round(tnr, 4)}


def absent_concepts(spec: Spec, seed: int) -> list[str]:
    """One concept per domain that the image does not show, drawn from a stream keyed by the
    image (the same questions for every method, so the answers pair up)."""
    rng = rng_for(seed, "absent", spec.noise_seed, spec.scene)
    out = []
    for names in DOMAINS.values():
        pool = [c for c in names if not spec.has(c)]
        out.append(pool[int(rng.integers(len(pool)))])
    return out
