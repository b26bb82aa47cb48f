"""What the ConceptWorld experiments share: the SAUCE setup (model, SAE, feature sets, the
validation-chosen k and gamma), resumable parts and run-folder checks (their common options are
in `sauce_jax.cli.common`).

Every experiment writes into one run folder: `config.json` (a rerun with another config is
refused), `parts/*.json` (each finished unit of work, written atomically; a rerun skips it),
`results.json`, `report.md` and its figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sauce_jax.errors import ConfigError

from ..benchmark import Model
from ..demo import (
    DemoConfig,
    choose_hyperparameters,
    select_all,
    train_concept_sae,
)


def quick_demo(concepts=None, seed: int = 0) -> DemoConfig:
    """The CI-sized SAUCE setup: few images everywhere, one point in the k / gamma grid."""
    demo = DemoConfig(seed=seed, sae_images=1500, n_select=40, n_val=8, n_test=16, n_pool=2, n_perception=30,
                      k_grid=(32,), gamma_grid=(-1.0,))
    return dataclasses.replace(demo, concepts=tuple(concepts)) if concepts else demo


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


def load_model(model_dir=None):
    """(llava, processor, encoder, layer, Model) of a ConceptWorld LLaVA (default: the shipped one)."""
    from sauce_jax.loading import load_encoder

    from .. import vlm

    llava, processor = vlm.load(model_dir)
    encoder = load_encoder(llava)
    layer = encoder.layer_index(llava.config.vision_feature_layer)
    return llava, processor, encoder, layer, Model(llava, processor, encoder)


def prepare(out: str | Path, demo: DemoConfig, *, model_dir=None, sae_dir=None, progress: bool = True,
            choose: bool = True) -> Prepared:
    """The demo's SAUCE path, resumable: the SAE (`out/sae_run`, resumes an interrupted run;
    or the trained one at `sae_dir`, e.g. a demo run's `sae_run/sae`), each concept's features
    (eq. 4 on its train split) and, with `choose`, k and gamma per mode on the validation split
    (`out/sauce_chosen.json`). A rerun reuses all three."""
    from sauce_jax.errors import InputError
    from sauce_jax.sae_io import load_sae

    out = Path(out)
    llava, processor, encoder, layer, model = load_model(model_dir)
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


def cached(path: str | Path, compute: Callable[[], Any]) -> Any:
    """`compute()`'s JSON-able result, stored at `path` the first time (atomically: the file is
    complete or absent) and read back on every later call: how a long run resumes."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=_jsonable))
    os.replace(tmp, path)
    return json.loads(path.read_text())


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def check_same_run(out: str | Path, name: str, config) -> None:
    """Refuse a run folder that holds this experiment under another config (or another experiment)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    mine = {"experiment": name, "config": json.loads(json.dumps(dataclasses.asdict(config), default=str))}
    if path.is_file() and json.loads(path.read_text()) != mine:
        raise ConfigError(f"{out} holds another run ({path}: not `{name}` with this config); use a new folder")
    path.write_text(json.dumps(mine, indent=1))


def write_outputs(out: str | Path, results: dict, report: str) -> None:
    """results.json and report.md of a finished experiment."""
    out = Path(out)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_jsonable))
    (out / "report.md").write_text(report)


def say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)
