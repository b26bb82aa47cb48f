"""ConceptWorld's v2 measurement without a model: the metrics against fake answerers whose
right scores are known by construction, the answer parser, the description grammar, the
bootstrap, the controls' feature draws and the seeds' disjointness."""

from __future__ import annotations


import numpy as np
import pytest

from sauce_jax.errors import ConfigError
from sauce_jax.eval.conceptworld import selectivity as S
from sauce_jax.eval.conceptworld import text as T
from sauce_jax.eval.conceptworld.answers import parse_yes_no
from sauce_jax.eval.conceptworld.benchmark import Evaluation, example_indices, headline, make_suite, selectivity
from sauce_jax.eval.conceptworld.intervals import bootstrap, excludes_zero
from sauce_jax.eval.conceptworld.world import DOMAINS, concept_split

TARGET = "red"


class FakeModel:
    """Answers like `benchmark.Model` from the specs alone: `yes(spec, concept)` decides each
    yes/no answer, `describe(spec)` each description."""

    def __init__(self, yes, describe):
        self.yes, self.describe = yes, describe

    def answers(self, specs, concepts_of, language="en", unlearned=None, generative=True):
        asked = [(i, c) for i, spec in enumerate(specs) for c in concepts_of(spec)]
        yes = np.array([self.yes(specs[i], c) for i, c in asked], bool)
        texts = [self.describe(s) for s in specs] if generative else []
        named = np.array([T.mentions(texts[i], c) for i, c in asked] if generative else [False] * len(asked), bool)
        return {"asked": asked, "present": np.array([specs[i].has(c) for i, c in asked], bool), "yes": yes,
                "margin": np.where(yes, 1.0, -1.0), "named": named, "texts": texts}

    def perception(self, specs, language="en", unlearned=None, exclude=(), seed=0):
        return {"count": {"acc": 100.0, "acc_plus": 100.0, "score": 200.0}}


def _truthful():
    return FakeModel(lambda spec, c: spec.has(c), T.description)


def _without_target(spec):
    """The truth with the target's word dropped: a selective forgetting."""
    return " ".join(w for w in T.description(spec).split() if w != TARGET)


@pytest.fixture(scope="module")
def evaluation():
    suite = make_suite([TARGET], seed=6, split="val", n_forget=12, n_pool_per_concept=1, n_perception=4)
    return Evaluation(_truthful(), suite)


def test_yes_to_everything_keeps_recall_but_balanced_accuracy_is_one_half(evaluation):
    result = evaluation.run(TARGET, model=FakeModel(lambda spec, c: True, T.description))
    assert result["UA_d"]["value"] == 0.0  # it still "shows" the target
    assert result["IRA_d"]["value"] == result["CRA_d"]["value"] == result["COR_d"]["value"] == 1.0
    assert result["BA_d"]["value"] == 0.5 and result["BA_d"]["tpr"] == 1.0 and result["BA_d"]["tnr"] == 0.0
    assert result["BA_d"]["n"] > result["COR_d"]["n"] > 0  # absent concepts were asked about too
    assert evaluation.run(TARGET)["BA_d"]["value"] == 1.0  # the truthful model, same questions


def test_selective_forgetting_against_over_forgetting(evaluation):
    selective = FakeModel(lambda spec, c: spec.has(c) and c != TARGET, _without_target)
    over = FakeModel(lambda spec, c: spec.has(c) and not spec.has(TARGET),  # forgets whole images
                     lambda s: "." if s.has(TARGET) else T.description(s))
    a, b = evaluation.run(TARGET, model=selective), evaluation.run(TARGET, model=over)
    for result in (a, b):
        assert result["UA_d"]["value"] == result["UA_g"]["value"] == 1.0  # the old columns cannot tell them apart
    assert a["COR_d"]["value"] == a["COR_g"]["value"] == 1.0 and a["DEG_g"]["value"] == 0.0
    assert b["COR_d"]["value"] == b["COR_g"]["value"] == 0.0
    # Every forget image holds the target, so all of them lose everything; pool images lose nothing.
    n_forget, n_pool = len(evaluation.suite.forget[TARGET]), len(evaluation.pool_without(TARGET))
    assert b["DEG_g"]["value"] == pytest.approx(round(n_forget / (n_forget + n_pool) + 1e-9, 4), abs=1e-4)
    assert selectivity(a)["COR"] == 1.0 and selectivity(b)["COR"] == 0.0
    assert headline(a)["IRA"] == 1.0


def test_retention_counts_only_what_the_clean_model_showed_and_the_image_holds():
    # A clean model that says yes to everything: co-occurring retention must still be counted over
    # the concepts the forget images really hold besides the target, not over the absent ones asked.
    suite = make_suite([TARGET], seed=6, split="val", n_forget=12, n_pool_per_concept=1, n_perception=4)
    result = Evaluation(FakeModel(lambda spec, c: True, T.description), suite).run(
        TARGET, model=FakeModel(lambda spec, c: False, T.description))
    assert result["COR_d"]["n"] == sum(len(s.concepts) - 1 for s in suite.forget[TARGET])
    assert result["COR_d"]["value"] == 0.0 and result["BA_d"]["value"] == 0.5


def test_swaps_and_collapses_are_counted(evaluation):
    swap = FakeModel(lambda spec, c: spec.has(c), lambda s: T.description(s).replace(" red ", " blue ")
                     if s.has(TARGET) and not s.has("blue") else T.description(s))
    collapse = FakeModel(lambda spec, c: spec.has(c), lambda s: "a yellow yellow yellow yellow yellow")
    clean, swapped, collapsed = (evaluation.run(TARGET), evaluation.run(TARGET, model=swap),
                                 evaluation.run(TARGET, model=collapse))
    assert swapped["HAL_g"]["value"] > clean["HAL_g"]["value"]
    assert collapsed["DEG_g"]["value"] == 1.0 and clean["DEG_g"]["value"] == 0.0


def test_generated_answers_are_parsed_with_mme_rule():
    assert parse_yes_no("yes") == "yes" and parse_yes_no("no .") == "no"
    assert parse_yes_no("sí", "es") == "yes" and parse_yes_no("no", "es") == "no"
    for refusal in ("there is no image .", "", "a red star", "sí"):  # English "sí" is not MME's yes
        assert parse_yes_no(refusal) != "yes"


def test_description_grammar():
    specs = concept_split("happy", "test", 20, seed=6) + concept_split("star", "test", 20, seed=6)
    for spec in specs:
        for language in T.LANGUAGES:
            assert not S.degenerate(T.description(spec, language), language), T.description(spec, language)
    assert not S.degenerate("a wood star on a court .")  # a forgotten color leaves a description
    assert not S.degenerate("a red wood star and a blue stone star on a pool .")  # a noun repeated across items
    for bad in ("a yellow yellow yellow yellow yellow", ".", "", "star star", "on a court .", "a red wood on a",
                "a red wood star on a red ."):
        assert S.degenerate(bad), bad
    spec = specs[20]  # shows a star
    assert S.hallucinated(T.description(spec), spec) == frozenset()
    absent = next(c for c in DOMAINS["color"] if not spec.has(c))
    assert S.hallucinated(f"a {absent} star", spec) == {absent}


def test_balanced_accuracy():
    truth = np.array([True, True, False, False, False])
    assert S.balanced_accuracy(np.ones(5, bool), truth)["value"] == 0.5
    assert S.balanced_accuracy(np.zeros(5, bool), truth)["value"] == 0.5
    assert S.balanced_accuracy(truth, truth)["value"] == 1.0
    assert S.balanced_accuracy(np.array([True, False, True, False, False]), truth)["value"] == round((0.5 + 2 / 3) / 2, 4)
    assert S.balanced_accuracy(np.ones(2, bool), np.ones(2, bool))["value"] is None


def test_absent_concepts_and_utility_questions_respect_the_image_and_the_exclusion():
    for spec in concept_split(TARGET, "test", 30, seed=6):
        absent = S.absent_concepts(spec, seed=6)
        assert len(absent) == len(DOMAINS) and not any(spec.has(c) for c in absent)
        for subtask in T.PERCEPTION_SUBTASKS:
            pair = T.utility_questions(spec, subtask, exclude=(TARGET,), seed=6)
            assert all(T.WORDS["en"][TARGET] not in q.split() for q, _ in pair)
            assert [t for _, t in pair] in ([True, False], [])


def test_seeds_share_no_images():
    concepts = ("star", "red")
    a, b = (make_suite(concepts, seed=s, split="test", n_forget=10, n_pool_per_concept=3, n_perception=5)
            for s in (6, 7))
    images = [{s.noise_seed for s in [*x.pool, *(s for v in x.forget.values() for s in v)]} for x in (a, b)]
    assert images[0] and images[1] and not images[0] & images[1]


def test_table3_examples_are_a_seeded_draw():
    first = example_indices(50, 6, "red")
    assert first == example_indices(50, 6, "red") and len(set(first)) == 3
    assert any(example_indices(50, s, "red") != first for s in (7, 8, 9))
    assert first != [0, 1, 2] or example_indices(50, 7, "red") != [0, 1, 2]


def test_bootstrap_interval_and_paired_difference():
    rng = np.random.default_rng(0)
    values = rng.normal(0.5, 0.05, size=(5, 4))
    cell = bootstrap(values, draws=400)
    assert cell["lo"] <= cell["mean"] <= cell["hi"] and cell["mean"] == pytest.approx(values.mean(), abs=1e-4)
    flat = bootstrap(np.full((3, 4), 0.7), draws=100)
    assert flat["lo"] == flat["hi"] == 0.7
    assert excludes_zero(bootstrap(values + 0.2 - values.mean(), draws=400))
    assert not excludes_zero(bootstrap(values - values.mean(), draws=400))
    assert bootstrap(np.full((2, 3), np.nan))["mean"] is None


def test_controls_feature_draws():
    from sauce_jax.scoring import control_sets
    from sauce_jax.scoring import FeatureSet

    mean = np.random.default_rng(1).random(200)
    order = list(np.argsort(-mean))
    chosen = tuple(int(i) for i in order[40:48])  # selected features, by rank 40-47 on positives
    features = FeatureSet("red", chosen, (1.0,) * 8, layer=4, sae_fingerprint="x", gamma=-1.0, token="all")
    made = control_sets(features, mean, draws=10, seed=6)
    assert made["no-contrast"].feature_ids == tuple(int(i) for i in order[:8])
    assert len(made["matched-random"]) == 10
    for drawn in made["matched-random"]:
        ids = drawn.feature_ids
        assert len(set(ids)) == 8 and not set(ids) & set(chosen) and drawn.gamma == -1.0
        assert all(abs(order.index(i) - 43.5) < 20 for i in ids)  # matched in activation rank
    assert len({d.feature_ids for d in made["matched-random"]}) > 1
    assert control_sets(features, mean, draws=10, seed=6)["matched-random"][3] == made["matched-random"][3]


def test_reserved_test_seeds_are_refused(tmp_path):
    from sauce_jax.eval.conceptworld.experiments import table2_seeds
    from sauce_jax.eval.conceptworld.experiments.table2 import Table2Config

    assert not set(table2_seeds.VALIDATION_SEEDS) & set(table2_seeds.TEST_SEEDS)
    assert not set(table2_seeds.TEST_SEEDS) & set(range(6))
    # The selective recipes' test seeds are fresh: neither validation seeds nor the first study's.
    assert not set(table2_seeds.SELECTIVE_TEST_SEEDS) & set(table2_seeds.TEST_SEEDS + table2_seeds.VALIDATION_SEEDS)
    for reserved in (table2_seeds.TEST_SEEDS[0], table2_seeds.SELECTIVE_TEST_SEEDS[-1]):
        with pytest.raises(ConfigError, match="reserved test seeds"):
            table2_seeds.run(tmp_path, Table2Config(), (6, reserved))
    assert table2_seeds.parse_seeds("selective-test") == table2_seeds.SELECTIVE_TEST_SEEDS
    assert not any(tmp_path.iterdir())
    assert table2_seeds.parse_seeds("6,7") == (6, 7)
    with pytest.raises(ConfigError):
        table2_seeds.parse_seeds("6,x")


def _result(concept, domain, value):
    rate = {"value": value, "n": 10}
    names = ("UA_g", "UA_d", "IRA_d", "IRA_g", "CRA_d", "CRA_g", "COR_d", "COR_g", "BA_d", "HAL_g", "DEG_g",
             "UA_d_logit")
    return {"concept": concept, "domain": domain, "utility": 100 * value, **{n: dict(rate) for n in names}}


def test_seed_report_aggregates_finished_seeds_and_pairs_methods(tmp_path):
    import json

    from sauce_jax.eval.conceptworld.experiments import table2_seeds

    for seed, (sauce, baseline) in {6: (0.9, 0.5), 7: (0.8, 0.6)}.items():
        rows = {name: {"per_concept": [_result("star", "object", v), _result("red", "color", v - 0.1)]}
                for name, v in (("SAUCE reconstruct", sauce), ("GD", baseline))}
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "results.json").write_text(json.dumps({"rows": rows}))
    summary = table2_seeds.report(tmp_path, (6, 7, 8))
    assert summary["missing"] == [8] and summary["seeds"] == [6, 7]
    assert summary["cells"]["GD"]["concrete"]["UA_d"]["mean"] == pytest.approx(0.55)
    assert summary["cells"]["SAUCE reconstruct"]["abstract"]["BA"]["mean"] == pytest.approx(0.75)
    diff = summary["paired"]["GD"]["concrete"]["UA_d"]
    # A t-interval over the two seeds' differences (0.4 and 0.2), 1 degree of freedom: wide, as two
    # seeds are (the percentile bootstrap of these numbers gave [0.2, 0.4]).
    from scipy import stats

    half = stats.t.ppf(0.975, 1) * np.std([0.4, 0.2], ddof=1) / np.sqrt(2)
    assert diff["mean"] == pytest.approx(0.3) and diff["lo"] == pytest.approx(0.3 - half)
    assert diff["hi"] == pytest.approx(0.3 + half) and diff["unit"] == "seeds" and diff["df"] == 1
    assert diff["p"] == pytest.approx(stats.ttest_1samp([0.4, 0.2], 0.0).pvalue)
    assert not excludes_zero(diff) and "(not yet finished: 8)" in (tmp_path / "seeds.md").read_text()
    # Another reference row: the differences are taken from it.
    other = table2_seeds.report(tmp_path, (6, 7), reference="GD")
    assert other["reference"] == "GD" and set(other["paired"]) == {"SAUCE reconstruct"}
    assert other["paired"]["SAUCE reconstruct"]["concrete"]["UA_d"]["mean"] == pytest.approx(-0.3)
    assert "GD minus each row" in (tmp_path / "seeds.md").read_text()


def _seed_results(values: dict) -> dict:
    """One seed's table2 results: {row: value of every column} for one concrete and one
    abstract concept, and its table (task means) for the baseline choice."""
    def result(concept, domain, v):  # forgets v, keeps everything as clean: the objective is sqrt(v)
        r = _result(concept, domain, 1.0)
        r.update(UA_d={"value": v, "n": 10}, UA_g={"value": v, "n": 10}, HAL_g={"value": 0.0, "n": 10},
                 DEG_g={"value": 0.0, "n": 10}, utility=100.0)
        r["clean_rates"] = {"BA_d": 1.0, "HAL_g": 0.0, "HAL_swap": 0.0, "HAL_other": 0.0, "HAL_pool": 0.0,
                            "DEG_g": 0.0, "utility": 100.0}
        return r

    rows = {name: {"per_concept": [result("star", "object", v), result("red", "color", v)]}
            for name, v in values.items()}
    from sauce_jax.eval.conceptworld.benchmark import task_table

    return {"rows": rows, "table2": {name: task_table(row["per_concept"]) for name, row in rows.items()}}


def test_the_primary_family_is_holm_adjusted_against_the_baseline_chosen_on_validation(tmp_path):
    """Eight tests (reconstruct and delta x concrete and abstract x two towers) against the
    baseline with the best validation objective; Holm's adjustment decides, not the raw p."""
    import json

    from sauce_jax.eval.conceptworld.experiments import table2_seeds
    from sauce_jax.eval.conceptworld.intervals import holm

    rng = np.random.default_rng(0)
    for tower, lift in (("dense", 0.2), ("image", 0.0)):
        for seed in (7, 8, 9, 10):
            values = {"GA": 0.5, "GD": 0.6 + 0.01 * rng.standard_normal(), "KL": 0.55, "PO": 0.4,
                      "SAUCE reconstruct": 0.6 + lift + 0.03 * rng.standard_normal(),
                      "SAUCE delta": 0.6 + lift / 2 + 0.03 * rng.standard_normal()}
            folder = tmp_path / tower / f"seed-{seed}"
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps(_seed_results(values)))
    towers = {"dense": tmp_path / "dense", "image": tmp_path / "image"}
    found = table2_seeds.family_report(tmp_path / "family", towers, (7, 8, 9, 10))
    assert found["baseline"] == "GD"  # the best validation mean of the primary objective
    tests = found["tests"]
    assert len(tests) == 8
    assert holm({n: t["p"] for n, t in tests.items()}) == {n: {k: t[k] for k in ("p", "p_holm", "reject")}
                                                           for n, t in tests.items()}
    assert tests["SAUCE reconstruct - GD | concrete | dense"]["reject"]  # a 0.2 lift on every seed
    assert not tests["SAUCE reconstruct - GD | concrete | image"]["reject"]  # no lift
    assert all(t["p_holm"] >= t["p"] for t in tests.values())
    assert "| SAUCE delta - GD | abstract | image |" in (tmp_path / "family" / "family.md").read_text()
    with pytest.raises(ConfigError, match="validation seeds only"):
        table2_seeds.choose_baseline({"dense": {101: _seed_results({"GA": 0.5})}})
