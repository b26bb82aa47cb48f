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
    assert default.sae_steps == 5000  # the plateau budget (docs/studies/sae-curve.md)
    assert _train_config_of(monkeypatch, default).steps == 5000
    epochs = dataclasses.replace(default, sae_steps=None)  # every study before v3: epochs over the images
    cfg = _train_config_of(monkeypatch, epochs)
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
    (["demo"], "demo", 5000),
    (["experiment", "table2", "--quick"], "table2", QUICK_SAE_STEPS),
    (["experiment", "table2", "--study", "--sae-steps", "1000"], "table2", 1000),
    (["experiment", "table2", "--study"], "table2", None),  # the v2 study's epochs-derived 108
    (["experiment", "table2", "--v3"], "table2", 5000),
    (["experiment", "table2"], "table2", 5000),
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
    # The default budget names its folder: an SAE cached by an older default is never reused for it.
    assert plain_config.sae_steps == 5000 and plain.name == "sae-seed0-steps5000"
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


# --------------------------------------------------------------- the objective collapse cannot win

# The clean model on a concept's images (retain rates are relative to it, so 1 by construction).
CLEAN = {"BA_d": 0.97, "HAL_g": 0.06, "HAL_swap": 0.02, "HAL_other": 0.04, "HAL_pool": 0.05, "DEG_g": 0.01,
         "utility": 98.0}
RETAIN = ("IRA_d", "IRA_g", "CRA_d", "CRA_g", "COR_d", "COR_g")


def _row(ua_d, ua_g, retain, clean=CLEAN, **rates) -> dict:
    """A synthetic `Evaluation.run` result: retain rates in `retain` (name -> value, default 1),
    the other rates in `rates` (default: the clean model's)."""
    values = {**{name: 1.0 for name in RETAIN}, **retain}
    row = {"UA_d": {"value": ua_d, "n": 16}, "UA_g": {"value": ua_g, "n": 16},
           **{name: {"value": v, "n": 16} for name, v in values.items()}, "clean_rates": dict(clean)}
    for name in ("BA_d", "HAL_g", "HAL_swap", "HAL_other", "HAL_pool", "DEG_g"):
        row[name] = {"value": rates.get(name, clean[name]), "n": 40}
    row["utility"] = rates.get("utility", clean["utility"])
    return row


def _below_clean(ua: float, deficits: dict) -> dict:
    """An edit at mean UA `ua` whose keep terms each sit `deficits[term]` (points / 100) below clean."""
    worse = {"BA_d": -1, "HAL_other": +1, "HAL_pool": +1, "HAL_g": +1, "DEG_g": +1}
    rates = {name: CLEAN[name] + sign * deficits[name] for name, sign in worse.items()}
    rates["utility"] = CLEAN["utility"] - 100 * deficits["utility"]
    return _row(ua, ua, {name: 1.0 - deficits[name] for name in RETAIN}, **rates)


TERMS = (*RETAIN, "BA_d", "HAL_other", "HAL_pool", "HAL_g", "DEG_g", "utility")


def _scenarios(rng) -> dict:
    good = _below_clean(0.90, {t: float(rng.uniform(0, 0.02)) for t in TERMS})  # every keep term within 2 points
    mediocre = _below_clean(0.80, dict.fromkeys(TERMS, 0.05))  # every keep term 5 points below
    # Detect and refuse: the concept forgotten (UA 1), its descriptions refused: the concepts that
    # co-occur on its images lost (yes/no and descriptions) and those descriptions degenerate (the
    # forget share of all descriptions, 16 of 40) and naming nothing; the rest clean.
    refuse = _row(1.0, 1.0, {"COR_d": 0.0, "COR_g": 0.0}, DEG_g=0.4, HAL_swap=0.0, HAL_other=0.0,
                  HAL_g=CLEAN["HAL_pool"] * 24 / 40)
    # Collapse: "no" to every question, every description empty (degenerate, naming nothing); MME
    # pairs answered "no" twice score acc 50, acc+ 0.
    collapse = _row(1.0, 1.0, dict.fromkeys(RETAIN, 0.0), BA_d=0.5, HAL_g=0.0, HAL_swap=0.0, HAL_other=0.0,
                    HAL_pool=0.0, DEG_g=1.0, utility=25.0)
    nothing = _row(0.0, 0.0, {})  # the clean model itself
    return {"good": good, "mediocre": mediocre, "refuse": refuse, "collapse": collapse, "nothing": nothing}


def _ranks_as_issue_31_asks(score, rows) -> bool:
    s = {name: score(row) for name, row in rows.items()}
    return (s["good"] >= s["mediocre"] + 0.05
            and all(s["mediocre"] >= s[name] + 0.05 for name in ("refuse", "collapse", "nothing")))


def test_the_selective_objective_ranks_selective_edits_above_collapse_refusal_and_nothing():
    import numpy as np

    from sauce_jax.eval.conceptworld.sauce import (
        compensatory_objective,
        keeps_clean,
        objective,
        selective_objective,
    )

    for draw in range(20):  # the good edit's deficits anywhere within its 2 points
        rows = _scenarios(np.random.default_rng(draw))
        assert _ranks_as_issue_31_asks(selective_objective, rows)
        # The control: today's objective fails the same test; detect-and-refuse about ties the
        # mediocre edit (the issue's 0.87 against 0.875), and collapse beats doing nothing.
        assert not _ranks_as_issue_31_asks(compensatory_objective, rows)
        old = {name: compensatory_objective(row) for name, row in rows.items()}
        assert old["refuse"] > old["mediocre"] - 0.05 and old["collapse"] > old["nothing"]
        assert objective is compensatory_objective  # still there under its old name
        # The pass/fail column: every keep term within 3 points of clean.
        assert keeps_clean(rows["good"]) and keeps_clean(rows["nothing"])
        assert not any(keeps_clean(rows[n]) for n in ("mediocre", "refuse", "collapse"))
    # The clean model given as its result scores the same as through the result's clean_rates.
    rows = _scenarios(np.random.default_rng(0))
    clean_result = rows["nothing"]
    bare = {k: v for k, v in rows["mediocre"].items() if k != "clean_rates"}
    assert selective_objective(bare, clean=clean_result) == pytest.approx(selective_objective(rows["mediocre"]))
    from sauce_jax.errors import InputError

    with pytest.raises(InputError, match="clean"):
        selective_objective(bare)


def test_only_the_damaging_parts_of_hal_enter_the_selective_objective():
    from sauce_jax.eval.conceptworld.sauce import selective_objective

    edit = _row(1.0, 1.0, {})
    base = selective_objective(edit)
    assert base == pytest.approx(1.0)
    # The forgotten word replaced in its own slot (HAL_swap, and so HAL_g) costs nothing ...
    assert selective_objective(_row(1.0, 1.0, {}, HAL_swap=0.9, HAL_g=0.5)) == pytest.approx(base)
    # ... while hallucinating elsewhere does, on forget images and on the pool alike.
    # A soft minimum lies within t ln(n) of the minimum: keep <= 0.7 + 0.02 ln(11).
    from sauce_jax.eval.conceptworld.sauce import KEEP_SOFTMIN_TEMPERATURE, SELECTIVE_KEEP_TERMS

    bound = math.sqrt(0.7 + KEEP_SOFTMIN_TEMPERATURE * math.log(len(SELECTIVE_KEEP_TERMS)))
    for part in ("HAL_other", "HAL_pool"):
        assert selective_objective(_row(1.0, 1.0, {}, **{part: CLEAN[part] + 0.3})) <= bound + 1e-9 < base


def test_the_grids_maximise_the_declared_objective():
    from sauce_jax.eval.conceptworld.sauce import OBJECTIVES, grid_objective

    rows = _scenarios(__import__("numpy").random.default_rng(0))
    assert DemoConfig().objective == "compensatory"  # every committed figure's; v3 flips it when frozen
    selective = DemoConfig(objective="selective")
    for row in rows.values():
        assert grid_objective(row, selective) == OBJECTIVES["selective"](row)
        assert grid_objective(row, DemoConfig()) == OBJECTIVES["compensatory"](row)
    with pytest.raises(ConfigError, match="objective"):
        DemoConfig(objective="ua")


@pytest.mark.parametrize("argv, module, expected", [
    (["demo", "--quick", "--objective", "selective"], "demo", "selective"),
    (["demo"], "demo", "compensatory"),
    (["experiment", "table2", "--study", "--objective", "selective"], "table2", "selective"),
    (["experiment", "table2", "--quick"], "table2", "compensatory"),
])
def test_objective_option_reaches_the_config(argv, module, expected, monkeypatch, tmp_path):
    import importlib

    from sauce_jax.cli.common import OBJECTIVE_CHOICES
    from sauce_jax.eval.conceptworld.sauce import OBJECTIVES

    assert OBJECTIVE_CHOICES == tuple(OBJECTIVES)
    seen = []
    experiment = importlib.import_module(f"sauce_jax.eval.conceptworld.experiments.{module}")
    monkeypatch.setattr(experiment, "run", lambda out, config, **kwargs: seen.append(config) or {"done": True})
    monkeypatch.setattr("sauce_jax.cli.experiments.print_report", lambda *a, **k: None)
    monkeypatch.setattr("sauce_jax.cli.conceptworld.print_report", lambda *a, **k: None)
    assert cli.main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    assert (seen[0] if module == "demo" else seen[0].demo).objective == expected


# ------------------------------------------------------------------------------- statistics


def test_t_interval_over_concept_draws_clustered_by_seed_matches_a_hand_computation():
    import numpy as np
    from scipy import stats

    from sauce_jax.eval.conceptworld.intervals import t_interval

    nan = float("nan")
    values = [[1.0, 2.0], [3.0, 5.0], [2.0, nan], [nan, nan]]  # the last seed has no value at all
    means = [1.5, 4.0, 2.0]  # each seed's mean over its concepts: the units
    m = sum(means) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in means) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    found = t_interval(values)
    assert found["unit"] == "seeds" and found["n"] == 3 and found["df"] == 2
    assert found["mean"] == pytest.approx(m) and found["lo"] == pytest.approx(m - half)
    assert found["hi"] == pytest.approx(m + half)
    # One seed: its concept draws are the units.
    one = t_interval([[0.2, 0.4, 0.9, nan]], level=0.9)
    mean, sd = np.mean([0.2, 0.4, 0.9]), np.std([0.2, 0.4, 0.9], ddof=1)
    assert one["unit"] == "concepts" and one["df"] == 2
    assert one["hi"] - one["mean"] == pytest.approx(stats.t.ppf(0.95, 2) * sd / math.sqrt(3))
    assert one["mean"] == pytest.approx(mean)
    assert t_interval([[0.5]])["lo"] is None and t_interval([[nan]])["mean"] is None


def test_paired_t_test_and_bca_use_the_same_units():
    import numpy as np
    from scipy import stats

    from sauce_jax.eval.conceptworld.intervals import BCA_MIN_UNITS, bca_interval, t_test

    rng = np.random.default_rng(3)
    diffs = rng.normal(0.05, 0.1, size=(6, 2))
    found = t_test(diffs)
    reference = stats.ttest_1samp(diffs.mean(axis=1), 0.0)
    assert found["p"] == pytest.approx(reference.pvalue) and found["t"] == pytest.approx(reference.statistic)
    assert t_test(np.zeros((3, 2)))["p"] == 1.0 and t_test(np.full((3, 2), 0.5))["p"] == 0.0
    assert bca_interval(diffs) is None  # 6 seeds: too few units for BCa
    many = rng.normal(0.05, 0.1, size=(BCA_MIN_UNITS, 3))
    found = bca_interval(many, seed=1)
    direct = stats.bootstrap((many.mean(axis=1),), np.mean, n_resamples=9999, method="BCa",
                             random_state=np.random.default_rng(1)).confidence_interval
    assert (found["lo"], found["hi"]) == pytest.approx((direct.low, direct.high))
    assert found["lo"] < found["mean"] < found["hi"] and found["unit"] == "seeds"


def test_holm_matches_a_hand_computation():
    from sauce_jax.eval.conceptworld.intervals import holm

    # Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06 (monotone).
    found = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert {k: v["p_holm"] for k, v in found.items()} == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})
    assert [k for k, v in found.items() if v["reject"]] == ["a", "d"]
    # Unadjusted, c and b would pass at 0.05; a test that could not run still counts in m.
    found = holm({"a": 0.02, "b": None})
    assert found["a"]["p_holm"] == pytest.approx(0.04) and found["a"]["reject"] and not found["b"]["reject"]
    assert holm({"a": 0.6, "b": 0.7})["a"]["p_holm"] == 1.0


def test_the_best_baseline_is_chosen_on_validation_tables():
    from sauce_jax.errors import InputError
    from sauce_jax.eval.conceptworld.intervals import best_baseline

    def table(ga, kl, po, sauce=0.99):
        return {"GA": {"concrete": {"selective_objective": ga[0]}, "abstract": {"selective_objective": ga[1]}},
                "KL": {"concrete": {"selective_objective": kl[0]}, "abstract": {"selective_objective": kl[1]}},
                "PO": {"concrete": {"selective_objective": po[0]}, "abstract": {"selective_objective": po[1]}},
                "SAUCE reconstruct": {"concrete": {"selective_objective": sauce}}}

    seeds = {7: table((0.8, 0.3), (0.6, 0.7), (0.7, 0.5)), 8: table((0.7, 0.4), (0.65, 0.6), (0.6, 0.5))}
    assert best_baseline(seeds, task="concrete") == "GA"  # 0.75 against 0.625 and 0.65
    assert best_baseline(seeds, task="abstract") == "KL"
    assert best_baseline(list(seeds.values())) == "KL"  # over both tasks: 0.6375 against 0.55 and 0.575
    assert best_baseline(seeds, task="concrete", baselines=("PO", "KL")) == "PO"
    tie = {7: table((0.5, 0.5), (0.5, 0.5), (0.5, 0.5))}
    assert best_baseline(tie, baselines=("KL", "GA")) == "KL"  # a tie goes to the earlier one
    with pytest.raises(InputError, match="no validation table"):
        best_baseline(seeds, column="missing")


# ------------------------------------------------------------------------------- SAE only


def test_sae_only_replaces_the_layer_by_its_reconstruction_and_edits_nothing(small_encoder):
    import numpy as np
    from tiny_models import SMALL, random_pixels
    from tiny_saes import busiest_features, make_sae

    from sauce_jax.sae import decode, encode
    from sauce_jax.scoring import FeatureSet

    layer = 1
    sae = make_sae("topk", small_encoder.config.hidden_size)
    pixels = random_pixels(SMALL)
    clean = small_encoder.hidden_states(pixels)
    expected = np.asarray(decode(sae.params, encode(sae.params, clean[layer], sae.config)))
    busy = [int(i) for i in busiest_features(sae, clean[layer])]  # features that fire: an edit would show
    outputs = []
    for ids in (tuple(busy[:3]), tuple(busy[3:6])):  # whichever features a concept names, nothing is edited
        features = FeatureSet("x", ids, (1.0,) * len(ids), layer=layer, sae_fingerprint=sae.fingerprint(),
                              gamma=-1.0)
        outputs.append(np.asarray(sauce.sae_only(small_encoder, sae, features, layer).hidden_states(pixels)[layer]))
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    assert np.abs(expected - np.asarray(clean[layer])).max() > 1e-3  # the SAE's error is there


def test_the_demo_figure_shows_selectivity_and_its_legend_covers_no_bar():
    from sauce_jax.eval.conceptworld.experiments.demo import FIGURE_COLUMNS, table_figure

    assert {"COR", "HAL_swap", "HAL_other", "HAL_pool", "utility"} <= set(FIGURE_COLUMNS)
    full = {c: 1.0 for c in FIGURE_COLUMNS} | {"utility": 100.0}  # every bar as tall as the axes allow
    tables = {name: {"concrete": full, "abstract": full}
              for name in ("original", sauce.SAE_ONLY, "SAUCE reconstruct", "SAUCE delta")}
    fig = table_figure(tables)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for ax in fig.axes for patch in ax.patches]
    assert len(bars) == 2 * len(tables) * len(FIGURE_COLUMNS)
    assert not any(legend.overlaps(bar) for bar in bars)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(FIGURE_COLUMNS)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(tables)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_eval_reports_the_sae_only_row_beside_the_edit(monkeypatch, tmp_path):
    """The ConceptWorld `eval` path scores each concept edited and, unless --no-sae-only, with
    the SAE alone (models, SAE and answers faked: what is checked is which edit each row scores)."""
    import sauce_jax.intervention
    import sauce_jax.loading
    from sauce_jax.eval.conceptworld import benchmark, vlm

    monkeypatch.setattr(vlm, "load", lambda model_dir: (SimpleNamespace(config=SimpleNamespace(
        vision_feature_layer=-1)), SimpleNamespace(tokenizer=None)))
    monkeypatch.setattr(sauce_jax.loading, "load_encoder", lambda llava: SimpleNamespace(layer_index=lambda i: 4))
    monkeypatch.setattr(sauce, "train_concept_sae", lambda *a, **k: "sae")
    monkeypatch.setattr(sauce, "select_all", lambda sae, encoder, config, *a, **k: {
        c: SimpleNamespace(top=lambda k, gamma: ("features", k, gamma)) for c in config.concepts})
    monkeypatch.setattr(sauce_jax.intervention, "unlearn", lambda *a, **k: ("edit", k["mode"], k["gamma"]))
    monkeypatch.setattr(sauce, "sae_only", lambda encoder, sae, features, layer: "sae only")
    scored = {"sae only": 0.2, ("edit", "reconstruct", -1.0): 0.9, None: 0.0}

    class Evaluation:
        def __init__(self, *a, **k):
            pass

        def run(self, concept, unlearned=None):
            ua = scored[unlearned]
            return _row(ua, ua, {}) | {"concept": concept, "domain": "object" if concept == "star" else "color"}

    monkeypatch.setattr(benchmark, "Evaluation", Evaluation)
    monkeypatch.setattr(benchmark, "Model", lambda *a, **k: None)
    for extra, alone in (([], True), (["--no-sae-only"], False)):
        out = tmp_path / f"{alone}.json"
        assert cli.main(["eval", "--concepts", "star,red", "--work", str(tmp_path), "--json", str(out), *extra]) == 0
        summary = json.loads(out.read_text())
        assert [r["UA_d"]["value"] for r in summary["per_concept"]] == [0.9, 0.9]
        assert ("sae_only" in summary) == alone
        if alone:
            assert [r["UA_d"]["value"] for r in summary["sae_only"]["per_concept"]] == [0.2, 0.2]
            assert summary["sae_only"]["mean"]["UA_d"] == pytest.approx(0.2)
            assert set(summary["sae_only"]["by_task"]) == {"concrete", "abstract"}


def test_the_demo_scores_the_sae_only_row_unless_told_not_to(monkeypatch):
    """`evaluate_test` (the demo's test split) with the model faked: which edit each row scores."""
    monkeypatch.setattr(sauce, "Evaluation", lambda model, suite: SimpleNamespace(
        run=lambda concept, unlearned=None: {"concept": concept, "edit": unlearned,
                                             "UA_d": {"value": 0}, "IRA_d": {"value": 1}}))
    monkeypatch.setattr(sauce, "make_suite", lambda *a, **k: None)
    monkeypatch.setattr(sauce, "sae_only", lambda encoder, sae, features, layer: ("alone", features))
    import sauce_jax.intervention

    monkeypatch.setattr(sauce_jax.intervention, "unlearn", lambda encoder, sae, features, **k: (k["mode"], features))
    sets = {c: SimpleNamespace(top=lambda k, gamma, c=c: f"{c} top {k}") for c in ("star", "red")}
    chosen = {m: {"k": 8, "gamma": -1.0} for m in sauce.MODES}
    config = DemoConfig(concepts=("star", "red"))
    rows = sauce.evaluate_test(None, None, "sae", sets, chosen, config, 4, progress=False)
    assert list(rows) == ["original", sauce.SAE_ONLY, *(f"SAUCE {m}" for m in sauce.MODES)]
    assert [r["edit"] for r in rows["original"]] == [None, None]
    assert [r["edit"] for r in rows[sauce.SAE_ONLY]] == [("alone", sets["star"]), ("alone", sets["red"])]
    assert rows["SAUCE delta"][1]["edit"] == ("delta", "red top 8")
    quiet = sauce.evaluate_test(None, None, "sae", sets, chosen, dataclasses.replace(config, sae_only_row=False), 4,
                                progress=False)
    assert sauce.SAE_ONLY not in quiet


def test_table2_can_leave_the_sae_only_row_out(monkeypatch, tmp_path):
    from sauce_jax.eval.conceptworld.experiments import table2

    seen = []
    monkeypatch.setattr(table2, "run", lambda out, config, **kwargs: seen.append(config.demo.sae_only_row))
    monkeypatch.setattr("sauce_jax.cli.experiments.print_report", lambda *a, **k: None)
    for extra in ([], ["--no-sae-only-row"]):
        assert cli.main(["experiment", "table2", "--quick", "--out", str(tmp_path), *extra]) == 0
    assert seen == [True, False]


def test_v3_draws_four_stratified_concepts_and_presets_the_protocol():
    from sauce_jax.eval.conceptworld.experiments.table2 import v3_concepts, v3_config
    from sauce_jax.eval.conceptworld.world import DOMAIN_OF

    seen = set()
    for seed in range(7, 40):
        concepts = v3_concepts(seed)
        domains = [DOMAIN_OF[c] for c in concepts]
        assert domains[:2] == ["object", "scene"] and len(set(domains)) == 4
        assert set(domains[2:]) <= {"color", "material", "emotion"}
        assert v3_concepts(seed) == concepts  # drawn with the seed
        seen.add(tuple(sorted(domains[2:])))
    assert len(seen) == 3  # every pair of the three abstract domains is drawn
    config = v3_config(8)
    d = config.demo
    assert (d.n_val, d.n_test, d.n_pool, d.objective, d.concepts) == (16, 24, 4, "selective", v3_concepts(8))
    assert config.generic_sae and config.grid_moves == d.grid_moves == 2


def test_the_generic_sae_is_trained_once_and_shared_by_every_seed(tmp_path, monkeypatch):
    """With `generic_sae`, every seed's SAUCE setup asks for the one SAE at the shared folder, on
    the generic stream, not the seed's own; without it, each seed trains in its own folder."""
    import dataclasses

    from sauce_jax.eval.conceptworld import sauce
    from sauce_jax.eval.conceptworld.experiments import table2

    asked = []
    monkeypatch.setattr(sauce, "_train", lambda encoder, out, sae_config, specs, *a, **k:
                        asked.append((out, tuple(specs[:3]))) or "sae")
    monkeypatch.setattr(table2, "select_all", lambda *a, **k: {})
    monkeypatch.setattr(table2, "choose_hyperparameters", lambda *a, **k: {})

    from types import SimpleNamespace

    class Ctx:
        encoder = SimpleNamespace(config=SimpleNamespace(hidden_size=8))
        layer, progress, val, model = 4, False, None, None

    for generic in (True, False):
        for seed in (7, 8):
            ctx = Ctx()
            ctx.config = dataclasses.replace(table2.quick_config(seed=seed), generic_sae=generic)
            (tmp_path / f"{generic}-seed-{seed}").mkdir()
            table2._sauce_setup(ctx, tmp_path / f"{generic}-seed-{seed}", tmp_path / "shared")
    shared, own = asked[:2], asked[2:]
    assert shared[0] == shared[1] and shared[0][0] == tmp_path / "shared"
    assert own[0][0] != own[1][0] and own[0][1] != own[1][1]  # each seed its folder and its images
    assert shared[0][1] != own[0][1]


def test_the_seeds_runner_draws_each_seeds_v3_concepts_and_shares_the_generic_sae(monkeypatch, tmp_path):
    from sauce_jax.eval.conceptworld.experiments import table2, table2_seeds

    seen = []
    monkeypatch.setattr(table2, "run", lambda out, config, **kwargs: seen.append((out, config, kwargs)) or {
        "rows": {}, "config": {}})
    table2_seeds.run(tmp_path, table2.v3_config(), (7, 8), draw_concepts=table2.v3_concepts, progress=False)
    assert [c.demo.concepts for _, c, _ in seen] == [table2.v3_concepts(7), table2.v3_concepts(8)]
    assert [c.demo.seed for _, c, _ in seen] == [7, 8]
    assert {k["generic_sae_dir"] for _, _, k in seen} == {tmp_path / "sae_generic"}
    (tmp_path / "fixed").mkdir()
    table2_seeds.run(tmp_path / "fixed", table2.v3_config(), (9,), progress=False)  # no draw: the config's
    assert seen[-1][1].demo.concepts == table2.v3_config().demo.concepts


def test_a_test_read_reuses_the_validation_studys_saes(monkeypatch, tmp_path):
    """`--saes-from DIR`: every seed gets DIR's finished paper and generic SAEs (retraining them
    would give other SAEs); a folder without them is refused, naming the missing one, before
    any seed runs; the CLI says so in one line and exits non-zero, also without --seeds."""
    from sauce_jax.eval.conceptworld.experiments import table2, table2_seeds

    seen = []
    monkeypatch.setattr(table2, "run", lambda out, config, **kwargs: seen.append(kwargs) or {"rows": {}, "config": {}})
    validation, test = tmp_path / "val", tmp_path / "test"
    test.mkdir()
    (validation / "sae_paper" / "sae").mkdir(parents=True)
    (validation / "sae_paper" / "sae" / "cfg.json").write_text("{}")
    with pytest.raises(ConfigError, match="sae_generic"):
        table2_seeds.run(test, table2.v3_config(), (7,), progress=False, saes_from=validation)
    assert seen == []
    (validation / "sae_generic" / "sae").mkdir(parents=True)
    (validation / "sae_generic" / "sae" / "cfg.json").write_text("{}")
    table2_seeds.run(test, table2.v3_config(), (7, 8), progress=False, saes_from=validation)
    assert {k["generic_sae_dir"] for k in seen} == {validation / "sae_generic"}
    assert {k["paper_sae_dir"] for k in seen} == {validation / "sae_paper"}
    table2_seeds.run(test, table2.v3_config(), (9,), progress=False)  # without: the study's own folder
    assert seen[-1]["generic_sae_dir"] == test / "sae_generic"
    assert cli.main(["experiment", "table2", "--v3", "--seeds", "7", "--saes-from", str(tmp_path / "nowhere"),
                     "--out", str(test)]) == 2
    assert cli.main(["experiment", "table2", "--v3", "--seed", "7", "--saes-from", str(validation),
                     "--out", str(test)]) == 2
    assert len(seen) == 3  # neither command ran a seed
