"""`sauce-jax experiment robust`: the paper's Figure 7, robustness of unlearning to a translation
attack and a 4-bit quantization attack, SAUCE against GA, GD, KL and PO on ConceptWorld.

Each method unlearns one concept at a time (the concrete task's concepts by default, as in the
paper's figure) and is scored three ways by the same `Evaluation` on the same test images:
- English: UA_d as in Table 2.
- translation: the same questions and concept words in the second language (`language`,
  Spanish; the paper uses Chinese). The clean reference is the clean model asked in that
  language: UA_d counts the images whose concept the clean model confirmed in Spanish and the
  unlearned model no longer does.
- quantization: the unlearned model's weights quantized to `bits` (`sauce_jax.eval.quantize`: symmetric
  per-output-channel round-to-nearest of every linear / convolution weight of the JAX tower,
  the projector and the language model; embeddings, norms, biases and the tied lm_head kept).
  For SAUCE the tower is quantized and its intervention applied on it as before (the SAE stays
  in float32: it is the unlearning mechanism, not the model's weights); for the baselines
  their trained projector and language model are quantized along with the (untouched) tower.
  The clean reference is the unquantized clean model, so UA_d counts only what the clean model
  had right; the "clean" row's quantized UA_d is the forgetting quantization causes alone.

A drop is UA_d (English) minus UA_d under the attack: how much of the forgotten knowledge the
attack brings back. Baselines are trained as `table2` trains them, with the learning rate and
steps a finished table2 run chose (`--table2 DIR`, its rows/<method>.json) or else the first
point of Table2Config's grids. SAUCE runs in both modes with k and gamma chosen on the
validation split (or the table2 run's `sauce_chosen.json`). Each (method, concept) unit is kept
in `parts/`; a rerun resumes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from sauce_jax.errors import ConfigError
from ..benchmark import Evaluation, headline, make_suite
from ..sauce import MODES, DemoConfig, prepare
from .table2 import Table2Config
from .table2 import quick_config as table2_quick
from ..world import DOMAINS, TASKS
from ..runs import (
    cached,
    check_same_run,
    say,
    write_outputs,
)

NAME = "robust"
CONCRETE: tuple[str, ...] = tuple(c for d in TASKS["concrete"] for c in DOMAINS[d])
ATTACKS = ("english", "translation", "quantization")
COLUMNS = ("UA_d", "UA_g", "IRA", "CRA", "utility")


@dataclasses.dataclass(frozen=True)
class RobustConfig:
    """The experiment. `table2` holds the concepts (its demo), SAUCE's setup and the baselines'
    training; `hyperparameters` fixes (method, lr, steps) per baseline (a method not listed
    takes the first point of table2's grids)."""

    table2: Table2Config = dataclasses.field(
        default_factory=lambda: Table2Config(demo=DemoConfig(concepts=CONCRETE)))
    hyperparameters: tuple[tuple[str, float, int], ...] = ()
    sauce_modes: tuple[str, ...] = MODES
    language: str = "es"  # the translation attack's language
    bits: int = 4
    generative: bool = True  # also describe the images (UA_g and the _g retain rates); slower

    def __post_init__(self):
        from .. import text as T

        if self.language not in T.LANGUAGES or self.language == "en":
            raise ConfigError(f"robust language={self.language!r} must be a non-English one of {T.LANGUAGES}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"robust bits={self.bits!r} must be an integer in [2, 8]")
        if not set(self.sauce_modes) <= set(MODES):
            raise ConfigError(f"robust sauce_modes={self.sauce_modes} must be a subset of {MODES}")
        for entry in self.hyperparameters:
            if len(entry) != 3 or entry[0] not in self.table2.methods or not entry[1] > 0 or entry[2] < 1:
                raise ConfigError(f"robust hyperparameters entry {entry!r} must be (method in "
                                  f"{self.table2.methods}, lr > 0, steps >= 1)")

    @property
    def concepts(self) -> tuple[str, ...]:
        return self.table2.demo.concepts

    def lr_steps(self, method: str) -> tuple[float, int]:
        for name, lr, steps in self.hyperparameters:
            if name == method:
                return float(lr), int(steps)
        return self.table2.lr_grid[0], self.table2.steps_grid[0]

    @property
    def methods(self) -> list[str]:
        """Every scored row: the clean model, the baselines, SAUCE's modes."""
        return ["clean", *self.table2.methods, *(f"SAUCE {m}" for m in self.sauce_modes)]


def quick_config(concepts=None, seed: int = 0) -> RobustConfig:
    """The CI-sized run: table2's quick setup on two concrete concepts, no descriptions."""
    return RobustConfig(table2=table2_quick(concepts or ("star", "court"), seed=seed), generative=False)


def hyperparameters_from_table2(table2_dir: str | Path, methods) -> tuple[tuple[str, float, int], ...]:
    """(method, lr, steps) of each baseline a finished table2 run chose (rows/<method>.json)."""
    out = []
    for method in methods:
        path = Path(table2_dir) / "rows" / f"{method}.json"
        if not path.is_file():
            raise ConfigError(f"--table2 {table2_dir}: no {path.name} in rows/ (not a finished table2 run?)")
        h = json.loads(path.read_text()).get("hyperparameters", {})
        if "lr" not in h or "steps" not in h:
            raise ConfigError(f"{path} has no hyperparameters lr / steps")
        out.append((method, float(h["lr"]), int(h["steps"])))
    return tuple(out)


# ------------------------------------------------------------------------------ the units

class _Context:
    """The model, SAUCE, both evaluations and the quantized clean model, built on first use."""

    def __init__(self, out: Path, config: RobustConfig, model_dir, sae_dir, progress: bool):
        from sauce_jax.eval.quantize import quantize_encoder, quantize_llava

        d = config.table2.demo
        self.config, self.progress = config, progress
        self.prep = prepare(out, d, model_dir=model_dir, sae_dir=sae_dir, progress=progress,
                            choose=bool(config.sauce_modes))
        suite = make_suite(d.concepts, seed=d.seed, split="test", n_forget=d.n_test, n_pool_per_concept=d.n_pool,
                           n_perception=d.n_perception)
        model = self.prep.model
        self.english = Evaluation(model, suite, "en", config.generative)
        self.translated = Evaluation(model, suite, config.language, config.generative)
        self.q_encoder, tower = quantize_encoder(self.prep.encoder, config.bits)
        self.q_llava, language_model = quantize_llava(self.prep.llava, config.bits)
        self.q_model = self.quantized_model(self.q_llava)
        self.quantization = {"bits": config.bits, "tower": tower, "projector_and_language_model": language_model}

    def quantized_model(self, q_llava):
        """The evaluation's Model with the quantized tower in front of `q_llava`."""
        model = copy.copy(self.prep.model)  # shares the pixel cache: preprocessing is unchanged
        model.model, model.encoder = q_llava, self.q_encoder
        return model

    def clean(self, concept: str) -> dict:
        return {"english": self.english.run(concept), "translation": self.translated.run(concept),
                "quantization": self.english.run(concept, model=self.q_model)}

    def sauce(self, concept: str, mode: str) -> dict:
        edited = self.prep.unlearned(concept, mode)
        q_edited = self.prep.unlearned(concept, mode, encoder=self.q_encoder)
        return {"english": self.english.run(concept, edited), "translation": self.translated.run(concept, edited),
                "quantization": self.english.run(concept, q_edited, model=self.q_model),
                "hyperparameters": {k: self.prep.chosen[mode][k] for k in ("k", "gamma")}}

    def baseline(self, concept: str, method: str) -> dict:
        from sauce_jax.eval.baselines import Unlearner
        from sauce_jax.eval.conceptworld.baseline_data import build_data
        from sauce_jax.eval.quantize import quantize_llava

        c = self.config
        lr, steps = c.lr_steps(method)
        data = build_data(self.prep.llava, self.prep.processor.tokenizer, concept, seed=c.table2.demo.seed,
                          n_forget=c.table2.n_forget, n_retain_per_concept=c.table2.n_retain_per_concept)
        edited = Unlearner(self.prep.llava, data, c.table2.baseline(method, lr, steps)).train_to(steps).model_now()
        variant = self.prep.model.with_language_model(edited)
        q_edited = quantize_llava(edited, c.bits)[0]
        q_variant = self.quantized_model(q_edited)
        return {"english": self.english.run(concept, model=variant),
                "translation": self.translated.run(concept, model=variant),
                "quantization": self.english.run(concept, model=q_variant),
                "hyperparameters": {"lr": lr, "steps": steps},
                "weights": weight_changes(self.prep.llava, edited, self.q_llava, c.bits)}

    def unit(self, method: str, concept: str) -> dict:
        start = time.time()
        if method == "clean":
            unit = self.clean(concept)
        elif method.startswith("SAUCE "):
            unit = self.sauce(concept, method.split(" ", 1)[1])
        else:
            unit = self.baseline(concept, method)
        unit["seconds"] = round(time.time() - start, 1)
        return unit


def weight_changes(clean, edited, q_clean, bits: int) -> dict:
    """How much of a baseline's update survives quantization, over the quantized weight matrices
    (those `q_clean`, the quantized clean model, changed): the share of entries the update
    changed, and the share whose integer code differs from the clean weight's code. When the
    second is small, quantizing the unlearned model largely gives back the quantized clean
    model (the mechanism of Zhang et al.'s attack)."""
    import torch

    from sauce_jax.eval.quantize import quantize_per_channel

    def codes(weight):
        q, scale = quantize_per_channel(weight.detach().float().numpy(), bits)
        return np.rint(q / np.where(scale > 0, scale, 1.0)[:, None])

    before, after = dict(clean.named_parameters()), dict(edited.named_parameters())
    names = [n for n, p in q_clean.named_parameters() if not torch.equal(p, before[n])]  # the quantized tensors
    total = sum(before[n].numel() for n in names)
    changed = sum(int((before[n] != after[n]).sum()) for n in names)
    moved = sum(int((codes(before[n]) != codes(after[n])).sum()) for n in names)
    return {"quantized_entries": total, "changed_by_update": round(changed / total, 4),
            "codes_changed": round(moved / total, 4)}


def _part(out: Path, method: str, concept: str) -> Path:
    return out / "parts" / method.replace(" ", "-") / f"{concept}.json"


# ---------------------------------------------------------------------------- aggregation

def _mean(values) -> float | None:
    kept = [v for v in values if v is not None and not np.isnan(v)]
    return round(float(np.mean(kept)), 4) if kept else None


def summarize(units: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Per method: each headline column under each attack (mean over concepts), the UA_d drops
    (English minus attacked), and the number of clean-right questions behind each UA_d."""
    table = {}
    for method, per_concept in units.items():
        row: dict = {}
        for attack in ATTACKS:
            heads = [headline(u[attack]) for u in per_concept.values()]
            row[attack] = {col: _mean([h[col] for h in heads]) for col in COLUMNS}
            row[attack]["UA_d_n"] = int(sum(u[attack]["UA_d"]["n"] for u in per_concept.values()))
            # The clean model's accuracy on the forget questions in the attack's language.
            row[attack]["clean_d"] = _mean([u[attack]["clean_d"]["value"] for u in per_concept.values()])
        for attack in ATTACKS[1:]:
            a, b = row["english"]["UA_d"], row[attack]["UA_d"]
            row[f"drop_{attack}"] = None if a is None or b is None else round(a - b, 4)
        weights = [u["weights"] for u in per_concept.values() if "weights" in u]
        if weights:
            row["weights"] = {k: _mean([w[k] for w in weights]) for k in ("changed_by_update", "codes_changed")}
        table[method] = row
    return table


# --------------------------------------------------------------------------------- report

def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(results: dict) -> str:
    cfg, table = results["config"], results["summary"]
    language = cfg["language"]
    lines = ["# Robustness to attacks (the paper's Figure 7) on ConceptWorld", "",
             (f"Concepts: {', '.join(results['concepts'])}. Translation attack: the questions in `{language}`; "
             f"quantization attack: {cfg['bits']}-bit symmetric per-output-channel round-to-nearest of every linear "
             "/ convolution weight (tower, projector, language model; embeddings, norms, biases and the tied lm_head "
             "kept; SAUCE's SAE kept in float32). Rates in %, means over concepts; a drop is UA_d (English) minus "
             "UA_d under the attack (how much forgotten knowledge the attack brings back)."), "",
             "## UA_d under attack", "",
             "| method | UA_d | UA_d translated | drop | UA_d quantized | drop |",
             "|---|---|---|---|---|---|"]
    for method, row in table.items():
        if method == "clean":
            continue
        lines.append(f"| {method} | {_pct(row['english']['UA_d'])} | {_pct(row['translation']['UA_d'])} | "
                     f"{_pct(row['drop_translation'])} | {_pct(row['quantization']['UA_d'])} | "
                     f"{_pct(row['drop_quantization'])} |")
    lines += ["", "## Retention and utility under each attack", "",
              "| method | IRA en / tr / q | CRA en / tr / q | utility en / tr / q | UA_g en / tr / q |",
              "|---|---|---|---|---|"]
    for method, row in table.items():
        cells = []
        for col in ("IRA", "CRA", "utility", "UA_g"):
            values = [row[a][col] for a in ATTACKS]
            cells.append(" / ".join("-" if v is None else f"{v:.1f}" if col == "utility" else _pct(v)
                                    for v in values))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    clean = table.get("clean")
    if clean:
        q = results["quantization"]
        lines += ["", "## The attacks on the clean model", "",
                  (f"- Clean accuracy on the forget questions: {_pct(clean['english']['clean_d'])}% in English, "
                  f"{_pct(clean['translation']['clean_d'])}% in `{language}` (the translated reference)."),
                  (f"- Quantization alone: the quantized clean model loses {_pct(clean['quantization']['UA_d'])}% of "
                  f"what the clean model confirmed (its UA_d), IRA {_pct(clean['quantization']['IRA'])}%, CRA "
                  f"{_pct(clean['quantization']['CRA'])}%, utility {clean['quantization']['utility']:.1f} "
                  f"(unquantized {clean['english']['utility']:.1f})."),
                  (f"- Weights quantized: tower {q['tower']['tensors']} tensors (mean relative error "
                  f"{q['tower']['mean_relative_error']}), projector + language model "
                  f"{q['projector_and_language_model']['tensors']} tensors (mean relative error "
                  f"{q['projector_and_language_model']['mean_relative_error']}).")]
    moved = {m: r["weights"] for m, r in table.items() if "weights" in r}
    if moved:
        lines += ["", "## What of the baselines' updates survives quantization", "",
                  ("Over the quantized weight matrices (projector, language model): the share of entries the "
                  "unlearning update changed, and the share whose 4-bit code differs from the clean weight's code "
                  "(small: quantizing the unlearned model gives back much of the quantized clean model)."), "",
                  "| method | changed by the update | codes changed |", "|---|---|---|"]
        lines += [f"| {m} | {_pct(w['changed_by_update'])} | {_pct(w['codes_changed'])} |"
                  for m, w in moved.items()]
    lines += ["", "## Hyperparameters", ""]
    for method, h in results["hyperparameters"].items():
        lines.append(f"- {method}: " + ", ".join(f"{k}={v}" for k, v in h.items()))
    lines += ["", "## UA_d per concept (English / translated / quantized)", "",
              "| method | " + " | ".join(results["concepts"]) + " |",
              "|---|" + "---|" * len(results["concepts"])]
    for method, per in results["per_concept"].items():
        if method == "clean":
            continue
        lines.append(f"| {method} | " + " | ".join(
            "/".join(_pct(per[c][a]["UA_d"]["value"]) for a in ATTACKS) for c in results["concepts"]) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Figure 7: grouped bars of UA_d per method, without attack, translated and quantized;
    a second panel shows utility the same way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = {m: r for m, r in results["summary"].items() if m != "clean"}
    names = list(table)
    x = np.arange(len(names))
    width = 0.27
    labels = {"english": "no attack", "translation": f"translation ({results['config']['language']})",
              "quantization": f"{results['config']['bits']}-bit quantization"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, col, scale, title in ((axes[0], "UA_d", 100, "UA_d (%)"), (axes[1], "utility", 1, "utility")):
        for i, attack in enumerate(ATTACKS):
            values = [scale * (table[m][attack][col] or 0.0) for m in names]
            bars = ax.bar(x + (i - 1) * width, values, width, label=labels[attack])
            ax.bar_label(bars, fmt="%.0f", fontsize=6)
        ax.set_xticks(x, names, rotation=20)
        ax.set_ylim(0, 112)
        ax.set_title(title)
    handles, names_ = axes[0].get_legend_handles_labels()
    fig.legend(handles, names_, loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0.95))
    fig.suptitle("Robustness to translation and quantization attacks (ConceptWorld, " +
                 ", ".join(results["concepts"]) + ")", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ run

def run(out_dir: str | Path, config: RobustConfig | None = None, *, model_dir=None, sae_dir=None, table2_dir=None,
        progress: bool = True) -> dict:
    """Run (or resume) the experiment; returns what `results.json` holds. With `table2_dir`, a
    finished table2 run's `sauce_chosen.json` (k and gamma) is reused when this run has none."""
    config = config or RobustConfig()
    out = Path(out_dir)
    check_same_run(out, NAME, config)
    if table2_dir is not None and config.sauce_modes and not (out / "sauce_chosen.json").is_file() \
            and (Path(table2_dir) / "sauce_chosen.json").is_file():
        shutil.copyfile(Path(table2_dir) / "sauce_chosen.json", out / "sauce_chosen.json")
    t0 = time.time()
    todo = [(m, c) for m in config.methods for c in config.concepts if not _part(out, m, c).is_file()]
    ctx = _Context(out, config, model_dir, sae_dir, progress) if todo else None  # nothing loaded when all done
    if ctx is not None:
        cached(out / "quantization.json", lambda: ctx.quantization)
    units: dict[str, dict[str, dict]] = {}
    for method in config.methods:
        units[method] = {}
        for concept in config.concepts:
            units[method][concept] = cached(_part(out, method, concept),
                                            lambda m=method, c=concept, ctx=ctx: ctx.unit(m, c))
            brief = ", ".join(f"{a} {_pct(units[method][concept][a]['UA_d']['value'])}" for a in ATTACKS)
            say(progress, f"  {method} {concept}: UA_d {brief}")
    quantization = json.loads((out / "quantization.json").read_text())
    hyper = {m: units[m][config.concepts[0]].get("hyperparameters", {}) for m in config.methods if m != "clean"}
    results = {"config": json.loads((out / "config.json").read_text())["config"], "concepts": list(config.concepts),
               "summary": summarize(units), "hyperparameters": hyper, "quantization": quantization,
               "per_concept": units, "meta": {"seconds_this_run": round(time.time() - t0, 1)}}
    write_outputs(out, results, markdown(results))
    plot(results, out / "figure7.png")
    return results
