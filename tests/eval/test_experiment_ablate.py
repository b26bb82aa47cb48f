"""`sauce-jax experiment ablate`: SAUCE's choices varied one at a time on the shipped ConceptWorld LLaVA."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sauce_jax.eval.conceptworld.experiments import NAMES
from sauce_jax.eval.conceptworld.experiments.ablate import (
    AblateConfig,
    plan,
    quick_config,
    run,
    scores,
)
from sauce_jax.errors import ConfigError


def test_registered():
    assert "ablate" in NAMES


def test_plan_varies_one_choice_around_shared_defaults():
    config = AblateConfig()
    table = plan(config, llava_layer=4)
    assert list(table) == ["layer", "k_gamma", "token", "mode", "architecture", "selection", "dictionary"]
    assert [label for _, label, _ in table["mode"]][-1] == "replace"  # one point: gamma plays no part
    assert {p.mode for _, _, p in table["mode"]} == {"reconstruct", "delta", "gated", "replace"}
    assert [p.selection for _, _, p in table["selection"]] == ["eq4", "specific"]
    assert len(table["k_gamma"]) == len(config.k_values) * len(config.gamma_values)
    keys = {name: {p.key for _, _, p in entries} for name, entries in table.items()}
    default = next(p for _, label, p in table["layer"] if label == "layer 4")
    # The default point is one evaluation shared by every ablation scored with descriptions.
    for name in ("layer", "token", "mode", "architecture", "selection", "dictionary"):
        assert default.key in keys[name]
    # The dictionary ablation: every expansion x image count x k, each other SAE a name of its own.
    assert len(table["dictionary"]) == 2 * 2 * 2
    assert {p.sae_name for _, _, p in table["dictionary"]} == {
        "layer4-topk", "layer4-topk-n16000", "layer4-topk-x64", "layer4-topk-x64-n16000"}
    assert not any(p.generative for _, _, p in table["k_gamma"])  # the grid is yes/no only by default
    assert {p.layer for _, _, p in table["layer"]} == {1, 2, 3, 4}


def test_scores_fall_back_to_yes_no_rates_without_descriptions():
    def result(concept, domain, ua_d, ira_d):
        rate = {"value": None, "n": 0}
        return {"concept": concept, "domain": domain, "UA_d": {"value": ua_d, "n": 4}, "UA_g": rate,
                "IRA_d": {"value": ira_d, "n": 4}, "IRA_g": rate, "CRA_d": {"value": 1.0, "n": 4}, "CRA_g": rate,
                "utility": 90.0}

    s = scores([result("star", "object", 0.5, 0.8), result("red", "color", 1.0, 0.6)])
    assert s["concrete"]["unlearning"] == pytest.approx(0.5)
    assert s["abstract"]["utility_score"] == pytest.approx((0.6 + 1.0 + 0.9) / 3, abs=1e-3)
    assert s["all"]["unlearning"] == pytest.approx(0.75)


@pytest.mark.parametrize("change", [{"ablations": ("layer", "nope")}, {"layers": (-1,)}, {"k_values": ()},
                                    {"mode": "erase"}, {"architectures": ("topk", "topk")},
                                    {"gamma_values": (float("nan"),)}, {"wheres": ("last",)}, {"expansions": (0,)},
                                    {"dictionary_ks": ()}])
def test_bad_config_is_refused(change):
    with pytest.raises(ConfigError):
        AblateConfig(**change)


@pytest.mark.slow
def test_ablate_end_to_end_and_resume(tmp_path):
    config = dataclasses.replace(quick_config(), ablations=("layer", "token", "mode", "selection", "dictionary"))
    results = run(tmp_path, config, progress=False)
    assert results["llava_layer"] == 4
    by_label = {name: {r["label"]: r["scores"]["all"] for r in rows} for name, rows in results["ablations"].items()}
    clean = results["clean"]["describe"]["all"]
    # The clean model keeps every retained concept by construction; its utility is its own perception
    # score, which the utility subtasks that name concepts keep a little under 100.
    assert clean["unlearning"] == 0.0 and clean["IRA"] == clean["CRA"] == 1.0
    assert clean["utility_score"] == pytest.approx((2 + clean["utility"] / 100) / 3, abs=1e-4)
    default = by_label["layer"]["layer 4"]
    # Measured (2 concepts, 10 test images each, small SAEs): unlearning 0.43 at layer 4, 0.49 at
    # layer 2; utility scores 0.84 and 0.75.
    assert default["unlearning"] > clean["unlearning"] + 0.2
    assert by_label["layer"]["layer 2"]["unlearning"] > 0.2
    assert 0.5 < default["utility_score"] < 1.0
    assert by_label["token"]["select all"] == default  # the same point, evaluated once
    # The LLaVA drops the class token of the state it reads: editing only it there changes nothing.
    assert by_label["token"]["edit cls"]["unlearning"] == 0.0
    assert by_label["token"]["edit cls"]["utility_score"] == pytest.approx(clean["utility_score"])
    for name in ("report.md", "results.json", "ablate.png", "parts/features/layer2-topk-all.json",
                 "saes/layer2-topk/sae/cfg.json", "saes/layer4-topk/sae/cfg.json"):
        assert (tmp_path / name).is_file(), name
    assert "## Layer" in (tmp_path / "report.md").read_text()
    # The variants beyond the paper are points like the others, each with its own part.
    for label in ("gated gamma=-1", "replace"):
        assert 0.0 <= by_label["mode"][label]["unlearning"] <= 1.0, label
    assert by_label["selection"]["eq4"] == default and "specific" in by_label["selection"]
    assert (tmp_path / "parts/features/layer4-topk-all-specific.json").is_file()
    # Bigger dictionaries and more data are SAEs of their own, each measured on held-out images.
    saes = {r["series"]: r["sae"] for r in results["ablations"]["dictionary"]}
    assert [q["d_sae"] for q in saes.values()] == [4 * 128, 4 * 128, 16 * 128, 16 * 128]
    for q in saes.values():
        assert 0 < q["explained_variance"] <= 1 and q["l0"] <= 16 + 1e-6 and 0 <= q["dead_fraction"] < 1
    assert by_label["dictionary"]["x16, 300 images, k=16"] == default  # the default SAE, not retrained
    assert (tmp_path / "saes/layer4-topk-x4-n600/sae/cfg.json").is_file()
    assert "| SAE | d_sae | explained variance" in (tmp_path / "report.md").read_text()

    parts = sorted((tmp_path / "parts").rglob("*.json")) + sorted((tmp_path / "saes").rglob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    # A rerun of a subset in the same folder recomputes nothing.
    again = run(tmp_path, dataclasses.replace(config, ablations=("layer",)), progress=False)
    assert list(again["ablations"]) == ["layer"]
    assert {p: p.stat().st_mtime_ns for p in parts} == stamps
    assert json.loads((tmp_path / "results.json").read_text())["ablations"]["layer"] == again["ablations"]["layer"]
    with pytest.raises(ConfigError, match="another run"):  # other images: the points would not compare
        run(tmp_path, dataclasses.replace(config, demo=dataclasses.replace(config.demo, n_test=12)), progress=False)
