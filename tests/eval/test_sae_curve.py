"""The SAE curve (`experiment sae-curve`): its snapshots are the SAEs shorter runs end with, the
budget rule reads a plateau as issue 31 defines it, and a run resumes without training again."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sauce_jax.errors import ConfigError
from sauce_jax.eval.conceptworld.experiments import sae_curve


def _points(evs, deads=None):
    budgets = (100, 250, 500, 1000)
    deads = deads or [0.0] * len(evs)
    return {b: {"ev": ev, "dead": dead} for b, ev, dead in zip(budgets, evs, deads)}


def test_the_budget_rule():
    # Plateau 0.95 at 1,000 steps, 0.945 at 500: a plateau; 250 is the first within 0.01.
    assert sae_curve.choose_budget(_points([0.80, 0.941, 0.945, 0.95])) == \
        {"plateau": 0.95, "largest": 1000, "valid": True, "chosen": 250}
    # Still climbing: 500 -> 1,000 gained 0.05, so the largest budget is no plateau.
    assert sae_curve.choose_budget(_points([0.7, 0.8, 0.9, 0.95]))["valid"] is False
    # Too many dead latents at 250: the next budget within 0.01 with < 5% dead is taken.
    assert sae_curve.choose_budget(_points([0.8, 0.945, 0.946, 0.95], [0, 0.08, 0.01, 0.0]))["chosen"] == 500
    # None qualifies.
    assert sae_curve.choose_budget(_points([0.8, 0.9, 0.93, 0.95], [0.1] * 4))["chosen"] is None
    # Half of the largest budget not measured: validity unknown.
    assert sae_curve.choose_budget({100: {"ev": 0.5, "dead": 0}, 300: {"ev": 0.6, "dead": 0}})["valid"] is None


def test_config_refuses_bad_grids_and_spent_seeds():
    with pytest.raises(ConfigError, match="budgets"):
        sae_curve.CurveConfig(budgets=())
    with pytest.raises(ConfigError, match="warm-up"):
        sae_curve.CurveConfig(budgets=(10, 100))
    with pytest.raises(ConfigError, match="images"):
        sae_curve.CurveConfig(images=(0,))
    with pytest.raises(ConfigError, match="not validation seeds"):
        sae_curve.CurveConfig(damage_seeds=(101,))


def test_snapshots_are_the_shorter_runs_and_the_curve_resumes(tmp_path):
    """A step-51 snapshot of a 102-step run equals a 51-step run's SAE (constant learning rate, the
    same batches); the held-out scores come from it; a rerun trains nothing and reads the same."""
    from sauce_jax.eval.conceptworld.sauce import concept_sae_config, load_model, sae_train_config
    from sauce_jax.train import train_sae

    config = dataclasses.replace(sae_curve.quick_config(), damage_seeds=())
    _, _, encoder, layer, _ = load_model()
    first = sae_curve.run(tmp_path / "curve", config, progress=False)
    assert set(first["points"]["64"]) == {"51", "102"}
    assert first["points"]["64"]["102"]["ev"] > first["points"]["64"]["51"]["ev"]  # more steps reconstruct better

    from sauce_jax.eval.conceptworld.render import render_many
    from sauce_jax.eval.conceptworld.sauce import GENERIC_SAE_STREAM
    from sauce_jax.eval.conceptworld.world import generic_stream

    specs = generic_stream(64, seed=config.seed, stream=GENERIC_SAE_STREAM)
    short = train_sae(tmp_path / "short", sae_config=concept_sae_config(encoder, config.demo),
                      train_config=sae_train_config(config.demo.sae_epochs, 1e-3, config.seed, steps=51),
                      encoder=encoder, images=list(render_many(specs)), layer=layer, token="all", progress=False)
    with np.load(tmp_path / "curve" / "snapshots" / "images64-steps51.npz") as snap:
        for name, value in short.params.items():
            np.testing.assert_allclose(snap[name], np.asarray(value), rtol=1e-6, atol=1e-7)

    calls = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr("sauce_jax.train.train_sae", lambda *a, **k: calls.append(1))
    try:
        again = sae_curve.run(tmp_path / "curve", config, progress=False)
    finally:
        monkey.undo()
    assert calls == [] and again["points"] == first["points"]
    assert json.loads((tmp_path / "curve" / "curve.json").read_text())["rule"]["64"]["largest"] == 102
