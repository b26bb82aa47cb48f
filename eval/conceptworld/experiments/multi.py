"""`sauce-jax experiment multi`: unlearning several concepts at once (the paper's Figure 6).

For each task (concrete: object + scene; abstract: color + emotion + material) and each count
1, 2, 4, 8, ... concepts are drawn (seeded, `draws` times per count) either *within* one domain
(several colors) or *across* the task's domains (one from each domain in turn), and SAUCE
unlearns them all at once with the union of their feature sets (`Prepared.unlearned`). One
`GroupEvaluation` scores every draw on the same test images:

- unlearning score = mean of UA_d and UA_g, each the macro mean over the unlearned concepts
  (on each concept's own forget images, counting only what the clean model got right);
- utility score = mean of IRA, CRA and utility / 100, where IRA / CRA are asked on the retain
  pool's images that hold none of the unlearned concepts, about every concept they show:
  IRA for concepts of a domain some unlearned concept belongs to, CRA for the other domains
  (IRA and CRA each the mean of the yes/no and the description rate). A rate without support
  (e.g. CRA when the draw covers every domain) is left out of the mean and reported as such.

The clean model is the reference: unlearning score 0 by definition, utility score
(1 + 1 + its utility / 100) / 3.

`nested` holds the retain images fixed across counts, so 1, 2, 4 and 8 concepts are compared on
the same questions: each (task, setting, draw) draws one chain of the largest count, the smaller
counts unlearn its first 1, 2, 4 concepts, and every count is scored on the pool images that show
none of the chain's concepts. `retention` (mean of the yes/no and description retain rates over
every question on those images, whatever its domain) and utility are then also reported relative
to the chain's one-concept figure (`retention_vs_one`, `utility_vs_one`).

The clean answers (`parts/clean/`) and each draw's scores (`parts/draws/`) are resumable parts;
`results.json`, `report.md` and `figure6.png` are written at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import numpy as np

from sauce_jax.eval.metrics import Rate, mean_rate, retain_accuracy, unlearning_accuracy, utility
from sauce_jax.errors import ConfigError
from ..benchmark import Model, make_suite
from ..sauce import MODES, DemoConfig, prepare, quick_demo
from ..world import CONCEPTS, DOMAIN_OF, DOMAINS, TASKS, rng_for
from ..runs import (
    cached,
    check_same_run,
    say,
    write_outputs,
)

NAME = "multi"
SETTINGS = ("within", "across")
# The union of the concepts' sets edits each shared feature once; "gated" also edits a token only
# where one of the union's features is active, so concepts absent from an image leave it alone.
MULTI_MODES = (*MODES, "gated")


def _full_demo() -> DemoConfig:
    # Every concept can be drawn; k and gamma are fixed (the validation-chosen reconstruct values of
    # the full demo on the shipped model), so only max(k_grid) = k features are selected per concept.
    return DemoConfig(concepts=CONCEPTS, k_grid=(16,), gamma_grid=(-1.0,))


@dataclasses.dataclass(frozen=True)
class MultiConfig:
    """The experiment. `demo` sets the concepts that may be drawn, the seed, the SAE, the selection
    sizes and the test sizes (n_test forget images per concept, n_pool retain-pool images per
    concept, n_perception utility images)."""

    demo: DemoConfig = dataclasses.field(default_factory=_full_demo)
    counts: tuple[int, ...] = (1, 2, 4, 8)
    draws: int = 3  # seeded concept draws per (task, setting, count)
    tasks: tuple[str, ...] = ("concrete", "abstract")
    settings: tuple[str, ...] = SETTINGS
    mode: str = "reconstruct"
    k: int = 16  # features per concept (the union of the concepts' sets is unlearned)
    gamma: float = -1.0
    nested: bool = False  # one fixed retain set per chain of draws (see the module docstring)
    # gated: the gate opens on this fraction of the group's train-negative tokens (its threshold is
    # that quantile of max over the union's features, `selective.gate_threshold`).
    open: float = 0.01

    def __post_init__(self):
        if not self.counts or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.counts) \
                or list(self.counts) != sorted(set(self.counts)):
            raise ConfigError(f"multi counts={self.counts} must be increasing integers >= 1")
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise ConfigError(f"multi draws={self.draws} must be an integer >= 1")
        if not self.tasks or any(t not in TASKS for t in self.tasks):
            raise ConfigError(f"multi tasks={self.tasks} must be a non-empty subset of {tuple(TASKS)}")
        if not self.settings or any(s not in SETTINGS for s in self.settings):
            raise ConfigError(f"multi settings={self.settings} must be a non-empty subset of {SETTINGS}")
        if self.mode not in MULTI_MODES:
            raise ConfigError(f"multi mode={self.mode!r} must be one of {MULTI_MODES}")
        if not 0.0 < self.open < 1.0:
            raise ConfigError(f"multi open={self.open} must be a fraction in (0, 1)")
        if not 1 <= self.k <= max(self.demo.k_grid):
            raise ConfigError(f"multi k={self.k} must be in [1, max(demo.k_grid)={max(self.demo.k_grid)}] "
                              "(only that many features are selected per concept)")
        if not any(DOMAIN_OF[c] in TASKS[t] for c in self.demo.concepts for t in self.tasks):
            raise ConfigError(f"none of the concepts {self.demo.concepts} belongs to the tasks {self.tasks}")


def quick_config(concepts=None, seed: int = 0) -> MultiConfig:
    """The CI-sized run: a few concepts, counts 1 and 2, one draw, few images."""
    demo = dataclasses.replace(quick_demo(concepts or ("star", "heart", "pool", "red", "blue", "happy", "wood"),
                                          seed), k_grid=(16,), n_test=12, n_pool=2, n_perception=20)
    return MultiConfig(demo=demo, counts=(1, 2), draws=1)


# ------------------------------------------------------------------------------------ draws

def draw_concepts(concepts, task: str, setting: str, count: int, index: int, seed: int) -> tuple[str, ...] | None:
    """Draw `index` of `count` concepts of `task` among `concepts` (seeded), or None when the
    concepts do not allow it. `within`: all from one domain (drawn among the domains with enough
    concepts); `across`: the task's domains in a drawn order, one concept from each in turn. A
    single concept is the same draw in both settings."""
    drawn = ordered_draw(concepts, task, setting, count, index, seed)
    return None if drawn is None else tuple(sorted(drawn))


def ordered_draw(concepts, task: str, setting: str, count: int, index: int, seed: int) -> list[str] | None:
    """`draw_concepts`' concepts in the order drawn: any prefix of an `across` draw still takes
    the domains in turn, any prefix of a `within` draw stays in its domain (a nested chain)."""
    available = {d: [c for c in DOMAINS[d] if c in concepts] for d in TASKS[task]}
    available = {d: names for d, names in available.items() if names}
    rng = rng_for(seed, "multi", task, "single" if count == 1 else setting, count, index)
    if count == 1:
        pool = [c for names in available.values() for c in names]
        return [pool[int(rng.integers(len(pool)))]] if pool else None
    if setting == "within":
        domains = [d for d, names in available.items() if len(names) >= count]
        if not domains:
            return None
        names = available[domains[int(rng.integers(len(domains)))]]
        return [str(c) for c in rng.choice(names, count, replace=False)]
    if len(available) < 2 or sum(map(len, available.values())) < count:
        return None
    queues = [list(rng.permutation(available[d])) for d in rng.permutation(sorted(available))]
    drawn: list[str] = []
    while len(drawn) < count:  # round robin over the domains, skipping exhausted ones
        for queue in queues:
            if queue and len(drawn) < count:
                drawn.append(str(queue.pop()))
    return drawn


def plan(config: MultiConfig) -> list[dict]:
    """Every (task, setting, count, draw) with its concepts; impossible combinations left out.
    `nested`: each row also names `retain_without`, its chain's concepts (see the docstring)."""
    if config.nested:
        return _nested_plan(config)
    rows = []
    for task in config.tasks:
        for setting in config.settings:
            for count in config.counts:
                for index in range(config.draws):
                    concepts = draw_concepts(config.demo.concepts, task, setting, count, index, config.demo.seed)
                    if concepts is not None:
                        rows.append({"task": task, "setting": setting, "count": count, "draw": index,
                                     "concepts": list(concepts)})
    return rows


def _nested_plan(config: MultiConfig) -> list[dict]:
    demo, rows = config.demo, []
    for task in config.tasks:
        for setting in config.settings:
            for index in range(config.draws):
                # The chain: the largest count this setting can draw; smaller counts are its prefixes.
                chain = next((d for count in sorted(config.counts, reverse=True)
                              if (d := ordered_draw(demo.concepts, task, setting, count, index, demo.seed))), None)
                if chain is None:
                    continue
                for count in (c for c in config.counts if c <= len(chain)):
                    rows.append({"task": task, "setting": setting, "count": count, "draw": index,
                                 "concepts": sorted(chain[:count]), "retain_without": sorted(chain)})
    return rows


def _slug(concepts) -> str:
    return "+".join(sorted(concepts))


def _part_name(row: dict) -> str:
    """A draw's part file: its concepts, and in a nested run the chain its retain set excludes."""
    name = _slug(row["concepts"])
    return name + (f"--without-{_slug(row['retain_without'])}" if "retain_without" in row else "")


# ------------------------------------------------------------------------------------ scoring

def _compact(answers: dict) -> dict:
    """What scoring needs of `Model.answers`' output, JSON-able."""
    return {"asked": [[int(i), c] for i, c in answers["asked"]], "yes": [bool(v) for v in answers["yes"]],
            "named": [bool(v) for v in answers["named"]]}


def _arrays(answers: dict) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(answers["yes"], bool), np.asarray(answers["named"], bool)


def _mean_of(*rates: Rate) -> float | None:
    values = [r.value for r in rates if r.n > 0 and not np.isnan(r.value)]
    return float(np.mean(values)) if values else None


def score_group(concepts, clean_forget: dict, forget: dict, pool, clean_pool: dict, edited_pool: dict,
                perception: dict, exclude=None) -> dict:
    """The scores of one multi-concept variant from the clean and the edited answers: per
    concept UA, retained IRA / CRA over the pool images without any of `exclude` (default: the
    unlearned concepts), retention over every question on those images, utility, and the
    unlearning and utility scores."""
    per_concept = {}
    for c in concepts:
        clean_yes, clean_named = _arrays(clean_forget[c])
        yes, named = _arrays(forget[c])
        per_concept[c] = {"UA_d": unlearning_accuracy(clean_yes, yes), "UA_g": unlearning_accuracy(clean_named, named)}
    ua_d = mean_rate([r["UA_d"] for r in per_concept.values()])
    ua_g = mean_rate([r["UA_g"] for r in per_concept.values()])

    domains = {DOMAIN_OF[c] for c in concepts}
    kept_images = [not any(spec.has(c) for c in (exclude or concepts)) for spec in pool]  # [N_pool]
    asked = clean_pool["asked"]
    keep = np.array([kept_images[i] for i, _ in asked], bool)
    same = np.array([DOMAIN_OF[c] in domains for _, c in asked], bool)
    (clean_yes, clean_named), (yes, named) = _arrays(clean_pool), _arrays(edited_pool)
    rates = {}
    for name, mask in (("IRA", keep & same), ("CRA", keep & ~same), ("RET", keep)):
        rates[f"{name}_d"] = retain_accuracy(clean_yes[mask], yes[mask])
        rates[f"{name}_g"] = retain_accuracy(clean_named[mask], named[mask])
    ira, cra = _mean_of(rates["IRA_d"], rates["IRA_g"]), _mean_of(rates["CRA_d"], rates["CRA_g"])
    util = utility(perception)
    unlearning = _mean_of(ua_d, ua_g)
    utility_parts = [v for v in (ira, cra, util / 100) if v is not None]
    return {
        "concepts": list(concepts),
        "per_concept": {c: {k: v.as_dict() for k, v in r.items()} for c, r in per_concept.items()},
        "UA_d": ua_d.as_dict(), "UA_g": ua_g.as_dict(), **{k: v.as_dict() for k, v in rates.items()},
        "IRA": ira, "CRA": cra, "retention": _mean_of(rates["RET_d"], rates["RET_g"]), "utility": util,
        "perception": perception,
        "pool_images_kept": int(sum(kept_images)),
        "unlearning_score": unlearning, "utility_score": float(np.mean(utility_parts)),
    }


class GroupEvaluation:
    """Clean answers once (resumable parts under `parts_dir`); `run(concepts, unlearned)` scores
    one multi-concept variant on the same images through `Model.answers` / `Model.perception`."""

    def __init__(self, model: Model, suite, parts_dir: Path, language: str = "en"):
        self.model, self.suite, self.language, self.parts = model, suite, language, Path(parts_dir)

    def _forget(self, concept: str, unlearned=None) -> dict:
        return _compact(self.model.answers(self.suite.forget[concept], lambda s: [concept], self.language, unlearned))

    def _pool(self, unlearned=None) -> dict:
        return _compact(self.model.answers(self.suite.pool, lambda s: sorted(s.concepts), self.language, unlearned))

    def clean_forget(self, concept: str) -> dict:
        return cached(self.parts / "clean" / f"forget-{concept}.json", lambda: self._forget(concept))

    def clean_pool(self) -> dict:
        return cached(self.parts / "clean" / "pool.json", self._pool)

    def _perception(self, unlearned=None) -> dict:
        # Utility's questions never name a concept any group of this study unlearns.
        return self.model.perception(self.suite.perception, self.language, unlearned, exclude=tuple(self.suite.forget),
                                     seed=self.suite.seed)

    def clean_perception(self) -> dict:
        return cached(self.parts / "clean" / "perception.json", self._perception)

    def run(self, concepts, unlearned, exclude=None) -> dict:
        return score_group(concepts, {c: self.clean_forget(c) for c in concepts},
                           {c: self._forget(c, unlearned) for c in concepts}, self.suite.pool, self.clean_pool(),
                           self._pool(unlearned), self._perception(unlearned), exclude)


# ------------------------------------------------------------------------------------ run

def group_threshold(prepared, demo: DemoConfig, concepts, config: MultiConfig, negatives: dict) -> float:
    """The gated union's threshold: it opens on `config.open` of the group's train-negative
    tokens (every concept's negatives together, max over the union's features). `negatives`:
    {concept: its negatives' latents [N, T, d_sae]}, filled here once per concept of the run."""
    from .selective import gate_threshold, negative_tokens

    missing = tuple(c for c in concepts if c not in negatives)
    if missing:
        negatives.update(negative_tokens(prepared.sae, prepared.encoder, dataclasses.replace(demo, concepts=missing),
                                         prepared.layer))
    ids = sorted({i for c in concepts for i in prepared.features(c, config.mode, config.k, config.gamma).feature_ids})
    return gate_threshold(np.concatenate([negatives[c] for c in concepts]), ids, config.open)


def _summary(values) -> dict:
    kept = [v for v in values if v is not None]
    return {"mean": round(float(np.mean(kept)), 4) if kept else None,
            "std": round(float(np.std(kept)), 4) if kept else None, "n": len(kept)}


COLUMNS = ("unlearning_score", "utility_score", "UA_d", "UA_g", "IRA", "CRA", "retention", "utility")
RELATIVE = ("retention", "utility")  # reported relative to the chain's one-concept figure when nested


def relative_to_one(rows: list[dict]) -> None:
    """Nested rows: add `<column>_vs_one` = the row's value / its chain's one-concept value (the
    same retain images), for each of `RELATIVE`."""
    ones = {(r["task"], r["setting"], r["draw"]): r["result"] for r in rows if r["count"] == 1}
    for row in rows:
        one = ones.get((row["task"], row["setting"], row["draw"]))
        for name in RELATIVE:
            mine, base = row["result"].get(name), None if one is None else one.get(name)
            row["result"][f"{name}_vs_one"] = None if mine is None or not base else round(mine / base, 4)


def aggregate(rows: list[dict]) -> dict:
    """task -> setting -> count -> mean / std over the draws of each score and column."""
    table: dict = {}
    for row in rows:
        table.setdefault(row["task"], {}).setdefault(row["setting"], {}).setdefault(str(row["count"]), []).append(row)
    columns = COLUMNS + tuple(f"{n}_vs_one" for n in RELATIVE if any(f"{n}_vs_one" in r["result"] for r in rows))

    def value(result, name):
        v = result.get(name)
        return v["value"] if isinstance(v, dict) else v

    return {task: {setting: {count: {name: _summary([value(r["result"], name) for r in group]) for name in columns}
                             for count, group in by_count.items()}
                   for setting, by_count in by_setting.items()}
            for task, by_setting in table.items()}


def run(out_dir: str | Path, config: MultiConfig | None = None, *, model_dir=None, sae_dir=None,
        progress: bool = True) -> dict:
    """The whole experiment; returns what `out_dir/results.json` holds."""
    config = config or MultiConfig()
    out = Path(out_dir)
    check_same_run(out, NAME, config)
    t0 = time.time()
    rows = plan(config)
    drawn = tuple(c for c in CONCEPTS if any(c in r["concepts"] for r in rows))
    demo = dataclasses.replace(config.demo, concepts=drawn)  # select features only for what is drawn

    @functools.cache
    def context():  # the model, the SAE and the selection: loaded only if some part is missing
        prepared = prepare(out, demo, model_dir=model_dir, sae_dir=sae_dir, progress=progress, choose=False)
        suite = make_suite(drawn, seed=demo.seed, split="test", n_forget=demo.n_test, n_pool_per_concept=demo.n_pool,
                           n_perception=demo.n_perception)
        return prepared, GroupEvaluation(prepared.model, suite, out / "parts")

    negatives: dict = {}  # concept -> its train negatives' SAE latents (the gated threshold's)

    def variant(row):
        prepared, evaluation = context()
        start = time.time()
        concepts = row["concepts"]
        gate = {"threshold": group_threshold(prepared, demo, concepts, config, negatives)} \
            if config.mode == "gated" else {}
        edited = prepared.unlearned(concepts, config.mode, config.k, config.gamma, **gate)
        result = evaluation.run(concepts, edited, row.get("retain_without"))
        say(progress, f"  {_slug(concepts)}: unlearning {result['unlearning_score']:.3f}, "
                      f"utility {result['utility_score']:.3f} ({time.time() - start:.0f} s)")
        return {**result, **gate, "seconds": round(time.time() - start, 1)}

    say(progress, f"[multi] {len(rows)} draws, {len({_slug(r['concepts']) for r in rows})} distinct concept sets")
    for row in rows:
        row["result"] = cached(out / "parts" / "draws" / f"{_part_name(row)}.json", functools.partial(variant, row))
    if config.nested:
        relative_to_one(rows)
    clean_perception = cached(out / "parts" / "clean" / "perception.json",
                              lambda: context()[1].clean_perception())
    clean_utility = utility(clean_perception)
    clean = {"unlearning_score": 0.0, "utility_score": round((2 + clean_utility / 100) / 3, 4),
             "utility": clean_utility, "IRA": 1.0, "CRA": 1.0}
    results = {"config": dataclasses.asdict(config), "clean": clean, "summary": aggregate(rows), "draws": rows,
               "meta": {"seconds_this_call": round(time.time() - t0, 1),
                        "seconds_in_draws": round(sum(r["result"]["seconds"] for r in rows), 1)}}
    write_outputs(out, results, markdown_report(results, config))
    plot_figure6(results, out / "figure6.png")
    return results


def _fmt(summary: dict, percent: bool = False) -> str:
    if summary["mean"] is None:
        return "-"
    scale = 100 if percent else 1
    text = f"{scale * summary['mean']:.1f}" if percent else f"{summary['mean']:.3f}"
    return text + (f" ± {scale * summary['std']:.1f}" if percent else f" ± {summary['std']:.3f}") \
        if summary["n"] > 1 else text


def markdown_report(results: dict, config: MultiConfig) -> str:
    clean = results["clean"]
    lines = ["# Unlearning several concepts at once (Figure 6)", "",
             (f"SAUCE {config.mode}, k={config.k} features per concept (their union unlearned), gamma={config.gamma}"
              + (f", the gate open on {config.open:g} of the group's negative tokens" if config.mode == "gated" else "")
              + "; "
             f"seed {config.demo.seed}; {config.draws} seeded draw(s) per count; {config.demo.n_test} test images per "
             f"unlearned concept, {config.demo.n_pool} retain-pool images per concept, {config.demo.n_perception} "
             "perception images."),
             ("Unlearning score = mean(UA_d, UA_g) over the unlearned concepts; utility score = mean(IRA, CRA, "
             "utility/100) on the retain-pool images without any unlearned concept (a rate without support is "
             "left out: `-`). Mean ± std over the draws."), "",
             (f"Clean model (reference): unlearning score {clean['unlearning_score']:.3f}, utility score "
             f"{clean['utility_score']:.3f} (IRA = CRA = 1 by definition, utility {clean['utility']:.1f})."), "",
             *(["Nested: every count of a chain is scored on the same retain images, those showing none of "
                "the chain's concepts; 'vs one' is the value over the chain's one-concept value."]
               if config.nested else []),
             "",
             "| task | setting | count | unlearning score | utility score | UA_d % | UA_g % | IRA % | CRA % | "
             "retention % | utility |" + (" retention vs one | utility vs one |" if config.nested else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if config.nested else "")]
    for task, by_setting in results["summary"].items():
        for setting, by_count in by_setting.items():
            for count, s in by_count.items():
                util = "-" if s["utility"]["mean"] is None else f"{s['utility']['mean']:.1f}"
                line = (f"| {task} | {setting} | {count} | {_fmt(s['unlearning_score'])} | "
                        f"{_fmt(s['utility_score'])} | {_fmt(s['UA_d'], True)} | {_fmt(s['UA_g'], True)} | "
                        f"{_fmt(s['IRA'], True)} | {_fmt(s['CRA'], True)} | {_fmt(s['retention'], True)} | {util} |")
                if config.nested:
                    line += f" {_fmt(s['retention_vs_one'])} | {_fmt(s['utility_vs_one'])} |"
                lines.append(line)
    lines += ["", "## Draws", "", "| task | setting | count | concepts | unlearning | utility | pool images kept |",
              "|---|---|---|---|---|---|---|"]
    for row in results["draws"]:
        r = row["result"]
        lines.append(f"| {row['task']} | {row['setting']} | {row['count']} | {', '.join(row['concepts'])} | "
                     f"{r['unlearning_score'] if r['unlearning_score'] is None else round(r['unlearning_score'], 3)} | "
                     f"{r['utility_score']:.3f} | {r['pool_images_kept']} |")
    lines += ["", (f"Time in draws: {results['meta']['seconds_in_draws']:.0f} s (this call: "
                  f"{results['meta']['seconds_this_call']:.0f} s).")]
    return "\n".join(lines) + "\n"


def plot_figure6(results: dict, path: Path) -> None:
    """Unlearning and utility score against the number of unlearned concepts, per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 3.6), squeeze=False)
    for ax, (task, by_setting) in zip(axes[0], summary.items()):
        for setting, by_count in by_setting.items():
            counts = [int(c) for c in by_count]
            for name, color in (("unlearning_score", "#c0392b"), ("utility_score", "#2e86c1")):
                means = [np.nan if by_count[str(c)][name]["mean"] is None else by_count[str(c)][name]["mean"]
                         for c in counts]
                stds = [by_count[str(c)][name]["std"] or 0.0 for c in counts]
                ax.errorbar(counts, means, yerr=stds, color=color, marker="o", capsize=3,
                            linestyle="-" if setting == "within" else "--",
                            label=f"{name.split('_')[0]} ({setting})")
        ax.axhline(results["clean"]["utility_score"], color="#2e86c1", linestyle=":", linewidth=1,
                   label="utility (clean)")
        ax.set_xscale("log", base=2)
        ticks = sorted({int(c) for by_count in by_setting.values() for c in by_count})
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.minorticks_off()
        ax.set_xlabel("concepts unlearned at once")
        ax.set_ylim(0, 1.05)
        ax.set_title(task)
    axes[0][0].set_ylabel("score")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
