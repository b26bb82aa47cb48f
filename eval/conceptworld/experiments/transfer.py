"""`sauce-jax experiment transfer`: an SAE and its feature sets applied unchanged to other
VLMs (the paper's Table 4).

The source is the shipped ConceptWorld LLaVA (or `--model`): SAUCE's SAE is trained on its
tower, each concept's features are selected on it, and k and gamma are chosen on its
validation split. The same SAE, feature ids, k and gamma are then applied to
- `language`: a sibling that shares the tower but has another, larger language model (the
  paper's LLaVA-1.5-7B -> 13B), and
- `tower`: a sibling whose tower was trained further end to end (the paper's LLaVA-1.6),
both built by `..variants` (seeded, resumable; in `OUT/models/` unless
`--siblings DIR` names a folder that holds them). Every model is scored on the same test
images, clean and unlearned, with the paper's metrics. Beside them the report gives what
explains the result: how far each tower's activations at the SAE's layer moved from the
source's, and how well the SAE still reconstructs them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from sauce_jax.errors import ConfigError

from ..benchmark import Evaluation, make_suite, task_table
from ..render import render_many
from ..sauce import DemoConfig, Prepared, load_model, prepare, quick_demo
from ..training import RecipeConfig
from ..variants import SiblingConfig, language_sibling, tower_sibling
from ..world import generic_stream
from .. import runs

TARGETS = ("source", "language", "tower")
COLUMNS = ("UA_g", "UA_d", "IRA", "CRA", "utility")


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)
    siblings: SiblingConfig = dataclasses.field(default_factory=SiblingConfig)
    mode: str = "reconstruct"  # the paper's intervention
    n_drift: int = 200  # generic images the towers' activations are compared on

    def __post_init__(self):
        from ..sauce import MODES

        if self.mode not in MODES:
            raise ConfigError(f"transfer mode {self.mode!r} is not one of {MODES}")
        if self.n_drift < 1:
            raise ConfigError(f"transfer n_drift={self.n_drift} must be >= 1")


def quick_config(concepts=None, seed: int = 0) -> TransferConfig:
    """CI-sized: the reduced demo and siblings trained for a handful of steps (they barely
    answer; what is tested is the plumbing and the towers' drift, not their accuracy)."""
    siblings = SiblingConfig(language=RecipeConfig(seed=1, images=96, lm_steps=4, focus_steps=2,
                                                   checkpoint_every=2, workers=1),
                             tower_images=64, tower_steps=3, tower_batch=8, tower_lr=1e-3, val_images=8)
    return TransferConfig(demo=quick_demo(concepts or ("heart", "blue"), seed), siblings=siblings, n_drift=16)


def build_siblings(folder: Path, config: TransferConfig, *, base_dir=None, device: str = "cpu",
                   progress: bool = True) -> dict[str, Path]:
    """Train (or find) both siblings under `folder`; their model folders by target name."""
    log = print if progress else (lambda *_: None)
    return {"language": language_sibling(folder / "language", config.siblings, base_dir=base_dir, device=device,
                                         log=log),
            "tower": tower_sibling(folder / "tower", config.siblings, base_dir=base_dir, device=device, log=log)}


def tower_agreement(source, target, sae, layer: int, specs) -> dict:
    """How the target tower's activations at `layer` relate to the source's on the same images:
    relative L2 distance and mean cosine per token, and the SAE's explained variance and L0 on
    each (the SAE was fit to the source)."""
    import jax.numpy as jnp

    from sauce_jax import sae as sae_lib
    from sauce_jax.image_processor import preprocess

    images = list(render_many(specs))
    acts = {}
    for name, encoder in (("source", source), ("target", target)):
        hidden = encoder.hidden_state(preprocess(images, encoder), layer)  # [N, T, D]
        acts[name] = np.asarray(hidden, np.float64).reshape(-1, hidden.shape[-1])  # [N * T, D]
    a, b = acts["source"], acts["target"]
    cosine = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    out = {"relative_l2": float(np.linalg.norm(b - a) / np.linalg.norm(a)), "mean_cosine": float(cosine.mean())}
    for name, x in acts.items():
        fwd = sae_lib.forward(sae.params, jnp.asarray(x, jnp.float32), sae.config)
        residual = x - np.asarray(fwd.x_hat, np.float64)
        out[f"sae_explained_variance_{name}"] = float(1 - np.sum(residual ** 2) / np.sum((x - x.mean(0)) ** 2))
        out[f"sae_l0_{name}"] = float(np.mean(np.sum(np.asarray(fwd.z) != 0, axis=1)))
    return {k: round(v, 4) for k, v in out.items()}


def _score_target(out: Path, name: str, model_dir, prepared: Prepared, config: TransferConfig,
                  progress: bool) -> dict:
    """Clean and SAUCE metrics of one model on the test split (one cached part per concept)."""
    from sauce_jax.intervention import unlearn

    demo = config.demo
    if name == "source":
        encoder, layer, model = prepared.encoder, prepared.layer, prepared.model
    else:
        _, _, encoder, layer, model = load_model(model_dir)
    if layer != prepared.layer:
        raise ConfigError(f"{name} model reads hidden state {layer}, the SAE was trained on {prepared.layer}")
    evaluation = None
    rows = {"clean": [], "SAUCE": []}
    for concept in demo.concepts:
        def compute(concept=concept):
            nonlocal evaluation
            if evaluation is None:
                evaluation = Evaluation(model, make_suite(demo.concepts, seed=demo.seed, split="test",
                                                          n_forget=demo.n_test, n_pool_per_concept=demo.n_pool,
                                                          n_perception=demo.n_perception))
            features = prepared.features(concept, config.mode)
            edited = unlearn(encoder, prepared.sae, features, layer=layer, gamma=features.gamma, mode=config.mode)
            return {"clean": evaluation.run(concept), "SAUCE": evaluation.run(concept, edited)}

        part = runs.cached(out / "parts" / f"{name}-{concept}.json", compute)
        for key, results in rows.items():
            results.append(part[key])
        runs.say(progress, f"  {name} {concept}: UA_d {part['SAUCE']['UA_d']['value']} "
                             f"UA_g {part['SAUCE']['UA_g']['value']}")
    agreement = runs.cached(out / "parts" / f"{name}-agreement.json", lambda: tower_agreement(
        prepared.encoder, encoder, prepared.sae, prepared.layer,
        generic_stream(config.n_drift, seed=demo.seed, stream="transfer-drift")))
    return {"model": str(model_dir) if model_dir else "shipped", "per_concept": rows,
            "table": {key: task_table(results) for key, results in rows.items()}, "tower": agreement}


def run(out_dir: str | Path, config: TransferConfig | None = None, *, model_dir=None, sae_dir=None,
        siblings_dir=None, device: str = "cpu", progress: bool = True) -> dict:
    """Run (or resume) the experiment; returns what `results.json` holds."""
    config = config or TransferConfig()
    out = Path(out_dir)
    runs.check_same_run(out, "transfer", config)
    t0 = time.time()
    runs.say(progress, "[1/3] SAUCE on the source model")
    prepared = prepare(out, config.demo, model_dir=model_dir, sae_dir=sae_dir, progress=progress)
    runs.say(progress, "[2/3] the sibling models")
    dirs = {"source": model_dir, **build_siblings(Path(siblings_dir) if siblings_dir else out / "models", config,
                                                   base_dir=model_dir, device=device, progress=progress)}
    runs.say(progress, "[3/3] each model, clean and with the source's SAE and features")
    targets = {name: _score_target(out, name, dirs[name], prepared, config, progress) for name in TARGETS}
    results = {"config": dataclasses.asdict(config), "chosen": prepared.chosen, "targets": targets,
               "meta": {"seconds_this_run": round(time.time() - t0, 1), "layer": prepared.layer}}
    runs.write_outputs(out, results, report(results))
    plot(results, out / "table4.png")
    return results


def _fmt(value: float, column: str) -> str:
    if value is None or np.isnan(value):
        return "-"
    return f"{value:.1f}" if column == "utility" else f"{100 * value:.1f}"


def report(results: dict) -> str:
    mode = results["config"]["mode"]
    chosen = results["chosen"].get(mode, {})
    lines = ["# Transfer of an SAE and its feature sets (Table 4)", "",
             (f"SAE, features, k={chosen.get('k')} and gamma={chosen.get('gamma')} ({mode}) all come from the "
              "source model; each other model uses them unchanged. IRA / CRA average the yes/no and the "
              "description rate."), "",
             "| model | variant | task | " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---|" * len(COLUMNS)]
    for name, target in results["targets"].items():
        for variant, table in target["table"].items():
            for task, values in table.items():
                lines.append(f"| {name} | {variant} | {task} | " + " | ".join(_fmt(values[c], c) for c in COLUMNS)
                             + " |")
    lines += ["", "## The towers at the SAE's layer", "",
              "| model | relative L2 to source | mean cosine | SAE explained variance | SAE L0 |", "|---|---|---|---|---|"]
    for name, target in results["targets"].items():
        t = target["tower"]
        lines.append(f"| {name} | {t['relative_l2']:.4f} | {t['mean_cosine']:.4f} | "
                     f"{t['sae_explained_variance_target']:.3f} (source {t['sae_explained_variance_source']:.3f}) | "
                     f"{t['sae_l0_target']:.1f} |")
    lines += ["", "## Clean accuracy of each model", ""]
    for name, target in results["targets"].items():
        clean = target["per_concept"]["clean"]
        d = np.mean([r["clean_d"]["value"] for r in clean if r["clean_d"]["value"] is not None] or [np.nan])
        g = np.mean([r["clean_g"]["value"] for r in clean if r["clean_g"]["value"] is not None] or [np.nan])
        lines.append(f"- {name} ({target['model']}): says yes on {100 * d:.1f}% of the concepts' test images, "
                     f"names the concept in {100 * g:.1f}% of their descriptions; UA counts only those cases.")
    lines += ["", f"Run time: {results['meta']['seconds_this_run']:.0f} s."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ("UA_g", "UA_d", "IRA", "CRA")
    tasks = sorted({t for target in results["targets"].values() for t in target["table"]["SAUCE"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    width = 0.8 / len(results["targets"])
    for ax, task in zip(axes[0], tasks):
        for i, (name, target) in enumerate(results["targets"].items()):
            values = [100 * target["table"]["SAUCE"].get(task, {}).get(c, np.nan) for c in cols]
            ax.bar(np.arange(len(cols)) + i * width, values, width, label=name)
        ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, cols)
        ax.set_ylim(0, 105)
        ax.set_title(f"SAUCE transferred, {task}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
