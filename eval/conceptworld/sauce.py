"""SAUCE on ConceptWorld: the one pipeline the demo, `table2` and every experiment share.

1. `train_concept_sae`: an SAE on every token of the layer the LLaVA reads, over the generic
   stream (streamed through `sauce_jax.train.train_sae`; an interrupted run resumes).
2. `select_all`: each concept's features ranked by eq. 4 on its train split.
3. `choose_hyperparameters`: k and gamma per mode on the validation split only (`objective`).
4. `evaluate_test`: each concept unlearned in turn and scored once on the test split.

`prepare` runs 1-3 resumably into a run folder and returns them as a `Prepared`;
`quick_demo` is the CI-sized `DemoConfig`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sauce_jax.errors import ConfigError
from sauce_jax.intervention import MODES

from .benchmark import Evaluation, Model, make_suite
from .runs import cached, say
from .render import render_many
from .world import check_concepts, concept_split, generic_stream

DEFAULT_CONCEPTS = ("star", "heart", "pool", "court", "red", "blue", "happy", "surprised", "wood", "glass")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The SAUCE setup: concepts, seed, the SAE, selection sizes, the evaluation splits and the
    (k, gamma) grid searched on the validation split."""

    concepts: tuple[str, ...] = DEFAULT_CONCEPTS
    seed: int = 0
    sae_images: int = 4000  # generic-stream images for the SAE (x 37 tokens each)
    expansion: int = 16
    # TopK (Gao et al.) rather than the paper's ReLU-L1: alpha = 8e-5 is tied to the scale of
    # LLaVA's activations, TopK fixes the sparsity (here 16 of 2048 per token) at any scale.
    sae_architecture: str = "topk"
    sae_k: int = 16
    l1_coefficient: float = 8e-5  # for sae_architecture="standard"
    sae_epochs: float = 2.0
    n_select: int = 100  # train-split positives and negatives per concept
    n_val: int = 20
    n_test: int = 50
    n_pool: int = 6  # retain-pool images per concept
    n_perception: int = 100
    k_grid: tuple[int, ...] = (16, 32)
    gamma_grid: tuple[float, ...] = (-1.0, -2.0)

    def __post_init__(self):
        check_concepts(list(self.concepts))
        for name in ("sae_images", "expansion", "n_select", "n_val", "n_test", "n_pool", "n_perception"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo {name}={getattr(self, name)} must be >= 1")
        if not self.k_grid or not self.gamma_grid:
            raise ConfigError("k_grid and gamma_grid must not be empty")


def quick_demo(concepts=None, seed: int = 0) -> DemoConfig:
    """The CI-sized SAUCE setup: few images everywhere, one point in the k / gamma grid."""
    demo = DemoConfig(seed=seed, sae_images=1500, n_select=40, n_val=8, n_test=16, n_pool=2, n_perception=30,
                      k_grid=(32,), gamma_grid=(-1.0,))
    return dataclasses.replace(demo, concepts=tuple(concepts)) if concepts else demo


def train_concept_sae(encoder, out: Path, config: DemoConfig, layer: int, progress: bool):
    """The SAE on every token of `layer` over the generic stream (resumes an interrupted run)."""
    from sauce_jax.sae import SAEConfig
    from sauce_jax.sae_io import load_sae
    from sauce_jax.train import TrainConfig, train_sae

    if (out / "sae" / "cfg.json").is_file():
        return load_sae(out / "sae")
    images = list(render_many(generic_stream(config.sae_images, seed=config.seed)))
    d = encoder.config.hidden_size
    sae_config = SAEConfig(d_in=d, d_sae=config.expansion * d, architecture=config.sae_architecture,
                           k=config.sae_k if config.sae_architecture != "standard" else None,
                           l1_coefficient=config.l1_coefficient)
    train_config = TrainConfig(batch_size=1024, epochs=config.sae_epochs, lr=1e-3, lr_warmup_steps=50,
                               l1_warmup_steps=100, seed=config.seed, log_every=50, checkpoint_every=200)
    resume = (out / "checkpoints").is_dir()
    return train_sae(out, sae_config=sae_config, train_config=train_config, encoder=encoder, images=images,
                     layer=layer, token="all", resume=resume, progress=progress)


def select_all(sae, encoder, config: DemoConfig, layer: int, progress: bool, token: str = "all") -> dict:
    """Each concept's features ranked by eq. 4 on its train split, max(k_grid) of them, scored
    on `token` (see `select_features`)."""
    from sauce_jax.scoring import select_features

    sets = {}
    for concept in tqdm(config.concepts, desc="selection", disable=not progress, leave=False):
        pos = list(render_many(concept_split(concept, "train", config.n_select, seed=config.seed)))
        neg = list(render_many(concept_split(concept, "train", config.n_select, seed=config.seed, positive=False)))
        sets[concept] = select_features(sae, encoder, pos, neg, k=max(config.k_grid), layer=layer, concept=concept,
                                        token=token, batch_size=config.n_select, progress=False)
    say(progress, f"selected features for {len(sets)} concepts")
    return sets


OBJECTIVE = ("UA_d", "UA_g", "IRA_d", "IRA_g", "CRA_d", "CRA_g")


def objective(result: dict) -> float:
    """What the validation split maximises: the mean of the `OBJECTIVE` metrics of one
    `Evaluation.run` result, skipping those it could not score (0 if none could be)."""
    values = [result[name]["value"] for name in OBJECTIVE]
    return float(np.mean([v for v in values if v is not None])) if any(v is not None for v in values) else 0.0


def choose_hyperparameters(model: Model, encoder, sae, sets: dict, config: DemoConfig, layer: int,
                           progress: bool) -> dict:
    """Per mode, the (k, gamma) with the best mean of the paper's four metrics on the validation
    split, each over both prompt kinds (UA_d, UA_g, IRA_d, IRA_g, CRA_d, CRA_g). A grid of one
    point has nothing to choose: it is taken without scoring (val_objective None)."""
    from sauce_jax.intervention import unlearn

    if len(config.k_grid) == len(config.gamma_grid) == 1:
        return {mode: {"k": config.k_grid[0], "gamma": config.gamma_grid[0], "val_objective": None, "grid": {}}
                for mode in MODES}

    suite = make_suite(config.concepts, seed=config.seed, split="val", n_forget=config.n_val,
                       n_pool_per_concept=max(1, config.n_pool // 2), n_perception=config.n_val)
    evaluation = Evaluation(model, suite)
    chosen = {}
    for mode in MODES:
        scores = {}
        grid = list(itertools.product(config.k_grid, config.gamma_grid))
        for k, gamma in tqdm(grid, desc=f"val grid ({mode})", disable=not progress, leave=False):
            results = [evaluation.run(c, unlearn(encoder, sae, sets[c].top(k, gamma), layer=layer,
                                                 gamma=gamma, mode=mode)) for c in config.concepts]
            scores[(k, gamma)] = float(np.mean([objective(r) for r in results]))
            say(progress, f"  val {mode:11s} k={k:3d} gamma={gamma:+.2f}: {scores[(k, gamma)]:.3f}")
        best = max(scores, key=scores.get)
        chosen[mode] = {"k": best[0], "gamma": best[1], "val_objective": round(scores[best], 4),
                        "grid": {f"k={k},gamma={g}": round(v, 4) for (k, g), v in scores.items()}}
    return chosen


def evaluate_test(model: Model, encoder, sae, sets: dict, chosen: dict, config: DemoConfig, layer: int,
                  progress: bool) -> dict:
    """Each concept on the test split: the clean model and SAUCE in every mode with its chosen
    k and gamma; {"original" | "SAUCE <mode>": [one `Evaluation.run` result per concept]}."""
    from sauce_jax.intervention import unlearn

    suite = make_suite(config.concepts, seed=config.seed, split="test", n_forget=config.n_test,
                       n_pool_per_concept=config.n_pool, n_perception=config.n_perception)
    evaluation = Evaluation(model, suite)
    rows = {"original": [], **{f"SAUCE {m}": [] for m in MODES}}
    for concept in tqdm(config.concepts, desc="test", disable=not progress, leave=False):
        rows["original"].append(evaluation.run(concept))
        for mode in MODES:
            k, gamma = chosen[mode]["k"], chosen[mode]["gamma"]
            edited = unlearn(encoder, sae, sets[concept].top(k, gamma), layer=layer, gamma=gamma,
                             mode=mode)
            rows[f"SAUCE {mode}"].append(evaluation.run(concept, edited))
        say(progress, f"  test {concept}: " + ", ".join(
            f"{name} UA_d {r[-1]['UA_d']['value']} IRA_d {r[-1]['IRA_d']['value']}" for name, r in rows.items()))
    return rows


# ------------------------------------------------------------------- prepared, resumable

@dataclasses.dataclass
class Prepared:
    """A ConceptWorld LLaVA with its JAX tower, and SAUCE ready to apply to it."""

    llava: Any  # LlavaForConditionalGeneration (PyTorch)
    processor: Any
    encoder: Any  # sauce_jax VisionEncoder of the LLaVA's tower
    layer: int  # hidden-state index the LLaVA reads and the SAE was trained on
    model: Model
    sae: Any
    sets: dict  # concept -> FeatureSet, max(k_grid) features, best first
    chosen: dict  # mode -> {"k", "gamma", ...} chosen on the validation split

    def features(self, concept: str, mode: str = "reconstruct", k: int | None = None, gamma: float | None = None):
        """The concept's FeatureSet cut to k with gamma (default: the validation-chosen ones)."""
        k = self.chosen[mode]["k"] if k is None else k
        gamma = self.chosen[mode]["gamma"] if gamma is None else gamma
        return self.sets[concept].top(k, gamma)

    def unlearned(self, concepts, mode: str = "reconstruct", k: int | None = None, gamma: float | None = None,
                  encoder=None):
        """The tower with every concept in `concepts` unlearned at once (the union of their sets)."""
        from sauce_jax.intervention import unlearn

        concepts = [concepts] if isinstance(concepts, str) else list(concepts)
        sets = [self.features(c, mode, k, gamma) for c in concepts]
        gamma = self.chosen[mode]["gamma"] if gamma is None else gamma
        return unlearn(encoder or self.encoder, self.sae, sets, layer=self.layer, gamma=gamma, mode=mode)


def load_model(model_dir=None, *, tower: str | None = None):
    """(llava, processor, encoder, layer, Model) of a ConceptWorld LLaVA: the one at `model_dir`,
    or the shipped `tower` (`towers.TOWERS`), by default the shipped dense one."""
    from sauce_jax.loading import load_encoder

    from . import vlm
    from .towers import resolve_model_dir

    llava, processor = vlm.load(resolve_model_dir(model_dir, tower))
    encoder = load_encoder(llava)
    layer = encoder.layer_index(llava.config.vision_feature_layer)
    return llava, processor, encoder, layer, Model(llava, processor, encoder)


def prepare(out: str | Path, demo: DemoConfig, *, model_dir=None, tower: str | None = None, sae_dir=None,
            progress: bool = True, choose: bool = True) -> Prepared:
    """The demo's SAUCE path, resumable: the SAE (`out/sae_run`, resumes an interrupted run;
    or the trained one at `sae_dir`, e.g. a demo run's `sae_run/sae`), each concept's features
    (eq. 4 on its train split) and, with `choose`, k and gamma per mode on the validation split
    (`out/sauce_chosen.json`). A rerun reuses all three. The model is `load_model(model_dir,
    tower=tower)`'s."""
    from sauce_jax.errors import InputError
    from sauce_jax.sae_io import load_sae

    out = Path(out)
    llava, processor, encoder, layer, model = load_model(model_dir, tower=tower)
    if sae_dir is not None:
        sae = load_sae(sae_dir)
        if sae.config.d_in != encoder.config.hidden_size:
            raise InputError(f"SAE at {sae_dir} reads d_in={sae.config.d_in} activations; this model's tower "
                             f"has width {encoder.config.hidden_size}")
    else:
        sae = train_concept_sae(encoder, out / "sae_run", demo, layer, progress)
    sets = _feature_sets(out / "feature_sets", sae, encoder, demo, layer, progress)
    chosen = {}
    if choose:
        chosen = cached(out / "sauce_chosen.json",
                        lambda: choose_hyperparameters(model, encoder, sae, sets, demo, layer, progress))
    return Prepared(llava, processor, encoder, layer, model, sae, sets, chosen)


def _feature_sets(folder: Path, sae, encoder, demo: DemoConfig, layer: int, progress: bool) -> dict:
    """Each concept's FeatureSet, selected once and kept as `folder/<concept>.json` (a set made
    for another SAE is refused by its fingerprint)."""
    from sauce_jax.scoring import FeatureSet

    sets = {}
    for concept in demo.concepts:
        path = folder / f"{concept}.json"
        if path.is_file():
            sets[concept] = FeatureSet.load(path)
            sets[concept].check_sae(sae)
    missing = tuple(c for c in demo.concepts if c not in sets)
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        for concept, features in select_all(sae, encoder, dataclasses.replace(demo, concepts=missing), layer,
                                            progress).items():
            tmp = features.save(folder / f"{concept}.tmp")
            os.replace(tmp, folder / f"{concept}.json")  # complete or absent
            sets[concept] = features
    return {c: sets[c] for c in demo.concepts}
