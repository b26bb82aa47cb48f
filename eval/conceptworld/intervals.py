"""Means and 95% bootstrap intervals over seeds and concepts.

A cell of a multi-seed table is a matrix of per-concept values [S seeds, C concepts] (NaN where
a rate had no support). Its point estimate is the mean over seeds of each seed's mean over
concepts; its interval resamples seeds, then concepts within each drawn seed (a two-level
bootstrap: both the images a seed draws and the concepts chosen vary). A paired difference
applies the same to the per-(seed, concept) differences of two methods, so what the two share
(the images, the clean answers) cancels.

For ConceptWorld v3 (issue 31): `t_interval` and `bca_interval` over concept draws clustered by
seed, `t_test` and `holm` for a family of paired comparisons, and `best_baseline`, the baseline
chosen on validation tables.
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


# ------------------------------------------------------------------ v3: t, BCa, Holm, best baseline
#
# The unit that varies is the concept draw, and draws of one seed share its images, SAE and
# validation grid: they are clustered by seed. With several seeds, the interval is a t-interval
# over the seeds' means (S - 1 degrees of freedom; for equal cluster sizes this is the
# cluster-robust CR1 interval of the mean over every draw); with one seed, over its draws. BCa
# (`scipy.stats.bootstrap`) resamples the same units, and only where there are at least
# `BCA_MIN_UNITS` of them: below that its acceleration and bias estimates are noise.

BCA_MIN_UNITS = 10


def _units(values) -> tuple[np.ndarray, str]:
    """The independent units of a [S, C] matrix: each seed's mean over its concepts (seeds
    without a value dropped), or with one seed its concepts' values. Returns (units, "seeds" |
    "concepts")."""
    values = np.asarray(values, float)
    if values.ndim != 2:
        raise InputError(f"an interval needs a [seeds, concepts] matrix, got shape {values.shape}")
    values = values[np.isfinite(values).any(axis=1)]
    if values.shape[0] >= 2:
        return np.array([np.nanmean(row) for row in values]), "seeds"
    return (values[0][np.isfinite(values[0])] if values.size else np.zeros(0)), "concepts"


def t_interval(values, level: float = 0.95) -> dict:
    """{"mean", "lo", "hi", "se", "df", "unit", "n"}: the t-interval of a [S, C] matrix's mean
    over concept draws clustered by seed (see above); lo/hi None with fewer than 2 units."""
    from scipy import stats

    units, unit = _units(values)
    n = int(units.size)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "se": None, "df": None, "unit": unit, "n": 0}
    mean = float(units.mean())
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "se": None, "df": 0, "unit": unit, "n": n}
    se = float(units.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "se": se, "df": n - 1, "unit": unit, "n": n}


def bca_interval(values, level: float = 0.95, resamples: int = 9999, seed: int = 0) -> dict | None:
    """The BCa interval (`scipy.stats.bootstrap`, method "BCa") of the same units as `t_interval`,
    {"mean", "lo", "hi", "unit", "n"}; None with fewer than `BCA_MIN_UNITS` units."""
    from scipy import stats

    units, unit = _units(values)
    if units.size < BCA_MIN_UNITS:
        return None
    found = stats.bootstrap((units,), np.mean, confidence_level=level, n_resamples=resamples, method="BCa",
                            random_state=np.random.default_rng(seed))
    return {"mean": float(units.mean()), "lo": float(found.confidence_interval.low),
            "hi": float(found.confidence_interval.high), "unit": unit, "n": int(units.size)}


def t_test(differences) -> dict:
    """Two-sided one-sample t-test that the mean of paired differences ([S, C], clustered by seed
    as in `t_interval`) is 0: {"t", "p", "df", "mean", "n"}; p None with fewer than 2 units
    (a difference with no spread and a nonzero mean has p 0)."""
    from scipy import stats

    found = t_interval(differences)
    if found["df"] in (None, 0):
        return {"t": None, "p": None, "df": found["df"], "mean": found["mean"], "n": found["n"]}
    if found["se"] == 0:
        t, p = (0.0, 1.0) if found["mean"] == 0 else (float(np.sign(found["mean"]) * np.inf), 0.0)
    else:
        t = found["mean"] / found["se"]
        p = float(2 * stats.t.sf(abs(t), found["df"]))
    return {"t": t, "p": p, "df": found["df"], "mean": found["mean"], "n": found["n"]}


def holm(p_values: dict, alpha: float = 0.05) -> dict:
    """Holm's step-down correction over a family of tests {name: p}: {name: {"p", "p_holm",
    "reject"}}. The i-th smallest p (i from 0) is multiplied by (m - i), each adjusted p is at
    least the one before it (capped at 1), and a test is rejected when its adjusted p <= alpha.
    A p of None (a test that could not be run) stays in the family's size m and is never rejected."""
    m = len(p_values)
    ordered = sorted(((p, name) for name, p in p_values.items() if p is not None), key=lambda x: x[0])
    out = {name: {"p": None, "p_holm": None, "reject": False} for name, p in p_values.items() if p is None}
    running = 0.0
    for i, (p, name) in enumerate(ordered):
        running = min(1.0, max(running, (m - i) * p))
        out[name] = {"p": p, "p_holm": running, "reject": running <= alpha}
    return {name: out[name] for name in p_values}


BASELINES = ("GA", "GD", "KL", "PO")


def best_baseline(validation_tables, task: str | None = None, column: str = "selective_objective",
                  baselines=BASELINES) -> str:
    """The baseline to compare with, chosen on validation only: the one of `baselines` with the
    highest mean of `column` over the validation seeds (and over the tasks, unless `task`).
    `validation_tables`: one Table 2 (`results["table2"]`, {method: {task: {column: value}}})
    per validation seed, as a list or {seed: table}. Ties go to the earlier of `baselines`; a
    baseline no table scores is skipped."""
    tables = list(validation_tables.values()) if isinstance(validation_tables, dict) else list(validation_tables)
    means = {}
    for name in baselines:
        values = [cols.get(column) for table in tables for t, cols in table.get(name, {}).items()
                  if task is None or t == task]
        values = [float(v) for v in values if v is not None and np.isfinite(float(v))]
        if values:
            means[name] = float(np.mean(values))
    if not means:
        raise InputError(f"no validation table scores any of {list(baselines)} on {column!r}"
                         + (f" for {task}" if task else ""))
    return max(means, key=lambda name: (means[name], -baselines.index(name)))
