"""`sauce-jax experiment table2 --seeds ...`: Table 2 on several seeds, with intervals.

Each seed is a complete `table2.run` in `OUT/seed-<s>/` (every row, and every concept's
controls, kept as it finishes: a rerun resumes where it stopped). Seeds share no image (the
splits, the retain pool, the perception set and the SAE's stream are all keyed by the seed),
and the SAE, the feature selection, the validation grids and the test split all change with
it. The aggregate (`seeds.json`, `seeds.md`) gives every cell's mean over seeds and its 95%
t-interval over concept draws clustered by seed (`intervals.t_interval`: the seeds' means, S - 1
degrees of freedom), and the paired difference SAUCE reconstruct minus every other row with its
interval and t-test. `family` reads v3's primary comparison across towers: each SAUCE row minus
the baseline chosen on validation, per task and tower, Holm-adjusted as one family.

Seeds are split in advance: `VALIDATION_SEEDS` for design and debugging, `TEST_SEEDS` reserved
for the one final study run, `SELECTIVE_TEST_SEEDS` for the one read of the selective recipes
chosen after it, `V3_TEST_SEEDS` for the one read of the v3 protocol (issue 31), fixed before
any v3 design work (all refused unless asked for with `open_test_seeds`). Seeds 0-5 were read
while the benchmark was developed and belong to none; 101-110 are spent and never reused as
confirmation.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from sauce_jax.errors import ConfigError

from . import table2
from ..benchmark import SELECTIVITY, headline, objectives, selectivity
from ..intervals import best_baseline, excludes_zero, holm, t_interval, t_test
from .table2_report import hyperparameters_text
from ..world import TASKS

VALIDATION_SEEDS = (6, 7, 8, 9, 10)
TEST_SEEDS = (101, 102, 103, 104, 105)
SELECTIVE_TEST_SEEDS = (106, 107, 108, 109, 110)
V3_TEST_SEEDS = tuple(range(111, 121))  # ConceptWorld v3's test read (the protocol names the 6 or more it reads)
RESERVED = TEST_SEEDS + SELECTIVE_TEST_SEEDS + V3_TEST_SEEDS
NAMED_SEEDS = {"validation": VALIDATION_SEEDS, "test": TEST_SEEDS, "selective-test": SELECTIVE_TEST_SEEDS,
               "v3-test": V3_TEST_SEEDS}
REFERENCE = "SAUCE reconstruct"  # the pre-declared SAUCE row every other row is compared with
# "objective": the v2 declared validation objective (`sauce.compensatory_objective`) read on the
# test split; "selective_objective": the one collapse cannot win (`sauce.selective_objective`,
# v3's primary) and "keeps_clean" the share of concepts with every keep term within
# `sauce.KEEP_MARGIN` of clean (both NaN for results written before they recorded clean_rates).
COLUMNS = ("UA_g", "UA_d", "IRA", "CRA", "utility", *SELECTIVITY, "objective", "selective_objective", "keeps_clean")


def parse_seeds(text: str) -> tuple[int, ...]:
    """"validation", "test", "selective-test", "v3-test" or a comma-separated list of integers."""
    if text in NAMED_SEEDS:
        return NAMED_SEEDS[text]
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give one of {', '.join(map(repr, NAMED_SEEDS))} or integers like "
                          "6,7,8") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: give at least one seed, each once")
    return seeds


def check_seeds(seeds, open_test_seeds: bool = False) -> None:
    """Refuse any `RESERVED` seed unless `open_test_seeds`."""
    reserved = sorted(set(seeds) & set(RESERVED))
    if reserved and not open_test_seeds:
        raise ConfigError(f"seeds {reserved} are reserved test seeds, opened once for the final study run; "
                          "pass --open-test-seeds to run them")


def study_saes(config: table2.Table2Config, out: Path, saes_from: str | Path | None = None) -> dict[str, Path]:
    """The folders of the SAEs a study shares between its seeds: the paper row's ("paper") and,
    with `config.generic_sae`, SAUCE's generic one ("generic"), in the study folder `out`, or
    finished ones in another study folder `saes_from` (how the test read reuses validation's:
    retraining would give another SAE, since float rounding differs between code versions)."""
    where = Path(saes_from) if saes_from is not None else out
    folders = {"paper": where / "sae_paper", "generic": where / "sae_generic"}
    if saes_from is not None:
        from sauce_jax.train.reuse import finished_sae

        needed = [name for name, used in (("paper", config.paper_row), ("generic", config.generic_sae)) if used]
        missing = [str(folders[name]) for name in needed if finished_sae(folders[name]) is None]
        if missing:
            raise ConfigError(f"--saes-from {where}: no finished SAE in {', '.join(missing)}")
    return folders


def run(out_dir: str | Path, config: table2.Table2Config, seeds, *, open_test_seeds: bool = False,
        model_dir=None, progress: bool = True, draw_concepts=None, reference: str = REFERENCE,
        saes_from: str | Path | None = None) -> dict:
    """Table 2 on every seed (resumable), then the aggregate; returns what `seeds.json` holds.
    `draw_concepts`: a function of the seed (`table2.study_concepts`, `table2.v3_concepts`) whose
    concepts each seed unlearns (default: the config's). The SAEs the seeds share
    are trained in `out_dir`, or reused from the study folder `saes_from` (`study_saes`)."""
    check_seeds(seeds, open_test_seeds)
    out = Path(out_dir)
    saes = study_saes(config, out, saes_from)
    per_seed = {}
    for seed in seeds:
        if progress:
            print(f"== seed {seed}", flush=True)
        demo = dataclasses.replace(config.demo, seed=seed)
        if draw_concepts:
            demo = dataclasses.replace(demo, concepts=draw_concepts(seed))
        seeded = dataclasses.replace(config, demo=demo)
        per_seed[seed] = table2.run(out / f"seed-{seed}", seeded, model_dir=model_dir, progress=progress,
                                    # one paper SAE, and with config.generic_sae one SAUCE SAE, for every seed
                                    paper_sae_dir=saes["paper"], generic_sae_dir=saes["generic"])
    summary = aggregate(per_seed, reference)
    (out / "seeds.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "seeds.md").write_text(markdown(summary))
    return summary


def report(out_dir: str | Path, seeds, reference: str = REFERENCE) -> dict:
    """The aggregate over the seeds of `seeds` whose run folder is finished (`seed-<s>/results.json`),
    without computing anything: how a long study is read while it runs. `missing` lists the rest."""
    out = Path(out_dir)
    per_seed = {s: json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in seeds
                if (out / f"seed-{s}" / "results.json").is_file()}
    if not per_seed:
        raise ConfigError(f"no finished seed among {list(seeds)} in {out}")
    summary = aggregate(per_seed, reference) | {"missing": [int(s) for s in seeds if s not in per_seed]}
    (out / "seeds.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "seeds.md").write_text(markdown(summary))
    return summary


def _columns(result: dict) -> dict[str, float]:
    return headline(result) | selectivity(result) | objectives(result)


def _matrix(per_seed: dict, method: str, task: str, column: str) -> np.ndarray:
    """[S, C] per-concept values of one cell (NaN where missing), concepts aligned across seeds."""
    rows = []
    for results in per_seed.values():
        per_concept = results["rows"].get(method, {}).get("per_concept", [])
        rows.append([_columns(r)[column] for r in per_concept if r["domain"] in TASKS[task]])
    width = max((len(r) for r in rows), default=0)
    return np.array([r + [np.nan] * (width - len(r)) for r in rows], float)


def aggregate(per_seed: dict, reference: str = REFERENCE) -> dict:
    """{"seeds", "reference", "cells": {method: {task: {column: t-interval}}}, "paired": {method:
    {task: {column: t-interval and t-test p of `reference` minus method}}}} over `per_seed` =
    {seed: table2 results}."""
    methods = list(dict.fromkeys(m for results in per_seed.values() for m in results["rows"]))
    cells: dict = {}
    paired: dict = {}
    for method in methods:
        for task in TASKS:
            for column in COLUMNS:
                values = _matrix(per_seed, method, task, column)
                if values.size == 0:
                    continue
                cells.setdefault(method, {}).setdefault(task, {})[column] = t_interval(values)
                if method != reference and reference in methods:
                    base = _matrix(per_seed, reference, task, column)
                    if base.shape == values.shape:
                        paired.setdefault(method, {}).setdefault(task, {})[column] = \
                            t_interval(base - values) | {"p": t_test(base - values)["p"]}
    tuning: dict = {}
    for seed, results in per_seed.items():
        for method, row in results["rows"].items():
            if text := hyperparameters_text(row):
                tuning.setdefault(method, {})[str(seed)] = text
    concepts = {str(seed): results.get("config", {}).get("demo", {}).get("concepts", [])
                for seed, results in per_seed.items()}
    return {"seeds": [int(s) for s in per_seed], "reference": reference, "cells": cells, "paired": paired,
            "tuning": tuning, "concepts": concepts}


def _fmt(cell: dict, scale: float) -> str:
    if cell is None or cell["mean"] is None:
        return "-"
    return f"{scale * cell['mean']:.1f} [{scale * cell['lo']:.1f}, {scale * cell['hi']:.1f}]"


def markdown(summary: dict) -> str:
    """The multi-seed Table 2 and the paired differences, as markdown."""
    scale = {c: 1.0 if c == "utility" else 100.0 for c in COLUMNS}
    lines = ["# Table 2 over seeds " + ", ".join(map(str, summary["seeds"]))
             + (f" (not yet finished: {', '.join(map(str, summary['missing']))})" if summary.get("missing") else ""),
             "",
             ("Mean over seeds of the per-seed mean over concepts, percent, with its 95% t-interval over the "
              "seeds' means (concept draws clustered by seed; with one seed, over its concepts). COR: co-occurring concepts of the forget images still shown; "
              "BA: yes/no balanced accuracy over the other concepts, present and absent; HAL: descriptions "
              "naming an absent concept, split into HAL_swap (forget images, the target's own slot), HAL_other "
              "(forget images, other slots) and HAL_pool (images without the concept); DEG: degenerate descriptions; UA_d_logit: UA_d under the old logit rule."),
             "", "## Cells", "", "| method | task | " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for method, tasks in summary["cells"].items():
        for task, cols in tasks.items():
            lines.append(f"| {method} | {task} | " + " | ".join(_fmt(cols.get(c), scale[c]) for c in COLUMNS) + " |")
    lines += ["", f"## Paired differences: {summary['reference']} minus each row", "",
              "Marked * where the 95% interval excludes 0 (uncorrected; `family` holds the Holm-adjusted "
              "primary comparisons).", "",
              "| minus | task | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for method, tasks in summary["paired"].items():
        for task, cols in tasks.items():
            cells = [_fmt(cols.get(c), scale[c]) + ("*" if cols.get(c) and excludes_zero(cols[c]) else "")
                     for c in COLUMNS]
            lines.append(f"| {method} | {task} | " + " | ".join(cells) + " |")
    if summary.get("tuning"):
        seeds = list(summary.get("concepts", {}))
        lines += ["", "## Chosen on each seed's validation split", "",
                  "Concepts: " + "; ".join(f"seed {s}: {', '.join(c)}" for s, c in summary["concepts"].items()) + ".",
                  "", "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
        for method, chosen in summary["tuning"].items():
            lines.append(f"| {method} | " + " | ".join(chosen.get(s, "-") for s in seeds) + " |")
    return "\n".join(lines) + "\n"


PRIMARY = "selective_objective"  # v3's primary objective (`objectives.selective_objective`)
CO_PRIMARY = ("SAUCE reconstruct", "SAUCE delta")


def family(per_tower: dict, baseline: str, column: str = PRIMARY, rows=CO_PRIMARY, alpha: float = 0.05) -> dict:
    """v3's family of primary comparisons: for each SAUCE row of `rows`, task and tower, the
    paired difference row minus `baseline` (chosen on validation: `choose_baseline`) on `column`,
    its t-interval over seeds and t-test, Holm-adjusted over the whole family (issue 31: 2 rows x
    2 tasks x 2 towers = 8 tests). `per_tower`: {tower: {seed: table2 results}}."""
    tests, found = {}, {}
    for tower, per_seed in per_tower.items():
        for row in rows:
            for task in TASKS:
                ours, theirs = _matrix(per_seed, row, task, column), _matrix(per_seed, baseline, task, column)
                name = f"{row} - {baseline} | {task} | {tower}"
                if ours.size == 0 or ours.shape != theirs.shape:
                    tests[name], found[name] = None, None
                    continue
                found[name] = t_interval(ours - theirs)
                tests[name] = t_test(ours - theirs)["p"]
    adjusted = holm(tests, alpha)
    return {"baseline": baseline, "column": column, "alpha": alpha,
            "tests": {name: (found[name] or {}) | adjusted[name] for name in tests}}


def choose_baseline(per_tower_validation: dict, column: str = PRIMARY) -> str:
    """The baseline the family compares with: the best mean of `column` over every validation
    seed, task and tower (`intervals.best_baseline`), never a test seed."""
    tables = [results["table2"] for per_seed in per_tower_validation.values() for seed, results in per_seed.items()]
    reserved = [seed for per_seed in per_tower_validation.values() for seed in per_seed if int(seed) in RESERVED]
    if reserved:
        raise ConfigError(f"the baseline is chosen on validation seeds only; got reserved seeds {sorted(reserved)}")
    return best_baseline(tables, column=column)


def family_markdown(found: dict) -> str:
    lines = [f"# Primary comparisons: SAUCE minus {found['baseline']} on {found['column']}", "",
             "Each test: the paired difference over seeds (t-interval, 95%), its two-sided t-test, and Holm's "
             f"adjustment over the {len(found['tests'])} tests of the family (alpha {found['alpha']}).", "",
             "| comparison | task | tower | difference [95% CI] | p | Holm p | rejected |", "|---|---|---|---|---|---|---|"]
    for name, t in found["tests"].items():
        comparison, task, tower = name.split(" | ")
        cell = _fmt(t, 100.0) if t.get("mean") is not None and t.get("lo") is not None else "-"
        p = "-" if t.get("p") is None else f"{t['p']:.3g}"
        ph = "-" if t.get("p_holm") is None else f"{t['p_holm']:.3g}"
        lines.append(f"| {comparison} | {task} | {tower} | {cell} | {p} | {ph} | {'yes' if t['reject'] else 'no'} |")
    return "\n".join(lines) + "\n"


def family_report(out_dir, towers: dict, seeds, validation: dict | None = None, baseline: str | None = None) -> dict:
    """`family` over the finished seeds of each tower's study folder (`towers`: {tower: folder}),
    the baseline chosen on the validation folders (`validation`, default the same folders,
    which must then hold validation seeds only) unless given; writes `family.json` and
    `family.md` in `out_dir`."""
    def finished(folder):
        folder = Path(folder)
        return {s: json.loads((folder / f"seed-{s}" / "results.json").read_text()) for s in seeds
                if (folder / f"seed-{s}" / "results.json").is_file()}

    per_tower = {tower: finished(folder) for tower, folder in towers.items()}
    empty = [tower for tower, per_seed in per_tower.items() if not per_seed]
    if empty:
        raise ConfigError(f"no finished seed among {list(seeds)} for tower(s) {empty}")
    if baseline is None:
        chooser = per_tower if validation is None else {
            tower: {int(p.name.split("-")[1]): json.loads((p / "results.json").read_text())
                    for p in sorted(Path(folder).glob("seed-*")) if (p / "results.json").is_file()}
            for tower, folder in validation.items()}
        baseline = choose_baseline(chooser)
    found = family(per_tower, baseline) | {"seeds": {t: sorted(int(s) for s in p) for t, p in per_tower.items()}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "family.json").write_text(json.dumps(found, indent=1, default=str))
    (out / "family.md").write_text(family_markdown(found))
    return found
