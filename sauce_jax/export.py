"""`export_unlearned`: a transformers checkpoint with a concept unlearned, loadable without sauce-jax.

The exported directory is the checkpoint's own (its weights, config, processor and tokenizer
files) plus three things: the SAE, the feature ids and gamma as `sauce.*` buffers in the
weights file; a `sauce` entry in config.json (SAE shape, mode, token mask, hidden-state index,
concepts); and `modeling_sauce.py` (a copy of `sauce_jax.modeling_sauce`), named by the
config's `auto_map`, whose class extends the checkpoint's own and hooks the intervention on
its vision tower. `AutoModelForImageTextToText.from_pretrained(dir, trust_remote_code=True)`
(`AutoModel` for a vision-only checkpoint) gives the unlearned model.

Everything is checked before anything is written, and the directory is written under a
temporary name next to `out` and renamed at the end: an interrupted export leaves no
half-written model behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sauce_jax.errors import CheckpointError, ConfigError, InputError
from sauce_jax.intervention import WHERE, check_mode, resolve_edit
from sauce_jax.permissions import as_if_new
from sauce_jax.sae import SAE
from sauce_jax.scoring import FeatureSet

__all__ = ["export_unlearned"]

# Files of a checkpoint that the export rewrites itself (weights and configs); every other
# top-level file (tokenizer, processor, chat template, README) is copied as it is.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")
_WRITTEN = ("config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
MODELING_FILE = "modeling_sauce.py"


def _load_sae(sae: Any) -> SAE:
    if isinstance(sae, SAE):
        return sae
    from sauce_jax.sae_io import load_sae

    return load_sae(sae)


def _feature_sets(features: Any) -> Any:
    """FeatureSet JSON paths become FeatureSets; FeatureSets and raw ids pass through."""
    if isinstance(features, (str, os.PathLike)):
        return FeatureSet.load(features)
    if isinstance(features, Sequence) and features and all(isinstance(f, (str, os.PathLike, FeatureSet))
                                                          for f in features):
        return [f if isinstance(f, FeatureSet) else FeatureSet.load(f) for f in features]
    return features


def _tower_shape(config: Any) -> tuple[int, int]:
    """(width, number of hidden states) of the vision tower a transformers config describes."""
    vision = getattr(config, "vision_config", None) or config
    states = vision.num_hidden_layers + 1 + int(getattr(vision, "num_global_layers", 0) or 0)
    return int(vision.hidden_size), int(states)


def _checkpoint_config(checkpoint: Path, exports: dict):
    if not (checkpoint / "config.json").is_file():
        raise CheckpointError(f"{str(checkpoint)!r} is not a checkpoint directory (no config.json)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(checkpoint)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot read the config of {str(checkpoint)!r}: {exc}") from exc
    if config.model_type not in exports:
        raise ConfigError(f"{str(checkpoint)!r} is a {config.model_type!r} checkpoint without a vision tower "
                          f"sauce-jax can export; export takes {sorted(exports)} checkpoints")
    if config.model_type == "llava" and config.vision_config.model_type not in ("clip_vision_model",
                                                                                 "siglip_vision_model"):
        raise ConfigError(f"{str(checkpoint)!r}: a LLaVA with a {config.vision_config.model_type!r} tower; "
                          "export takes CLIP and SigLIP towers")
    if getattr(config, "sauce", None) is not None:
        raise ConfigError(f"{str(checkpoint)!r} is already a sauce-jax export; export from the original checkpoint")
    return config


def _other_files(checkpoint: Path) -> list[Path]:
    """The checkpoint's top-level files the export copies unchanged."""
    return [p for p in sorted(checkpoint.iterdir())
            if p.is_file() and p.name not in _WRITTEN and not p.name.endswith(_WEIGHT_SUFFIXES)]


def _load_quietly(cls: type, checkpoint: Path, config: Any):
    """The checkpoint as `cls`. transformers' load report is silenced: it would list the
    `sauce.*` buffers as missing from the checkpoint (they are filled right after loading)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return cls.from_pretrained(checkpoint, config=config, dtype="auto")
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load {str(checkpoint)!r} as {cls.__name__}: {exc}") from exc
    finally:
        logging.set_verbosity(level)


def export_unlearned(checkpoint: str | os.PathLike, sae: Any, features: Any, out: str | os.PathLike, *,
                     layer: int | None = None, gamma: float | None = None, mode: str = "reconstruct",
                     where: str = "all", threshold: float | None = None, targets: Any = None,
                     overwrite: bool = False) -> Path:
    """Write a transformers model directory: `checkpoint` with the concept(s) unlearned.

    Args:
      checkpoint: a LLaVA (CLIP or SigLIP tower) or Mllama checkpoint directory, or a
        vision-only CLIP, SigLIP or DINOv2 one (save_pretrained layout).
      sae: an `SAE` or its directory (trained on `layer` of this checkpoint's tower).
      features: a FeatureSet, its JSON file, a list of them (their union), or feature ids [k].
      out: the directory to create.
      layer, gamma: hidden-state index and scale; default to the FeatureSet's (else -2 and -0.5).
      mode: "reconstruct" (the paper), "delta", "gated" or "replace" (see `sauce_jax.unlearn`);
        where: "all", "patch" or "cls" tokens.
      threshold, targets: the gate threshold (gated, replace) and the target latents (replace:
        aligned with the ids, a {feature id: target} mapping, or "zero"), as `unlearn` takes them.
      overwrite: replace `out` if it exists (else that is an error).

    Returns `out`. Load it with `AutoModelForImageTextToText.from_pretrained(out,
    trust_remote_code=True)` (vision-only: `AutoModel`); its forward and `generate` apply the
    intervention in PyTorch, as `sauce_jax.unlearn` does in JAX.
    """
    try:
        import torch

        from sauce_jax import modeling_sauce
        from sauce_jax.torch_bridge import intervention_module
    except ImportError as exc:
        raise ConfigError("export writes a PyTorch model: pip install 'sauce-jax[torch]'") from exc

    checkpoint, out = Path(checkpoint), Path(out)
    # -- every check first: nothing is written until they all pass ----------------------------
    check_mode(mode)
    if where not in WHERE:
        raise ConfigError(f"token mask {where!r} is not one of {WHERE}")
    config = _checkpoint_config(checkpoint, modeling_sauce.EXPORTS)
    sae = _load_sae(sae)
    sets = _feature_sets(features)
    # ConfigError for another SAE's sets, an unknown mode, a non-finite gamma, missing targets
    edit = resolve_edit(sets, sae, mode=mode, gamma=gamma, threshold=threshold, targets=targets)
    if edit.ids.ndim != 1 or edit.gamma.ndim or edit.threshold.ndim:
        raise InputError(f"an exported model applies one feature set, gamma and threshold to every image; got ids "
                         f"of shape {edit.ids.shape}, gamma {edit.gamma.shape}, threshold {edit.threshold.shape}")
    width, num_states = _tower_shape(config)
    if sae.config.d_in != width:
        raise InputError(f"SAE d_in={sae.config.d_in} differs from the width {width} of {str(checkpoint)!r}'s "
                         "vision tower: the SAE was trained on another model")
    layer = edit.layer if layer is None else layer
    layer = -2 if layer is None else layer
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -num_states <= layer < num_states:
        raise ConfigError(f"hidden-state index {layer!r} is out of range for {num_states} hidden states "
                          f"[-{num_states}, {num_states - 1}]")
    if sae.config.has_threshold and "threshold" not in sae.params:
        raise ConfigError("a batchtopk SAE needs its inference 'threshold' to be exported")
    if out.exists() and not overwrite:
        raise ConfigError(f"{str(out)!r} exists; choose another directory or overwrite it (--overwrite)")
    if out.resolve() == checkpoint.resolve():
        raise ConfigError(f"the export would replace its own checkpoint {str(checkpoint)!r}")

    module = intervention_module(sae, edit.ids, edit.gamma, mode, where, threshold=edit.threshold,
                                 targets=edit.targets)
    concepts = [s.concept for s in (sets if isinstance(sets, list) else [sets]) if isinstance(s, FeatureSet)]
    cls, autos = modeling_sauce.EXPORTS[config.model_type]
    config.sauce = dict(module.spec(), layer=int(layer) % num_states, concepts=concepts)
    config.auto_map = {auto: f"{Path(MODELING_FILE).stem}.{cls.__name__}" for auto in autos}
    config.architectures = [cls.__name__]

    # -- write under a temporary name, rename at the end ----------------------------------
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model = _load_quietly(cls, checkpoint, config)
        with torch.no_grad():
            model.sauce.load_state_dict(module.state_dict())
        model.save_pretrained(partial)
        shutil.copyfile(modeling_sauce.__file__, partial / MODELING_FILE)
        for path in _other_files(checkpoint):
            if not (partial / path.name).exists():
                shutil.copy2(path, partial / path.name)
        as_if_new(partial)  # mkdtemp's 0o700 (and safetensors' 0o600) would hide it from a server's user
        if out.exists():  # overwrite: the old export goes only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(partial, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, out)
    except BaseException:  # KeyboardInterrupt too: no half-written directory survives
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out
