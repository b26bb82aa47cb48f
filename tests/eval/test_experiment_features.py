"""`sauce-jax experiment features` (Figure 4, Figure 5, audit cards): the statistics, the overlaps,
and a reduced run end to end on the shipped model, resumed."""

import dataclasses
import json

import numpy as np
import pytest

from sauce_jax.eval.conceptworld.experiments import features
from sauce_jax.eval.conceptworld.experiments.features import (
    FeaturesConfig,
    overlaps,
    run,
)
from sauce_jax.statistics import image_statistics
from sauce_jax.eval.conceptworld.sauce import DemoConfig
from sauce_jax.eval.top_images import precision, top_activating
from sauce_jax import cli
from sauce_jax.errors import ConfigError


def test_statistics_overlaps_and_top_images():
    z = np.array([[0.0, 2.0, 0.0], [1.0, 4.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # [N=4, d_sae=3]
    fs, fmav = image_statistics(z)
    np.testing.assert_allclose(fs, [0.5, 0.5, 0.0])  # eq. 7: share of images where the feature fires
    np.testing.assert_allclose(fmav, [2.0, 3.0, 0.0])  # eq. 8: mean over the images where it fires
    tops = top_activating(z, [0, 1, 2], 2, active_only=True)
    assert tops == {0: [2, 1], 1: [1, 0], 2: []}
    assert precision(tops, np.array([False, True, True, False])) == pytest.approx(0.75)
    assert precision({2: []}, np.ones(4, bool)) is None
    o = overlaps({"a": [1, 2, 3], "b": [3, 4], "c": [5]})
    assert o["a"]["b"] == {"jaccard": 0.25, "shared": [3]} and o["b"]["a"]["jaccard"] == 0.25
    assert o["a"]["c"] == {"jaccard": 0.0, "shared": []}


def test_bad_configs_are_refused(tmp_path, capsys):
    for changes in ({"n_images": 0}, {"n_top": 0}, {"n_top": 5, "n_images": 4}, {"figure_features": 0},
                    {"card_features": 1.5}, {"figure_concepts": ("unicorn",)}):
        with pytest.raises(ConfigError):
            FeaturesConfig(**changes)
    with pytest.raises(ConfigError, match="figure_concepts"):
        FeaturesConfig(demo=DemoConfig(concepts=("red",)), figure_concepts=("star",))
    assert cli.main(["experiment", "features", "--out", str(tmp_path), "--concepts", "unicorn"]) == 2
    assert cli.main(["experiment", "features", "--out", str(tmp_path), "--quick", "--images", "2"]) == 2
    assert "n_top" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["experiment", "features", "--help"])
    assert exit_info.value.code == 0 and "--all-concepts" in capsys.readouterr().out


def _tiny_config() -> FeaturesConfig:
    demo = DemoConfig(concepts=("star", "pool", "red"), sae_images=600, sae_epochs=1.0, sae_steps=None, n_select=20, k_grid=(8,),
                      gamma_grid=(-1.0,))
    return FeaturesConfig(demo=demo, n_images=150, card_features=2, figure_concepts=("pool", "red"))


@pytest.mark.slow
def test_reduced_features_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    config = _tiny_config()
    results = run(tmp_path, config, progress=False)
    for name in ("report.md", "results.json", "figure4.png", "figure4_tokens.png", "figure5.png"):
        assert (tmp_path / name).stat().st_size > 0
    for concept in config.demo.concepts:
        assert (tmp_path / "cards" / f"{concept}.png").stat().st_size > 0
        assert f"# Audit card: {concept}" in (tmp_path / "cards" / f"{concept}.md").read_text()
    s = results["summary"]
    assert s["d_sae"] == 2048 and s["images"] == 150 and s["tokens"] == 150 * 37
    assert s["fire_on_some_image"] > 1000
    # A feature fires on far fewer tokens than images (an image has 37 tokens).
    assert s["median_log10_fs_tokens"] < s["median_log10_fs"] - 0.5
    cards = results["cards"]
    for concept, card in cards.items():
        scores = [f["score"] for f in card["features"]]
        assert card["k"] == 8 and scores == sorted(scores, reverse=True)  # best first (eq. 4)
        for f in card["features"]:
            assert 0 <= f["fs"] <= 1 and f["fmav"] >= 0 and len(f["top_images"]) <= 4
            for t in f["top_images"]:
                assert t["holds"] == (concept in t["concepts"]) and t["value"] > 0
    # The selected features' top images hold the concept far more often than chance.
    assert s["mean_precision"] > 2 * s["mean_base_rate"], s
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"] == results["summary"]

    # A rerun loads no model and rewrites no part; another config in the folder is refused.
    parts = sorted((tmp_path / "parts").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    monkeypatch.setattr(features, "prepare", lambda *a, **k: pytest.fail("a finished run prepared a model again"))
    again = run(tmp_path, config, progress=False)
    assert again["cards"] == results["cards"]
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "parts").glob("*.json"))} == stamps
    with pytest.raises(ConfigError, match="another run"):
        run(tmp_path, dataclasses.replace(config, n_top=3), progress=False)
