"""SAUCE's SAE trained to its plateau: held-out reconstruction, sparsity and dead latents at
several optimizer-step budgets and image counts, the SAE-only damage to the VLM at each, and
the budget chosen by reconstruction alone.

    sauce-jax experiment sae-curve --tower dense --out runs/sae-curve-dense

Per image count, one run over that many images of the study SAE's own stream
(`sauce.GENERIC_SAE_STREAM`, disjoint from every seed's splits) is snapshotted at every budget.
The learning rate is constant after its warm-up (`sauce.sae_train_config`) and the batches come
in the same order whatever the total, so the step-b snapshot is the SAE a b-step run ends with.
Each snapshot is scored on every token of `heldout` images of a stream no SAE trains on:
explained variance, L0, and dead latents (never active on those tokens). The SAE-only damage
(reconstruct at gamma 1, nothing edited: `sauce.SAE_ONLY`) is read on the validation splits of
`damage_seeds` with each seed's study concepts, beside the clean model on the same images.

The rule (`choose_budget`): the plateau is the held-out EV at the largest budget, valid only if
that budget gained < `plateau_gain` over half of it; the chosen budget is the smallest within
`plateau_gain` of the plateau with under `max_dead` dead latents. Each image count is one run
folder under `OUT/runs/` (resumable, its snapshots saved as they are reached) and each scored
snapshot one file under `OUT/points/`, so an interrupted run loses nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from sauce_jax.errors import ConfigError

from ..sauce import DemoConfig

HELDOUT_STREAM = "sae-heldout"  # the curve's held-out images: no SAE trains on them, no seed evaluates on them


@dataclasses.dataclass(frozen=True)
class CurveConfig:
    """The grid: budgets (optimizer steps at batch 1,024 tokens) x image counts."""

    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)  # the SAE (architecture, width, k)
    budgets: tuple[int, ...] = (108, 433, 1000, 2500, 5000)
    images: tuple[int, ...] = (1500, 6000)
    heldout: int = 200  # held-out images whose every token scores each snapshot
    damage_seeds: tuple[int, ...] = (7, 8, 9, 10)  # validation seeds of the SAE-only damage (none: skipped)
    plateau_gain: float = 0.01
    max_dead: float = 0.05
    seed: int = 0  # the generic SAE's draw (its stream and its initialisation)

    def __post_init__(self):
        if not self.budgets or any(not isinstance(b, int) or b < 1 for b in self.budgets):
            raise ConfigError(f"sae-curve budgets {self.budgets} must be non-empty integers >= 1")
        from ..sauce import SAE_WARMUP_STEPS

        if min(self.budgets) < SAE_WARMUP_STEPS:
            raise ConfigError(f"sae-curve budgets {self.budgets} must be >= the {SAE_WARMUP_STEPS}-step warm-up: a "
                              "shorter run warms up over its own length, so no snapshot of a longer run is its SAE")
        if not self.images or any(not isinstance(n, int) or n < 1 for n in self.images):
            raise ConfigError(f"sae-curve images {self.images} must be non-empty integers >= 1")
        if self.heldout < 1:
            raise ConfigError(f"sae-curve heldout={self.heldout} must be >= 1")
        if not 0 < self.plateau_gain < 1 or not 0 < self.max_dead < 1:
            raise ConfigError(f"sae-curve plateau_gain={self.plateau_gain} and max_dead={self.max_dead} must lie "
                              "in (0, 1)")
        from .table2_seeds import VALIDATION_SEEDS

        spent = [s for s in self.damage_seeds if s not in VALIDATION_SEEDS]
        if spent:
            raise ConfigError(f"sae-curve damage seeds {spent} are not validation seeds {sorted(VALIDATION_SEEDS)}")


def quick_config() -> CurveConfig:
    """The CI-sized curve: two small budgets, one image count, one damage seed."""
    demo = dataclasses.replace(DemoConfig(), sae_images=64)
    # Past the 50-step warm-up: shorter totals shorten the warm-up, and the snapshots would not be
    # the shorter runs' SAEs.
    return CurveConfig(demo=demo, budgets=(51, 102), images=(64,), heldout=8, damage_seeds=(7,))


def choose_budget(points: dict[int, dict], plateau_gain: float = 0.01, max_dead: float = 0.05) -> dict:
    """The budget rule over one image count's points {budget: {"ev", "dead", ...}}: {"plateau"
    (EV at the largest budget), "valid" (that budget gained < plateau_gain over half of it, or
    None when half of it was not measured), "chosen" (the smallest budget within plateau_gain of
    the plateau with dead < max_dead; None if none is)}."""
    budgets = sorted(points)
    top = budgets[-1]
    plateau = points[top]["ev"]
    half = points.get(top // 2)
    valid = None if half is None else bool(plateau - half["ev"] < plateau_gain)
    chosen = next((b for b in budgets if points[b]["ev"] >= plateau - plateau_gain and points[b]["dead"] < max_dead),
                  None)
    return {"plateau": plateau, "largest": top, "valid": valid, "chosen": chosen}


def heldout_activations(encoder, layer: int, n: int, seed: int = 0) -> np.ndarray:
    """Every token of `n` held-out images at `layer`: [n x T, d_in] float32."""
    from ..render import render_many
    from ..world import generic_stream
    from sauce_jax.image_processor import preprocess

    specs = generic_stream(n, seed=seed, stream=HELDOUT_STREAM)
    out = []
    for start in range(0, n, 256):
        px = preprocess(list(render_many(specs[start:start + 256])), encoder)
        out.append(np.asarray(encoder.hidden_state(px, layer), np.float32).reshape(-1, encoder.config.hidden_size))
    return np.concatenate(out)


def score_snapshot(params, sae_config, heldout: np.ndarray) -> dict:
    """Held-out explained variance, L0 (mean active latents per token) and dead latents (the share
    never active on those tokens)."""
    from sauce_jax.statistics import core_metrics

    m = core_metrics(params, sae_config, [heldout])
    return {"ev": round(m["explained_variance"], 5), "l0": round(m["l0"], 3), "dead": round(1.0 - m["frac_alive"], 5),
            "mse": m["mse"], "tokens": m["tokens"]}


def _snapshot_path(out: Path, images: int, budget: int) -> Path:
    return out / "snapshots" / f"images{images}-steps{budget}.npz"


def train_snapshots(encoder, out: Path, config: CurveConfig, layer: int, images: int, progress: bool) -> None:
    """One run over `images` stream images to the largest budget, saving params at each budget
    (`OUT/snapshots/`); a budget already saved is not trained for again."""
    import jax

    from sauce_jax.train import train_sae

    from ..render import render_many
    from ..sauce import GENERIC_SAE_STREAM, concept_sae_config, sae_train_config
    from ..world import generic_stream

    wanted = [b for b in config.budgets if not _snapshot_path(out, images, b).is_file()]
    if not wanted:
        return
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    budgets = set(config.budgets)

    def keep(step, params):
        path = _snapshot_path(out, images, step)
        if step in budgets and not path.is_file():
            arrays = {k: np.asarray(v) for k, v in jax.device_get(params).items()}
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)

    run_dir = out / "runs" / f"images{images}"
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    specs = generic_stream(images, seed=config.seed, stream=GENERIC_SAE_STREAM)
    train_sae(run_dir, sae_config=concept_sae_config(encoder, config.demo),
              train_config=sae_train_config(config.demo.sae_epochs, 1e-3, config.seed, steps=max(config.budgets)),
              encoder=encoder, images=list(render_many(specs)), layer=layer, token="all", resume=resume,
              progress=progress, on_step=keep)


def damage(model, encoder, sae, layer: int, seeds, clean_cache: dict) -> dict:
    """The SAE-only row against the clean model on each seed's validation split (the study's
    concepts): per seed the concept means of utility, CRA and HAL_pool, edited and clean.
    `clean_cache` keeps each seed's `Evaluation` (its clean answers) across snapshots."""
    from ..benchmark import Evaluation, headline, selectivity
    from ..sauce import sae_only, validation_suite
    from .table2 import study_config

    out = {}
    for seed in seeds:
        demo = study_config(seed).demo
        if seed not in clean_cache:
            clean_cache[seed] = Evaluation(model, validation_suite(demo))
        evaluation = clean_cache[seed]
        rows = {"clean": [], "sae_only": []}
        alone = sae_only(encoder, sae, None, layer)
        for concept in demo.concepts:
            rows["clean"].append(evaluation.run(concept))
            rows["sae_only"].append(evaluation.run(concept, alone))
        out[str(seed)] = {
            name: {"utility": float(np.mean([headline(r)["utility"] for r in results])),
                   "CRA": float(np.nanmean([headline(r)["CRA"] for r in results])),
                   "HAL_pool": float(np.nanmean([selectivity(r)["HAL_pool"] for r in results]))}
            for name, results in rows.items()}
    return out


def run(out_dir: str | Path, config: CurveConfig | None = None, *, model_dir=None, tower: str | None = None,
        progress: bool = True) -> dict:
    """The whole curve (resumable); returns what `OUT/curve.json` holds."""
    from sauce_jax.sae import SAE

    from ..sauce import concept_sae_config, load_model

    config = config or CurveConfig()
    out = Path(out_dir)
    (out / "points").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _, _, encoder, layer, model = load_model(model_dir, tower=tower)
    sae_config = concept_sae_config(encoder, config.demo)
    heldout = None
    clean_cache: dict = {}
    points: dict[int, dict[int, dict]] = {}
    for images in config.images:
        train_snapshots(encoder, out, config, layer, images, progress)
        points[images] = {}
        for budget in config.budgets:
            path = out / "points" / f"images{images}-steps{budget}.json"
            if not path.is_file():
                if heldout is None:
                    heldout = heldout_activations(encoder, layer, config.heldout)
                with np.load(_snapshot_path(out, images, budget)) as data:
                    params = {k: data[k] for k in data.files}
                point = {"images": images, "steps": budget, **score_snapshot(params, sae_config, heldout)}
                if config.damage_seeds:
                    sae = SAE(params=params, config=sae_config, metadata={"layer": layer})
                    point["damage"] = damage(model, encoder, sae, layer, config.damage_seeds, clean_cache)
                path.write_text(json.dumps(point, indent=1))
                if progress:
                    print(f"images {images} steps {budget}: EV {point['ev']:.4f} L0 {point['l0']:.1f} "
                          f"dead {point['dead']:.3f}", flush=True)
            points[images][budget] = json.loads(path.read_text())
    rules = {images: choose_budget(p, config.plateau_gain, config.max_dead) for images, p in points.items()}
    results = {"config": dataclasses.asdict(config), "tower": tower, "layer": layer,
               "points": {str(n): {str(b): p for b, p in ps.items()} for n, ps in points.items()},
               "rule": {str(n): r for n, r in rules.items()}, "seconds_this_run": round(time.time() - t0, 1)}
    (out / "curve.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "curve.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    """The curve as a table per image count, the damage beside it, and the rule's reading."""
    from ..intervals import t_interval

    lines = [f"# SAE curve ({results.get('tower') or 'model'} tower, hidden state {results['layer']})", "",
             "Held-out: every token of "
             f"{results['config']['heldout']} images no SAE trains on. Damage: the SAE alone (reconstruct, "
             "gamma 1) minus the clean model on the validation splits of seeds "
             f"{', '.join(str(s) for s in results['config']['damage_seeds']) or 'none'} (mean over seeds [95% "
             "t-interval over seeds]; utility in MME points, CRA and HAL_pool in points).", "",
             "| images | steps | held-out EV | L0 | dead % | utility: SAE - clean | CRA: SAE - clean | "
             "HAL_pool: SAE - clean |", "|---|---|---|---|---|---|---|---|"]
    for images, points in results["points"].items():
        for budget, p in sorted(points.items(), key=lambda kv: int(kv[0])):
            d = p.get("damage")
            cells = ["", "", ""]
            if d:
                for i, (name, scale) in enumerate((("utility", 1), ("CRA", 100), ("HAL_pool", 100))):
                    diffs = [[seed["sae_only"][name] - seed["clean"][name]] for seed in d.values()]
                    found = t_interval(np.array(diffs, float))  # over seeds
                    cells[i] = "-" if found["mean"] is None else f"{scale * found['mean']:+.1f}" + (
                        "" if found["lo"] is None else f" [{scale * found['lo']:+.1f}, {scale * found['hi']:+.1f}]")
            lines.append(f"| {images} | {budget} | {p['ev']:.4f} | {p['l0']:.1f} | {100 * p['dead']:.2f} | "
                         + " | ".join(cells) + " |")
    lines += ["", "| images | plateau EV (largest budget) | gain over half of it < "
              f"{results['config']['plateau_gain']} | chosen budget |", "|---|---|---|---|"]
    for images, rule in results["rule"].items():
        valid = {True: "yes", False: "no: not a plateau", None: "half not measured"}[rule["valid"]]
        lines.append(f"| {images} | {rule['plateau']:.4f} (steps {rule['largest']}) | {valid} | {rule['chosen']} |")
    return "\n".join(lines) + "\n"
