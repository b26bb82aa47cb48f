"""ConceptWorld v3, part 1 (issue 31): the SAE's step budget, the reserved seeds, the objective
collapse cannot win, the split HAL, the "SAE only" row and the statistics. Fast: no model runs."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest

from sauce_jax import cli
from sauce_jax.errors import ConfigError
from sauce_jax.eval.conceptworld import sauce
from sauce_jax.eval.conceptworld.runs import same_config
from sauce_jax.eval.conceptworld.sauce import QUICK_SAE_STEPS, DemoConfig, quick_demo

# ------------------------------------------------------------------------------ --sae-steps


def _train_config_of(monkeypatch, config: DemoConfig):
    """The TrainConfig `train_concept_sae` trains `config`'s SAE with (nothing is trained)."""
    import sauce_jax.train

    seen = []
    monkeypatch.setattr(sauce_jax.train, "train_or_load", lambda out, **kw: seen.append(kw["train_config"]))
    encoder = SimpleNamespace(config=SimpleNamespace(hidden_size=8))
    sauce.train_concept_sae(encoder, None, config, layer=4, progress=False)
    return seen[0]


def _tokens_per_image() -> int:
    from pathlib import Path

    vision = json.loads((Path(sauce.__file__).parent / "model" / "config.json").read_text())["vision_config"]
    return (vision["image_size"] // vision["patch_size"]) ** 2 + 1  # patches and the class token


def test_the_sae_step_budget_is_decoupled_from_the_image_count(monkeypatch):
    default = DemoConfig()
    assert default.sae_steps is None  # today's budget: epochs over the images
    cfg = _train_config_of(monkeypatch, default)
    assert cfg.steps is None and cfg.epochs == default.sae_epochs
    for images in (1500, 6000):
        cfg = _train_config_of(monkeypatch, dataclasses.replace(default, sae_images=images, sae_steps=433))
        assert cfg.steps == 433
    # The CI preset states its budget, the one 2 epochs of its 1,500 images always gave it.
    quick = quick_demo()
    assert quick.sae_steps == QUICK_SAE_STEPS == math.floor(
        quick.sae_epochs * quick.sae_images * _tokens_per_image() / 1024)
    assert _train_config_of(monkeypatch, quick).steps == QUICK_SAE_STEPS
    from sauce_jax.eval.conceptworld.experiments.table2 import quick_config

    assert quick_config().demo.sae_steps == QUICK_SAE_STEPS
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ConfigError, match="sae_steps"):
            DemoConfig(sae_steps=bad)


@pytest.mark.parametrize("argv, module, expected", [
    (["demo", "--quick"], "demo", QUICK_SAE_STEPS),
    (["demo", "--quick", "--sae-steps", "433"], "demo", 433),
    (["demo", "--sae-steps", "2500"], "demo", 2500),
    (["demo"], "demo", None),
    (["experiment", "table2", "--quick"], "table2", QUICK_SAE_STEPS),
    (["experiment", "table2", "--study", "--sae-steps", "1000"], "table2", 1000),
    (["experiment", "table2"], "table2", None),
])
def test_sae_steps_reaches_the_config(argv, module, expected, monkeypatch, tmp_path):
    import importlib

    seen = []
    experiment = importlib.import_module(f"sauce_jax.eval.conceptworld.experiments.{module}")
    monkeypatch.setattr(experiment, "run", lambda out, config, **kwargs: seen.append(config) or {"done": True})
    monkeypatch.setattr("sauce_jax.cli.experiments.print_report", lambda *a, **k: None)
    monkeypatch.setattr("sauce_jax.cli.conceptworld.print_report", lambda *a, **k: None)
    assert cli.main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    demo = seen[0] if module == "demo" else seen[0].demo
    assert demo.sae_steps == expected


class _Stop(Exception):
    pass


def test_eval_trains_its_sae_for_sae_steps_in_a_folder_of_its_own(monkeypatch, tmp_path):
    import sauce_jax.loading
    from sauce_jax.eval.conceptworld import vlm

    seen = []

    def train(encoder, work, config, layer, progress):
        seen.append((work, config))
        raise _Stop

    monkeypatch.setattr(vlm, "load", lambda model_dir: (SimpleNamespace(config=SimpleNamespace(
        vision_feature_layer=-1)), None))
    monkeypatch.setattr(sauce_jax.loading, "load_encoder", lambda llava: SimpleNamespace(layer_index=lambda i: 4))
    monkeypatch.setattr(sauce, "train_concept_sae", train)
    for extra in ([], ["--sae-steps", "433"]):
        with pytest.raises(_Stop):
            from sauce_jax.cli import build_parser

            args = build_parser().parse_args(["eval", "--concepts", "star", "--work", str(tmp_path), *extra])
            args.func(args)
    (plain, plain_config), (stepped, stepped_config) = seen
    assert plain_config.sae_steps is None and plain.name == "sae-seed0"  # the folder it always had
    assert stepped_config.sae_steps == 433 and stepped.name == "sae-seed0-steps433"


def test_a_run_folder_written_before_a_field_existed_still_resumes_at_its_default():
    old = {"demo": {"seed": 6, "sae_images": 1500}, "methods": ["GA"]}
    assert same_config(old, {"demo": {"seed": 6, "sae_images": 1500, "sae_steps": None,
                                      "objective": "compensatory"}, "methods": ["GA"]})
    assert not same_config(old, {"demo": {"seed": 6, "sae_images": 1500, "sae_steps": 433}, "methods": ["GA"]})
    assert not same_config(old, {"demo": {"seed": 6, "sae_images": 1500, "objective": "selective"},
                                 "methods": ["GA"]})
    assert not same_config(old, {"demo": {"seed": 7, "sae_images": 1500}, "methods": ["GA"]})
    assert not same_config(old, {"demo": {"seed": 6}, "methods": ["GA"]})


# --------------------------------------------------------------------------- reserved seeds


def test_v3_test_seeds_are_reserved_and_fresh(tmp_path, monkeypatch):
    from sauce_jax.eval.conceptworld.experiments import table2, table2_seeds

    assert table2_seeds.V3_TEST_SEEDS == tuple(range(111, 121))
    spent = table2_seeds.TEST_SEEDS + table2_seeds.SELECTIVE_TEST_SEEDS + table2_seeds.VALIDATION_SEEDS
    assert not set(table2_seeds.V3_TEST_SEEDS) & set(spent)
    assert table2_seeds.parse_seeds("v3-test") == table2_seeds.V3_TEST_SEEDS
    seen = []  # the seeds a run was started on (nothing runs here)
    monkeypatch.setattr(table2, "run", lambda out, config, **kwargs: seen.append(config.demo.seed) or {"rows": {}})
    for seed in (111, 115, 120):
        with pytest.raises(ConfigError, match="reserved test seeds"):
            table2_seeds.run(tmp_path, table2.Table2Config(), (7, seed))
    assert not any(tmp_path.iterdir()) and seen == []
    # The command refuses them too, a single --seed included, and runs them when opened.
    monkeypatch.setattr("sauce_jax.cli.experiments.print_report", lambda *a, **k: None)
    assert cli.main(["experiment", "table2", "--quick", "--seed", "113", "--out", str(tmp_path / "a")]) == 2
    assert cli.main(["experiment", "table2", "--quick", "--seeds", "v3-test", "--out", str(tmp_path / "b")]) == 2
    assert seen == []
    assert cli.main(["experiment", "table2", "--quick", "--seed", "113", "--open-test-seeds",
                     "--out", str(tmp_path / "c")]) == 0
    assert cli.main(["experiment", "table2", "--quick", "--seed", "7", "--out", str(tmp_path / "d")]) == 0
    assert seen == [113, 7]


# -------------------------------------------------------------------------------- split HAL


def _spec(scene="court", shape="star", emotion=None, color="red", material="wood"):
    from sauce_jax.eval.conceptworld.world import Item, Spec

    return Spec(scene, (Item(shape, emotion, color, material),), 0)


def test_hal_is_split_into_the_targets_slot_other_slots_and_the_pool():
    import numpy as np

    from sauce_jax.eval.conceptworld.benchmark import _selectivity, selectivity
    from sauce_jax.eval.conceptworld.selectivity import hallucination_split

    red_star = _spec()
    forget = [("a blue wood star on a court .", red_star),   # the color slot swapped: HAL_swap
              ("a red glass star on a court .", red_star),   # another slot: HAL_other
              ("a blue wood star on a rink .", red_star),    # both
              ("a wood star on a court .", red_star),        # forgotten, nothing named instead
              ("a red wood star on a court .", red_star)]    # kept
    blue_heart = _spec(shape="heart", color="blue", scene="pool")
    pool = [("a blue wood heart on a pool .", blue_heart), ("a blue wood heart on a rink .", blue_heart),
            ("a red wood heart on a pool .", blue_heart), ("a blue wood heart on a pool .", blue_heart)]
    split = hallucination_split("red", forget, pool)
    assert split == {"HAL_swap": {"value": 0.4, "n": 5}, "HAL_other": {"value": 0.4, "n": 5},
                     "HAL_pool": {"value": 0.5, "n": 4}}
    # Objects and emotions share the item's shape slot: a star forgotten into a face is a swap.
    happy = ("a happy red wood face on a court .", red_star)
    assert hallucination_split("star", [happy], [])["HAL_swap"]["value"] == 1.0
    assert hallucination_split("star", [happy], [])["HAL_other"]["value"] == 0.0
    assert hallucination_split("court", [happy], [])["HAL_other"]["value"] == 1.0
    # In a result: HAL_g (forget and pool together) stays, the split beside it.
    n_f, n_p = len(forget), len(pool)
    answers = lambda texts: {"asked": [], "present": np.zeros(0, bool), "yes": np.zeros(0, bool),
                             "margin": np.zeros(0), "named": np.zeros(0, bool), "texts": texts}
    f, p = answers([t for t, _ in forget]), answers([t for t, _ in pool])
    result = _selectivity("red", f, f, p, [s for _, s in forget], [s for _, s in pool], generative=True)
    assert result["HAL_g"] == {"value": round((3 + 2) / (n_f + n_p), 4), "n": n_f + n_p}
    assert {k: result[k] for k in split} == split
    columns = selectivity(result)
    assert (columns["HAL_swap"], columns["HAL_other"], columns["HAL_pool"]) == (0.4, 0.4, 0.5)
    quiet = _selectivity("red", f, f, p, [s for _, s in forget], [s for _, s in pool], generative=False)
    assert quiet["HAL_pool"]["value"] is None and quiet["HAL_g"]["value"] is None
