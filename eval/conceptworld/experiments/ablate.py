"""`sauce-jax experiment ablate`: what each of SAUCE's choices buys, on ConceptWorld.

Every point unlearns each concept in turn and is summarized per task (concrete, abstract) by
two numbers: the unlearning score (mean of UA_g and UA_d) and the utility score (mean of
IRA, CRA and utility / 100; IRA and CRA each the mean of their yes/no and description rates).
One ablation changes one choice and keeps the others at the demo's validation-chosen defaults
(last tower layer, TopK SAE, k=16, gamma=-1, reconstruct, selection and intervention on all
tokens):

- layer: an SAE trained on each hidden state of the tower, features selected and the
  intervention applied there (the paper only uses the penultimate layer of its towers);
- k_gamma: number of features x scale, a trade-off curve per k;
- token: which tokens eq. 4 scores on (`select_features(token=)`) and which tokens the
  intervention edits (`unlearn(where=)`);
- mode: reconstruct (the paper: the SAE's reconstruction replaces the activation) against
  delta (only the selected features' contribution changes), each over gamma;
- architecture: ReLU-L1 ("standard"), TopK and BatchTopK SAEs at the LLaVA's layer;
- selection: eq. 4 against features scored against every other concept and filtered for
  specificity (`selective.specific_sets`), at the default mode, k and gamma;
- dictionary: the SAE's dictionary size (expansion) x its training images from the generic
  stream, each SAE at `dictionary_ks` features per concept; every SAE's explained variance,
  L0 and dead features are measured on held-out generic images (`sae_quality`).

The mode ablation covers the paper's two modes and the on-manifold ones beyond it: "gated" (the
delta edit only where a selected feature is active) and "replace" (selected latents set to their
mean on the concept's train negatives, gamma unused: one point).

SAEs are trained once each into `out/saes/<name>/` (resumable; `--sae` supplies the TopK one at
the LLaVA's layer), feature sets are kept in `out/parts/features/`, every evaluated point in
`out/parts/points/`: a rerun recomputes nothing it finds. The k x gamma grid is, by default,
scored on the yes/no questions only (`grid_generative=False`: no descriptions, so UA_g and the
description retain rates are absent and the scores fall back to UA_d and the yes/no rates):
it is the largest ablation, and descriptions roughly double a point's cost.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from sauce_jax.errors import ConfigError
from ..benchmark import Evaluation, headline, make_suite, task_table
from ..sauce import MODES, DemoConfig, load_model, select_all, train_concept_sae
from ..runs import (
    cached,
    check_same_run,
    say,
    write_outputs,
)

NAME = "ablate"
ABLATIONS = ("layer", "k_gamma", "token", "mode", "architecture", "selection", "dictionary")
ABLATE_MODES = (*MODES, "gated", "replace")
SELECTIONS = ("eq4", "specific")
ARCHITECTURES = ("standard", "topk", "batchtopk")
SELECT_TOKENS = ("all", "mean", "cls", "last")
WHERE = ("all", "patch", "cls")


def _default_demo() -> DemoConfig:
    # Moderate evaluation sizes: ~20 ablation points x 10 concepts must fit a CPU afternoon.
    return DemoConfig(n_test=24, n_pool=2, n_perception=40)


@dataclasses.dataclass(frozen=True)
class AblateConfig:
    """The experiment. `demo` sets the concepts, the seed, the SAE size (images, expansion, TopK
    k, L1 coefficient) shared by every SAE trained here, selection and evaluation sizes; the
    defaults below are the point every ablation varies one choice of."""

    demo: DemoConfig = dataclasses.field(default_factory=_default_demo)
    ablations: tuple[str, ...] = ABLATIONS
    # The defaults: the demo's validation choice for reconstruct (the full demo and table2 runs
    # chose k=16, gamma=-1), the SAE trained and read on every token.
    k: int = 16
    gamma: float = -1.0
    mode: str = "reconstruct"
    token: str = "all"
    where: str = "all"
    architecture: str = "topk"
    # The ablations' values.
    layers: tuple[int, ...] = (1, 2, 3, 4)
    k_values: tuple[int, ...] = (4, 16, 64)
    gamma_values: tuple[float, ...] = (0.5, 0.0, -1.0, -2.0)
    mode_gammas: tuple[float, ...] = (0.0, -1.0, -2.0)
    select_tokens: tuple[str, ...] = SELECT_TOKENS
    wheres: tuple[str, ...] = WHERE
    architectures: tuple[str, ...] = ARCHITECTURES
    expansions: tuple[int, ...] = (16, 64)  # d_sae / d_in
    sae_image_counts: tuple[int, ...] = (6000, 16000)  # generic images of each SAE (x every token); 6,000: the demo's
    dictionary_ks: tuple[int, ...] = (16, 64)
    quality_images: int = 200  # held-out generic images an SAE's quality is measured on
    generative: bool = True  # describe images (UA_g, IRA_g, CRA_g) at every point but the grid's
    grid_generative: bool = False  # the k x gamma grid: yes/no questions only
    sae: str | None = None  # a trained SAE for (LLaVA's layer, architecture); trained here if None

    def __post_init__(self):
        def subset(name, allowed):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values) or len(set(values)) != len(values):
                raise ConfigError(f"ablate {name}={values} must be distinct values among {allowed}")

        subset("ablations", ABLATIONS)
        subset("architectures", ARCHITECTURES)
        subset("select_tokens", SELECT_TOKENS)
        subset("wheres", WHERE)
        if self.mode not in ABLATE_MODES:
            raise ConfigError(f"ablate mode={self.mode!r} is not one of {ABLATE_MODES}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"ablate architecture={self.architecture!r} is not one of {ARCHITECTURES}")
        if self.token not in SELECT_TOKENS or self.where not in WHERE:
            raise ConfigError(f"ablate token={self.token!r} / where={self.where!r} must be among "
                              f"{SELECT_TOKENS} / {WHERE}")
        ks = (self.k, *self.k_values)
        if not self.k_values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ConfigError(f"ablate k={self.k} and k_values={self.k_values} must be integers >= 1")
        gammas = (self.gamma, *self.gamma_values, *self.mode_gammas)
        if not self.gamma_values or not self.mode_gammas or not all(math.isfinite(g) for g in gammas):
            raise ConfigError(f"ablate gamma values {gammas} must be non-empty and finite")
        for name in ("expansions", "sae_image_counts", "dictionary_ks"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ConfigError(f"ablate {name}={values} must be integers >= 1")
        if self.quality_images < 1:
            raise ConfigError(f"ablate quality_images={self.quality_images} must be >= 1")
        if not self.layers or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in self.layers):
            raise ConfigError(f"ablate layers={self.layers} must be hidden-state indices >= 0 (0: embeddings)")


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """What every point of a run folder shares (checked by `check_same_run`)."""

    demo: DemoConfig
    sae: str | None


def quick_config(concepts=None, seed: int = 0) -> AblateConfig:
    """The CI-sized run: two concepts, small SAEs, two values per ablation."""
    demo = DemoConfig(seed=seed, concepts=tuple(concepts) if concepts else ("star", "red"), sae_images=300,
                      sae_epochs=2.0, sae_steps=None, n_select=24, n_val=4, n_test=10, n_pool=1, n_perception=12)
    return AblateConfig(demo=demo, layers=(2, 4), k_values=(16,), gamma_values=(0.0, -1.0), mode_gammas=(-1.0,),
                        select_tokens=("all", "cls"), wheres=("all", "cls"), architectures=("topk", "standard"),
                        expansions=(4, 16), sae_image_counts=(300, 600), dictionary_ks=(16,), quality_images=20)


# ------------------------------------------------------------------------------------ points

@dataclasses.dataclass(frozen=True)
class Point:
    """One SAUCE setting to evaluate."""

    layer: int
    architecture: str
    token: str  # selection tokens
    where: str  # intervention tokens
    mode: str
    k: int
    gamma: float
    generative: bool
    selection: str = "eq4"
    expansion: int = 0  # 0: the demo's
    sae_images: int = 0  # 0: the demo's

    @property
    def sae_name(self) -> str:
        return f"layer{self.layer}-{self.architecture}" + (f"-x{self.expansion}" if self.expansion else "") \
            + (f"-n{self.sae_images}" if self.sae_images else "")

    @property
    def key(self) -> str:
        chosen = "" if self.selection == "eq4" else f"-{self.selection}"  # eq. 4 keys predate the option
        return (f"{self.sae_name}-sel_{self.token}{chosen}-at_{self.where}-{self.mode}-k{self.k}-g{self.gamma:+g}"
                f"-{'describe' if self.generative else 'yesno'}")


def plan(config: AblateConfig, llava_layer: int) -> dict[str, list[tuple[str, str, Point]]]:
    """Per ablation, its points as (series, label, Point), the others at the defaults."""
    base = Point(llava_layer, config.architecture, config.token, config.where, config.mode, config.k, config.gamma,
                 config.generative)
    at = dataclasses.replace
    table = {
        "layer": [("SAE layer", f"layer {x}", at(base, layer=x)) for x in config.layers],
        "k_gamma": [(f"k={k}", f"k={k} gamma={g:g}", at(base, k=k, gamma=g, generative=config.grid_generative))
                    for k in config.k_values for g in config.gamma_values],
        "token": [("selection tokens (edit all)", f"select {t}", at(base, token=t)) for t in config.select_tokens]
        + [("edited tokens (select all)", f"edit {w}", at(base, where=w)) for w in config.wheres],
        "mode": [(m, f"{m} gamma={g:g}", at(base, mode=m, gamma=g)) for m in (*MODES, "gated")
                 for g in config.mode_gammas] + [("replace", "replace", at(base, mode="replace"))],
        "architecture": [("architecture", a, at(base, architecture=a)) for a in config.architectures],
        "selection": [("selection", s, at(base, selection=s)) for s in SELECTIONS],
        # The demo's own size is written as 0 so its SAE and points are the default's, shared.
        "dictionary": [(f"x{e}, {n} images", f"x{e}, {n} images, k={k}",
                        at(base, k=k, expansion=0 if e == config.demo.expansion else e,
                           sae_images=0 if n == config.demo.sae_images else n))
                       for e in config.expansions for n in config.sae_image_counts for k in config.dictionary_ks],
    }
    return {name: table[name] for name in config.ablations}


def scores(per_concept: list[dict]) -> dict[str, dict[str, float]]:
    """Per task and over all concepts: the headline columns, the unlearning score (mean of UA_g
    and UA_d) and the utility score (mean of IRA, CRA and utility / 100); absent rates are skipped."""
    tables = task_table(per_concept)
    rows = [headline(r) for r in per_concept]
    tables["all"] = {k: round(_nanmean([row[k] for row in rows]), 4) for k in rows[0]}
    out = {}
    for task, t in tables.items():
        unlearning = [t["UA_g"], t["UA_d"]]
        utility = [t["IRA"], t["CRA"], t["utility"] / 100]
        out[task] = {**t, "unlearning": round(_nanmean(unlearning), 4), "utility_score": round(_nanmean(utility), 4)}
    return out


def _nanmean(values) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


# ------------------------------------------------------------------------------------ run

class _Context:
    """The model, the SAEs, the feature sets and the two evaluations, each built on first use."""

    def __init__(self, out: Path, config: AblateConfig, model_dir, progress: bool):
        self.out, self.config, self.progress = out, config, progress
        self.llava, self.processor, self.encoder, self.layer, self.model = load_model(model_dir)
        self._saes: dict = {}
        self._sets: dict = {}
        self._evaluations: dict = {}

    def sae(self, point: Point):
        from sauce_jax.errors import InputError
        from sauce_jax.sae_io import load_sae

        layer, architecture, name = point.layer, point.architecture, point.sae_name
        if name not in self._saes:
            if self.config.sae and layer == self.layer and architecture == self.config.architecture \
                    and not point.expansion and not point.sae_images:
                sae = load_sae(self.config.sae)
                if sae.config.d_in != self.encoder.config.hidden_size or sae.config.architecture != architecture:
                    raise InputError(f"SAE at {self.config.sae} ({sae.config.architecture}, d_in={sae.config.d_in}) "
                                     f"is not a {architecture} SAE of width {self.encoder.config.hidden_size}")
            else:
                say(self.progress, f"  SAE {name}: training (or resuming) in {self.out / 'saes' / name}")
                demo = dataclasses.replace(self.config.demo, sae_architecture=architecture,
                                           expansion=point.expansion or self.config.demo.expansion,
                                           sae_images=point.sae_images or self.config.demo.sae_images)
                sae = train_concept_sae(self.encoder, self.out / "saes" / name, demo, layer, self.progress)
            self._saes[name] = sae
        return self._saes[name]

    def feature_sets(self, point: Point) -> dict:
        """concept -> FeatureSet (the most features any point asks for), selected on the train split."""
        from sauce_jax.scoring import FeatureSet

        layer, token, selection = point.layer, point.token, point.selection
        key = (point.sae_name, token, selection)
        if key not in self._sets:
            sae = self.sae(point)
            chosen = "" if selection == "eq4" else f"-{selection}"
            path = self.out / "parts" / "features" / f"{point.sae_name}-{token}{chosen}.json"
            raw = cached(path, lambda: self._select(sae, layer, token, selection))
            sets = {c: FeatureSet(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})
                    for c, s in raw.items()}
            for s in sets.values():
                s.check_sae(sae)  # a folder reused with another --sae must not apply stale ids
            self._sets[key] = sets
        return self._sets[key]

    def _select(self, sae, layer: int, token: str, selection: str) -> dict:
        from .selective import specific_sets

        demo = dataclasses.replace(self.config.demo, k_grid=(max(self.config.k, *self.config.k_values,
                                                                 *self.config.dictionary_ks),))
        sets = select_all(sae, self.encoder, demo, layer, False, token) if selection == "eq4" else \
            specific_sets(sae, self.encoder, demo, layer, False)
        return {c: dataclasses.asdict(s) for c, s in sets.items()}

    def evaluation(self, generative: bool) -> Evaluation:
        if generative not in self._evaluations:
            d = self.config.demo
            suite = make_suite(d.concepts, seed=d.seed, split="test", n_forget=d.n_test, n_pool_per_concept=d.n_pool,
                               n_perception=d.n_perception)
            self._evaluations[generative] = Evaluation(self.model, suite, generative=generative)
        return self._evaluations[generative]

    def evaluate(self, point: Point) -> dict:
        from sauce_jax.intervention import unlearn

        from sauce_jax.scoring import replacement_targets

        from .selective import negative_activations, negative_tokens

        sae = self.sae(point)
        sets = self.feature_sets(point)
        evaluation = self.evaluation(point.generative)
        t0 = time.time()
        z_neg = None
        if point.mode == "replace":
            z_neg = negative_activations(negative_tokens(sae, self.encoder, self.config.demo, point.layer))
        results = []
        for concept in self.config.demo.concepts:
            features = sets[concept].top(point.k, point.gamma)
            if point.mode == "replace":  # gamma plays no part: the latents go to the negatives' mean
                edit = {"targets": replacement_targets(z_neg[concept], np.asarray(features.feature_ids))}
            else:
                edit = {"gamma": point.gamma}
            edited = unlearn(self.encoder, sae, features, layer=point.layer, mode=point.mode, where=point.where,
                             **edit)
            result = evaluation.run(concept, edited)
            result["examples"] = result["examples"][:1]
            results.append(result)
        return {"point": dataclasses.asdict(point), "per_concept": results, "scores": scores(results),
                "seconds": round(time.time() - t0, 1)}

    def quality(self, point: Point) -> dict:
        """The point's SAE on held-out generic images (a stream no SAE trains on): explained
        variance, mean L0 per token, and the fraction of features never active there."""
        from sauce_jax.image_processor import preprocess

        from ...image_benchmark import sae_quality
        from ..render import render_many
        from ..world import generic_stream

        sae = self.sae(point)
        specs = generic_stream(self.config.quality_images, seed=self.config.demo.seed, stream="sae-quality")
        hidden = np.asarray(self.encoder.hidden_state(preprocess(list(render_many(specs)), self.encoder),
                                                      point.layer))  # [N, T, D]
        return {"d_sae": sae.config.d_sae, **sae_quality(sae, hidden.reshape(-1, hidden.shape[-1]))}

    def clean(self, generative: bool) -> dict:
        results = [self.evaluation(generative).run(c) for c in self.config.demo.concepts]
        for r in results:
            r["examples"] = r["examples"][:1]
        return {"per_concept": results, "scores": scores(results)}


def run(out_dir: str | Path, config: AblateConfig | None = None, *, model_dir=None, progress: bool = True) -> dict:
    """Run (or resume) every ablation; returns what `results.json` holds."""
    config = config or AblateConfig()
    out = Path(out_dir)
    # A folder's identity is what its points share (concepts, seed, sizes, SAE recipe, the given
    # SAE); each point is keyed by its own setting, so `--ablations layer` first, all of them
    # later, or a grid grown afterwards reuse every point already in the folder.
    check_same_run(out, NAME, RunIdentity(config.demo, config.sae))
    t0 = time.time()
    ctx = _Context(out, config, model_dir, progress)
    for layer in config.layers:
        ctx.encoder.layer_index(layer)  # a layer the tower lacks fails before any work
    ablations = plan(config, ctx.layer)
    points: dict[str, dict] = {}
    for name, entries in ablations.items():
        say(progress, f"[{name}] {len(entries)} points")
        for series, label, point in entries:
            if point.key not in points:
                points[point.key] = cached(out / "parts" / "points" / f"{point.key}.json", lambda p=point: ctx.evaluate(p))
            s = points[point.key]["scores"]["all"]
            say(progress, f"  {label:28s} unlearning {s['unlearning']:.3f}  utility {s['utility_score']:.3f}  "
                          f"({points[point.key]['seconds']:.0f} s)")
    quality = {p.sae_name: cached(out / "parts" / "sae_quality" / f"{p.sae_name}.json", lambda p=p: ctx.quality(p))
               for _, _, p in ablations.get("dictionary", [])}
    generative_kinds = sorted({p.generative for entries in ablations.values() for _, _, p in entries})
    clean = {("describe" if g else "yesno"): cached(out / "parts" / "points" / f"clean-{'describe' if g else 'yesno'}.json",
                                                    lambda g=g: ctx.clean(g)) for g in generative_kinds}
    summary = {name: [{"series": series, "label": label, "key": point.key, "generative": point.generative,
                       "scores": points[point.key]["scores"],
                       **({"sae": quality[point.sae_name]} if name == "dictionary" else {})}
                      for series, label, point in entries]
               for name, entries in ablations.items()}
    results = {"config": json.loads(json.dumps(dataclasses.asdict(config), default=str)), "llava_layer": ctx.layer,
               "ablations": summary, "clean": {k: v["scores"] for k, v in clean.items()},
               "points": points, "meta": {"seconds_this_run": round(time.time() - t0, 1)}}
    write_outputs(out, results, markdown(results))
    plot(results, out / "ablate.png")
    return results


# ------------------------------------------------------------------------------------ report

TITLES = {"layer": "Layer (SAE trained and applied at hidden state l)", "k_gamma": "k x gamma (yes/no scores)",
          "token": "Token choice", "mode": "Mode", "architecture": "SAE architecture",
          "selection": "Selection (eq. 4, or against every other concept with the specificity filter)",
          "dictionary": "SAE dictionary size x training images (quality on held-out generic images)"}


def markdown(results: dict) -> str:
    lines = ["# SAUCE ablations on ConceptWorld", "",
             (f"Concepts: {', '.join(results['config']['demo']['concepts'])}; seed {results['config']['demo']['seed']}; "
             f"{results['config']['demo']['n_test']} test images per concept. The LLaVA reads hidden state "
             f"{results['llava_layer']}."),
             ("Unlearning = mean(UA_g, UA_d); utility score = mean(IRA, CRA, utility/100). Without descriptions "
             "(yes/no only) UA_g and the description retain rates are absent and the scores use the yes/no rates."),
             "Defaults (every ablation varies one): " + ", ".join(
                 f"{k}={results['config'][k]}" for k in ("k", "gamma", "mode", "token", "where", "architecture"))
             + f", layer {results['llava_layer']}.", ""]
    for name, rows in results["ablations"].items():
        lines += [f"## {TITLES[name]}", "",
                  ("| setting | concrete unl. | concrete util. | abstract unl. | abstract util. | all unl. | all util. "
                  "| UA_g | UA_d | IRA | CRA | utility |"),
                  "|---|" + "---|" * 11]
        kinds = sorted({"describe" if r["generative"] else "yesno" for r in rows})
        for kind in kinds:
            lines.append(_row(f"clean ({kind})", results["clean"][kind]))
        for r in rows:
            lines.append(_row(r["label"], r["scores"]))
        if name == "dictionary":
            lines += ["", "| SAE | d_sae | explained variance | L0 | dead features |", "|---|---|---|---|---|"]
            for r in {r["series"]: r for r in rows}.values():
                q = r["sae"]
                lines.append(f"| {r['series']} | {q['d_sae']} | {q['explained_variance']:.3f} | {q['l0']:.1f} | "
                             f"{100 * q['dead_fraction']:.1f}% |")
        lines.append("")
    lines.append(f"Run time (this invocation): {results['meta']['seconds_this_run']:.0f} s.")
    return "\n".join(lines) + "\n"


def _row(label: str, s: dict) -> str:
    def pct(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"

    cells = []
    for task in ("concrete", "abstract", "all"):
        t = s.get(task, {})
        cells += [pct(t.get("unlearning")), pct(t.get("utility_score"))]
    a = s["all"]
    cells += [pct(a["UA_g"]), pct(a["UA_d"]), pct(a["IRA"]), pct(a["CRA"]), f"{a['utility']:.1f}"]
    return f"| {label} | " + " | ".join(cells) + " |"


def plot(results: dict, path: Path) -> None:
    """One panel per ablation: unlearning score against utility score, one line per series and task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["ablations"])
    cols = min(3, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.4 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    markers = {"concrete": "o", "abstract": "^"}
    for ax, name in zip(axes.flat, names):
        rows = results["ablations"][name]
        series = list(dict.fromkeys(r["series"] for r in rows))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, s in enumerate(series):
            members = [r for r in rows if r["series"] == s]
            for task, marker in markers.items():
                xs = [r["scores"].get(task, {}).get("utility_score", np.nan) for r in members]
                ys = [r["scores"].get(task, {}).get("unlearning", np.nan) for r in members]
                ax.plot(xs, ys, marker=marker, color=colors[i % len(colors)], linestyle="-" if task == "concrete"
                        else "--", label=f"{s} ({task})")
                if task == "concrete":
                    for r, x, y in zip(members, xs, ys):
                        ax.annotate(r["label"].replace(f"{s} ", ""), (x, y), fontsize=6, xytext=(3, 3),
                                    textcoords="offset points")
        kind = "describe" if rows[0]["generative"] else "yesno"
        for task, marker in markers.items():
            clean = results["clean"][kind].get(task)
            if clean:
                ax.plot(clean["utility_score"], clean["unlearning"], marker=marker, color="black", linestyle="",
                        label=f"clean ({task})")
        ax.set_title(TITLES[name], fontsize=9)
        ax.set_xlabel("utility score (IRA, CRA, utility)")
        ax.set_ylabel("unlearning score (UA_g, UA_d)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5.5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
