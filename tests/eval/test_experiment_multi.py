"""`sauce-jax experiment multi` (Figure 6): seeded draws, the group scores, and a reduced run end to
end on the shipped model, resumed."""

import dataclasses
import json

import pytest

from sauce_jax.eval.conceptworld.experiments import multi
from sauce_jax.eval.conceptworld.experiments.multi import (
    MultiConfig,
    draw_concepts,
    plan,
    run,
    score_group,
)
from sauce_jax.eval.conceptworld.sauce import DemoConfig
from sauce_jax.eval.conceptworld.world import CONCEPTS, DOMAIN_OF, DOMAINS, TASKS, Item, Spec
from sauce_jax import cli
from sauce_jax.cli.experiments import parse_counts
from sauce_jax.errors import ConfigError


def test_draws_are_seeded_and_follow_the_settings():
    for task in TASKS:
        for count in (2, 4, 8):
            for index in range(3):
                within = draw_concepts(CONCEPTS, task, "within", count, index, seed=0)
                assert within == draw_concepts(CONCEPTS, task, "within", count, index, seed=0)  # seeded
                assert len(set(within)) == count and len({DOMAIN_OF[c] for c in within}) == 1
                assert DOMAIN_OF[within[0]] in TASKS[task]
                across = draw_concepts(CONCEPTS, task, "across", count, index, seed=0)
                per_domain = [sum(DOMAIN_OF[c] == d for c in across) for d in TASKS[task]]
                assert len(set(across)) == count and max(per_domain) - min(per_domain) <= 1  # one from each in turn
    # A single concept is the same draw in both settings; a count the domains cannot give is None.
    assert draw_concepts(CONCEPTS, "abstract", "within", 1, 0, 0) == draw_concepts(CONCEPTS, "abstract", "across", 1, 0, 0)
    assert draw_concepts(CONCEPTS, "concrete", "within", 16, 0, 0) is None  # no concrete domain has 16
    assert draw_concepts(("red", "blue"), "abstract", "across", 2, 0, 0) is None  # one domain only
    assert draw_concepts(CONCEPTS, "abstract", "within", 2, 0, seed=0) != draw_concepts(CONCEPTS, "abstract",
                                                                                         "within", 2, 0, seed=1)
    rows = plan(MultiConfig())
    assert {(r["task"], r["setting"], r["count"]) for r in rows} == {
        (t, s, c) for t in TASKS for s in ("within", "across") for c in (1, 2, 4, 8)}
    assert len(DOMAINS["object"]) == 8  # why concrete/within/8 is always the whole object domain


def _spec(scene, *items):
    return Spec(scene, tuple(Item(shape, None, color, "wood") for shape, color in items), 0)


def test_group_scores_split_retained_concepts_by_domain():
    pool = [_spec("court", ("star", "red")), _spec("pool", ("heart", "blue")), _spec("court", ("moon", "green"))]
    concepts = ("red", "star")  # color and object: the second and third image are kept
    asked = [[i, c] for i, s in enumerate(pool) for c in sorted(s.concepts)]
    clean = {"asked": asked, "yes": [True] * len(asked), "named": [True] * len(asked)}
    # Edited: forgets every color, keeps everything else.
    edited = {"asked": asked, "yes": [DOMAIN_OF[c] != "color" for _, c in asked],
              "named": [True] * len(asked)}
    forget = {"red": {"yes": [True, True], "named": [True, False]}, "star": {"yes": [True, True], "named": [True, True]}}
    after = {"red": {"yes": [False, True], "named": [False, False]}, "star": {"yes": [True, True], "named": [False, True]}}
    perception = {"existence": {"acc": 100.0, "acc_plus": 100.0, "score": 200.0}}
    r = score_group(concepts, forget, after, pool, clean, edited, perception)
    assert r["pool_images_kept"] == 2
    assert r["UA_d"]["value"] == pytest.approx(0.25)  # red 1/2, star 0/2: macro mean
    assert r["UA_g"]["value"] == pytest.approx(0.75)  # red 1/1, star 1/2
    assert r["unlearning_score"] == pytest.approx(0.5)
    # IRA: retained colors and objects (blue, green, heart, moon) on the kept images: colors lost on d.
    assert r["IRA_d"] == {"value": 0.5, "n": 4} and r["IRA_g"]["value"] == 1.0
    assert r["CRA_d"] == {"value": 1.0, "n": 4}  # each kept image's scene and material (wood)
    assert r["IRA"] == pytest.approx(0.75) and r["CRA"] == pytest.approx(1.0)
    assert r["utility_score"] == pytest.approx((0.75 + 1.0 + 1.0) / 3)


def test_bad_configs_are_refused():
    for changes in ({"counts": (2, 1)}, {"counts": ()}, {"counts": (0, 1)}, {"draws": 0}, {"tasks": ("fun",)},
                    {"settings": ("inside",)}, {"mode": "erase"}, {"k": 17}):
        with pytest.raises(ConfigError):
            MultiConfig(**changes)
    with pytest.raises(ConfigError, match="none of the concepts"):
        MultiConfig(demo=DemoConfig(concepts=("red",), k_grid=(16,)), tasks=("concrete",))


def _tiny_config() -> MultiConfig:
    demo = DemoConfig(concepts=("star", "heart", "red", "blue", "happy"), sae_images=600, sae_epochs=1.0, sae_steps=None, n_select=20,
                      n_test=8, n_pool=1, n_perception=6, k_grid=(16,), gamma_grid=(-1.0,))
    return MultiConfig(demo=demo, counts=(1, 2), draws=1)


@pytest.mark.slow
def test_reduced_multi_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    config = _tiny_config()
    results = run(tmp_path, config, progress=False)
    for name in ("report.md", "results.json", "figure6.png", "config.json"):
        assert (tmp_path / name).stat().st_size > 0
    rows = results["draws"]
    # concrete: one concept, two objects (no across: only objects drawable); abstract: one, two colors, color+emotion
    assert [(r["task"], r["setting"], r["count"]) for r in rows] == [
        ("concrete", "within", 1), ("concrete", "within", 2), ("concrete", "across", 1),
        ("abstract", "within", 1), ("abstract", "within", 2), ("abstract", "across", 1), ("abstract", "across", 2)]
    clean = results["clean"]
    assert clean["unlearning_score"] == 0.0 and 0 < clean["utility_score"] <= 1
    for row in rows:
        r = row["result"]
        assert set(r["per_concept"]) == set(row["concepts"])
        # Measured with this tiny SAE (600 images): 0.28 - 0.53 unlearning, 0.74 - 0.86 utility.
        assert r["unlearning_score"] > 0.15, row  # the clean model's is 0
        assert 0.5 < r["utility_score"] < clean["utility_score"] and r["pool_images_kept"] > 0
    across = rows[-1]["result"]
    assert {DOMAIN_OF[c] for c in rows[-1]["concepts"]} == {"color", "emotion"} and across["CRA_d"]["n"] > 0
    summary = results["summary"]
    assert set(summary) == {"concrete", "abstract"} and set(summary["abstract"]["across"]) == {"1", "2"}
    assert summary["abstract"]["within"]["1"] == summary["abstract"]["across"]["1"]  # the same draw
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"] == results["summary"]
    assert "| abstract | across | 2 |" in (tmp_path / "report.md").read_text()

    # A rerun loads no model and rewrites no part; another config in the folder is refused.
    parts = sorted((tmp_path / "parts").rglob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    monkeypatch.setattr(multi, "prepare", lambda *a, **k: pytest.fail("a finished run prepared a model again"))
    again = run(tmp_path, config, progress=False)
    assert again["summary"] == results["summary"]
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "parts").rglob("*.json"))} == stamps
    with pytest.raises(ConfigError, match="another run"):
        run(tmp_path, dataclasses.replace(config, draws=2), progress=False)


def test_command_line_registers_multi_and_rejects_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["experiment", "multi", "--help"])
    assert exit_info.value.code == 0 and "--counts" in capsys.readouterr().out
    assert cli.main(["experiment", "multi", "--out", str(tmp_path), "--quick", "--counts", "2,1"]) == 2
    assert "counts" in capsys.readouterr().err
    assert cli.main(["experiment", "multi", "--out", str(tmp_path), "--quick", "--counts", "1,two"]) == 2
    assert cli.main(["experiment", "multi", "--out", str(tmp_path), "--concepts", "unicorn"]) == 2
    assert parse_counts("1, 2,4") == (1, 2, 4)


def test_nested_chains_share_one_retain_set_and_draw_prefixes():
    rows = plan(MultiConfig(nested=True))
    chains: dict = {}
    for row in rows:
        chains.setdefault((row["task"], row["setting"], row["draw"]), []).append(row)
    for (task, setting, _), chain in chains.items():
        without = chain[0]["retain_without"]
        assert all(r["retain_without"] == without for r in chain)  # one retain set for every count
        assert [r["count"] for r in chain] == sorted(r["count"] for r in chain) and chain[-1]["concepts"] == without
        for small, large in zip(chain, chain[1:]):
            assert set(small["concepts"]) < set(large["concepts"])  # each count a prefix of the next
        if setting == "across":  # every prefix still takes the task's domains in turn
            for r in chain:
                per_domain = [sum(DOMAIN_OF[c] == d for c in r["concepts"]) for d in TASKS[task]]
                assert max(per_domain) - min(per_domain) <= 1, r
        else:
            assert len({DOMAIN_OF[c] for c in without}) == 1
    # Both tasks reach 8 in both settings; the concepts are those of the ordinary 8-concept draw.
    assert {(r["task"], r["setting"]) for r in rows if r["count"] == 8} == {(t, s) for t in TASKS
                                                                          for s in ("within", "across")}
    eight = next(r for r in rows if r["count"] == 8 and r["setting"] == "across" and r["task"] == "abstract")
    assert tuple(eight["concepts"]) == draw_concepts(CONCEPTS, "abstract", "across", 8, eight["draw"], seed=0)


def test_a_fixed_retain_set_scores_every_count_on_the_same_questions():
    pool = [_spec("court", ("star", "red")), _spec("pool", ("heart", "blue")), _spec("court", ("moon", "green"))]
    asked = [[i, c] for i, s in enumerate(pool) for c in sorted(s.concepts)]
    clean = {"asked": asked, "yes": [True] * len(asked), "named": [True] * len(asked)}
    edited = {"asked": asked, "yes": [c != "court" for _, c in asked], "named": [True] * len(asked)}
    forget = {"red": {"yes": [True], "named": [True]}}
    perception = {"existence": {"acc": 100.0, "acc_plus": 100.0, "score": 200.0}}
    one = score_group(("red",), forget, forget, pool, clean, edited, perception)
    fixed = score_group(("red",), forget, forget, pool, clean, edited, perception, exclude=("red", "heart"))
    assert one["pool_images_kept"] == 2 and fixed["pool_images_kept"] == 1  # only the moon / green image
    # Retention: every question on the kept images; the court question is lost on yes/no.
    assert fixed["RET_d"] == {"value": 0.75, "n": 4} and fixed["retention"] == pytest.approx((0.75 + 1) / 2)
    assert one["RET_d"]["n"] == 8
    rows = [{"task": "abstract", "setting": "across", "draw": 0, "count": n, "result": {"retention": v, "utility": u}}
            for n, v, u in ((1, 0.8, 90.0), (2, 0.6, 45.0))]
    multi.relative_to_one(rows)
    assert rows[1]["result"]["retention_vs_one"] == pytest.approx(0.75)
    assert rows[1]["result"]["utility_vs_one"] == pytest.approx(0.5) and rows[0]["result"]["retention_vs_one"] == 1.0


@pytest.mark.slow
def test_reduced_nested_gated_multi_scores_every_count_on_one_retain_set(tmp_path):
    import torch

    torch.set_num_threads(1)
    config = dataclasses.replace(_tiny_config(), nested=True, mode="gated", tasks=("abstract",), settings=("across",))
    results = run(tmp_path, config, progress=False)
    one, two = results["draws"]
    assert one["retain_without"] == two["retain_without"] == two["concepts"] and one["concepts"][0] in two["concepts"]
    assert one["result"]["pool_images_kept"] == two["result"]["pool_images_kept"] > 0
    assert one["result"]["RET_d"]["n"] == two["result"]["RET_d"]["n"] > 0  # the same questions
    # The gate opens on 1% of the group's negative tokens: a positive threshold, not delta's 0.
    assert one["result"]["threshold"] > 0 and two["result"]["threshold"] > 0
    assert two["result"]["retention_vs_one"] == pytest.approx(
        two["result"]["retention"] / one["result"]["retention"], abs=1e-4)
    assert "retention vs one" in (tmp_path / "report.md").read_text()
