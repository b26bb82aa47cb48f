"""The paper's metrics: unlearning accuracy (UA_d, UA_g), in-domain and cross-domain retain
accuracy (IRA, CRA), and the MME-style utility score.

Each unlearning metric is counted only over the cases the clean model got right (it said yes,
or its description named the concept): a metric never rewards forgetting what the model never
knew. The clean accuracy over all cases is reported beside each one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sauce_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Rate:
    """A share with its support: `value` over `n` counted cases (NaN when n == 0)."""

    value: float
    n: int

    def as_dict(self) -> dict:
        return {"value": None if np.isnan(self.value) else round(float(self.value), 4), "n": int(self.n)}


def _bools(name: str, x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != bool:
        raise InputError(f"{name} must be booleans, got dtype {a.dtype}")
    return a.reshape(-1)


def _pair(clean, edited) -> tuple[np.ndarray, np.ndarray]:
    clean, edited = _bools("clean", clean), _bools("edited", edited)
    if clean.shape != edited.shape:
        raise InputError(f"clean answers {clean.shape} and edited answers {edited.shape} differ in length")
    return clean, edited


def unlearning_accuracy(clean_shows, edited_shows) -> Rate:
    """UA: among cases whose image holds the concept and where the clean model showed it, the
    share where the unlearned model no longer does."""
    clean, edited = _pair(clean_shows, edited_shows)
    n = int(clean.sum())
    return Rate(float((~edited[clean]).mean()) if n else float("nan"), n)


def retain_accuracy(clean_shows, edited_shows) -> Rate:
    """IRA / CRA: among retained concepts the clean model showed, the share still shown."""
    clean, edited = _pair(clean_shows, edited_shows)
    n = int(clean.sum())
    return Rate(float(edited[clean].mean()) if n else float("nan"), n)


def clean_accuracy(shows) -> Rate:
    a = _bools("shows", shows)
    return Rate(float(a.mean()) if a.size else float("nan"), int(a.size))


def mme_score(correct, image_ids: Sequence) -> dict[str, float]:
    """MME's rule for one subtask: accuracy over questions and accuracy+ over images (both of an
    image's questions right), in percent; the subtask's score is their sum (max 200)."""
    correct = _bools("correct", correct)
    ids = np.asarray(image_ids)
    if ids.shape != correct.shape:
        raise InputError(f"image_ids {ids.shape} and answers {correct.shape} differ in length")
    if correct.size == 0:
        raise InputError("no answers to score")
    acc = 100.0 * correct.mean()
    per_image = [correct[ids == i].all() for i in np.unique(ids)]
    acc_plus = 100.0 * float(np.mean(per_image))
    return {"acc": round(float(acc), 2), "acc_plus": round(acc_plus, 2), "score": round(float(acc) + acc_plus, 2)}


def utility(subtasks: dict[str, dict[str, float]]) -> float:
    """One number on a 0-100 scale: the mean over subtasks of (acc + acc+) / 2."""
    if not subtasks:
        raise InputError("no subtasks to average")
    return round(float(np.mean([s["score"] / 2 for s in subtasks.values()])), 2)


def mean_rate(rates: Sequence[Rate]) -> Rate:
    """The macro average of rates that have support (concepts weigh equally)."""
    kept = [r for r in rates if r.n > 0 and not np.isnan(r.value)]
    return Rate(float(np.mean([r.value for r in kept])) if kept else float("nan"), sum(r.n for r in kept))
