"""Means and 95% bootstrap intervals over seeds and concepts.

A cell of a multi-seed table is a matrix of per-concept values [S seeds, C concepts] (NaN where
a rate had no support). Its point estimate is the mean over seeds of each seed's mean over
concepts; its interval resamples seeds, then concepts within each drawn seed (a two-level
bootstrap: both the images a seed draws and the concepts chosen vary). A paired difference
applies the same to the per-(seed, concept) differences of two methods, so what the two share
(the images, the clean answers) cancels.
"""

from __future__ import annotations

import numpy as np

from sauce_jax.errors import InputError

DRAWS = 2000


def _cell_mean(values: np.ndarray) -> float:
    per_seed = [np.nanmean(row) for row in values if np.isfinite(row).any()]
    return float(np.mean(per_seed)) if per_seed else float("nan")


def bootstrap(values, draws: int = DRAWS, seed: int = 0, level: float = 0.95) -> dict:
    """{"mean", "lo", "hi", "seeds", "n"} of a [S, C] matrix (see the module docstring).
    With one seed only the concepts are resampled; a cell without any value is all None."""
    values = np.asarray(values, float)
    if values.ndim != 2:
        raise InputError(f"bootstrap needs a [seeds, concepts] matrix, got shape {values.shape}")
    values = values[np.isfinite(values).any(axis=1)]
    if values.size == 0:
        return {"mean": None, "lo": None, "hi": None, "seeds": 0, "n": 0}
    rng = np.random.default_rng(seed)
    s, c = values.shape
    stats = np.empty(draws)
    for b in range(draws):
        rows = values[rng.integers(s, size=s)]  # [S, C]
        picked = rows[np.arange(s)[:, None], rng.integers(c, size=(s, c))]
        stats[b] = _cell_mean(picked)
    stats = stats[np.isfinite(stats)]
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail]) if stats.size else (np.nan, np.nan)
    return {"mean": round(_cell_mean(values), 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4),
            "seeds": int(s), "n": int(np.isfinite(values).sum())}


def excludes_zero(cell: dict) -> bool:
    """Does a difference's interval lie entirely on one side of 0?"""
    return cell["lo"] is not None and (cell["lo"] > 0 or cell["hi"] < 0)
