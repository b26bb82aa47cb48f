"""The SAUCE variants' grids and gate thresholds (`eval/conceptworld/experiments/selective.py`)."""

import numpy as np
import pytest

from sauce_jax.errors import ConfigError
from sauce_jax.eval.conceptworld.experiments import selective
from sauce_jax.eval.conceptworld.sauce import quick_demo


def test_the_gate_threshold_opens_on_the_asked_fraction_of_negative_tokens():
    rng = np.random.default_rng(0)
    tokens = np.zeros((1000, 6))
    tokens[:, 2] = rng.exponential(size=1000)  # feature 2 fires on every token, feature 4 on a few
    tokens[:50, 4] = 10.0 + rng.random(50)
    for fraction in (0.1, 0.01):
        threshold = selective.gate_threshold(tokens, [2, 4], fraction)
        opened = (tokens[:, [2, 4]].max(axis=1) > threshold).mean()
        assert opened == pytest.approx(fraction, abs=0.002)
    # Features silent on the negatives: the gate opens wherever they fire at all.
    assert selective.gate_threshold(tokens, [0, 1], 0.1) == 0.0


class _Set:
    def __init__(self, n):
        self.feature_ids = tuple(range(n))


def test_every_variant_gets_a_twelve_point_grid():
    demo = quick_demo()
    demo = type(demo)(**{**demo.__dict__, "k_grid": (8, 16, 32, 64), "gamma_grid": (-0.5, -1.0, -2.0)})
    sets = {"star": _Set(128)}
    for variant in selective.VARIANTS:
        axes = selective.axes_for(variant, demo, sets)
        assert int(np.prod([len(a.values) for a in axes])) == 12, variant
    # A set holding fewer features than the grid asks for caps k instead of failing.
    axes = selective.axes_for("replace", demo, {"star": _Set(64)})
    assert axes[0].values == (8, 16, 32, 64) and axes[0].high == 64
    assert selective.axes_for("gated", quick_demo(), {"star": _Set(20)})[0].values == (16,)


def test_unknown_variants_are_refused():
    with pytest.raises(ConfigError, match="erase"):
        selective.check_variants(("gated", "erase"))


class _Evaluation:
    """A validation or test split whose objective per (concept, recipe, k) is a given table."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def run(self, concept, edited):
        self.calls.append(edited)
        recipe, _, point = edited
        return {"value": self.table[(concept, recipe)].get(point["k"], 0.0)}


def test_the_per_concept_row_chooses_recipe_and_k_for_each_concept_alone(monkeypatch):
    """Star is best forgotten by delta at k 16, red by reconstruct at k 64; the best single
    choice for both (the mean over concepts a per-seed row maximises) is neither."""
    from types import SimpleNamespace

    demo = type(quick_demo())(**{**quick_demo().__dict__, "concepts": ("star", "red"), "k_grid": (16, 32, 64),
                                 "gamma_grid": (-1.0,)})
    val = _Evaluation({("star", "reconstruct"): {16: 0.6, 32: 0.7, 64: 0.5},
                       ("star", "delta"): {16: 0.9, 32: 0.7, 64: 0.2},
                       ("red", "reconstruct"): {16: 0.3, 32: 0.6, 64: 0.8},
                       ("red", "delta"): {16: 0.2, 32: 0.6, 64: 0.5}})
    test = _Evaluation(val.table)
    monkeypatch.setattr(selective, "grid_objective", lambda result, demo: result["value"])
    monkeypatch.setattr(selective, "editor", lambda name, *a, **k: lambda concept, point: (name, concept, point))
    ctx = SimpleNamespace(config=SimpleNamespace(demo=demo), val=val, test=test, encoder=None, layer=0,
                          retain_examples=lambda concept, unlearned: [])
    sets = {"star": _SetTop(64), "red": _SetTop(64)}
    rows = selective.per_concept_rows(ctx, (None, sets), progress=False, candidates=("reconstruct", "delta"))
    assert list(rows) == [selective.PER_CONCEPT]  # no control asked for
    row = rows[selective.PER_CONCEPT]
    chosen = row["hyperparameters"]["per_concept"]
    assert (chosen["star"]["recipe"], chosen["star"]["k"]) == ("delta", 16)
    assert (chosen["red"]["recipe"], chosen["red"]["k"]) == ("reconstruct", 64)
    assert row["hyperparameters"]["val_objective"] == pytest.approx((0.9 + 0.8) / 2)
    # The test split is read once per concept, with the chosen edit only.
    assert [(recipe, concept, point["k"]) for recipe, concept, point in test.calls] == \
        [("delta", "star", 16), ("reconstruct", "red", 64)]
    assert set(row["val_grids"]["red"]) == {"reconstruct", "delta"}
    with pytest.raises(ConfigError, match="erase"):
        selective.per_concept_rows(ctx, (None, sets), progress=False, candidates=("erase",))


class _SetTop(_Set):
    def top(self, k, gamma=None):
        return _Set(k)
