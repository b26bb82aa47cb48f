"""The SAUCE variants' grids and gate thresholds (`eval/conceptworld/selective.py`)."""

import numpy as np
import pytest

from sauce_jax.errors import ConfigError
from sauce_jax.eval.conceptworld import selective
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
