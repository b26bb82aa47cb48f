"""`sauce-jax experiment transfer` at CI size: the source's SAE and features on two siblings."""

import dataclasses
import json

import pytest

from sauce_jax.eval.conceptworld.experiments.transfer import TransferConfig, quick_config, run
from sauce_jax.eval.conceptworld.variants import SiblingConfig
from sauce_jax.errors import ConfigError


@pytest.mark.slow
def test_transfer_runs_resumes_and_measures_the_towers(tmp_path, conceptworld_sae):
    config = quick_config(["heart"])
    results = run(tmp_path, config, sae_dir=conceptworld_sae, progress=False)
    targets = results["targets"]
    assert list(targets) == ["source", "language", "tower"]
    for name in ("report.md", "results.json", "table4.png"):
        assert (tmp_path / name).stat().st_size > 0
    # The language sibling was built on the source's tower: the SAE's layer is untouched.
    language, tower = targets["language"]["tower"], targets["tower"]["tower"]
    assert language["relative_l2"] == 0.0 and language["mean_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert language["sae_explained_variance_target"] == language["sae_explained_variance_source"]
    # The tower sibling's tower was trained further (three steps here): its activations moved,
    # and with them the SAE's fit.
    assert tower["relative_l2"] > 1e-3
    assert tower["sae_explained_variance_target"] != tower["sae_explained_variance_source"]
    # On the source, SAUCE forgets what the clean model shows (the clean model is its own reference).
    source = targets["source"]["per_concept"]
    assert source["clean"][0]["UA_d"]["value"] == 0.0
    assert source["SAUCE"][0]["UA_d"]["value"] >= 0.5 and source["SAUCE"][0]["UA_g"]["value"] >= 0.4
    for target in targets.values():
        assert set(target["table"]) == {"clean", "SAUCE"} and "concrete" in target["table"]["SAUCE"]
        assert 0 <= target["per_concept"]["SAUCE"][0]["utility"] <= 100
    for sibling in ("language", "tower"):
        summary = json.loads((tmp_path / "models" / sibling / "model" / "training.json").read_text())
        assert summary["images"] == 8 and "recipe" in summary

    # A rerun trains nothing and scores nothing again.
    parts = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "parts").iterdir()}
    models = {p: p.stat().st_mtime_ns for p in (tmp_path / "models").rglob("model.safetensors")}
    again = run(tmp_path, config, sae_dir=conceptworld_sae, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "parts").iterdir()} == parts
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "models").rglob("model.safetensors")} == models
    assert again["targets"]["tower"]["table"] == targets["tower"]["table"]

    # The folder is refused to another config, and a sibling folder to another recipe.
    with pytest.raises(ConfigError, match="another run"):
        run(tmp_path, dataclasses.replace(config, n_drift=17), sae_dir=conceptworld_sae, progress=False)


def test_bad_transfer_configs(tmp_path):
    with pytest.raises(ConfigError, match="mode"):
        TransferConfig(mode="erase")
    with pytest.raises(ConfigError, match="n_drift"):
        TransferConfig(n_drift=0)
    with pytest.raises(ConfigError, match="tower_steps"):
        SiblingConfig(tower_steps=0)
    with pytest.raises(ConfigError, match="tower_lr"):
        SiblingConfig(tower_lr=float("nan"))


def test_a_sibling_folder_is_refused_to_another_recipe(tmp_path):
    from sauce_jax.eval.conceptworld.variants import check_recipe

    check_recipe(tmp_path, {"tower_steps": 3})
    check_recipe(tmp_path, {"tower_steps": 3})  # the same recipe resumes
    with pytest.raises(ConfigError, match="another recipe"):
        check_recipe(tmp_path, {"tower_steps": 4})
