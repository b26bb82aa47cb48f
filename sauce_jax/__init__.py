"""sauce-jax: selective concept unlearning in vision encoders with sparse autoencoders, in JAX.

Everything a user calls is importable from here. Submodules load on first use, so
`import sauce_jax` (and the CLI's `--help`) stays fast.
"""

from __future__ import annotations

import importlib

from sauce_jax.errors import CheckpointError, ConfigError, InputError, SauceError

__version__ = "0.1.0"

_LAZY = {
    "load_encoder": "sauce_jax.loading",
    "VisionEncoder": "sauce_jax.encoder",
    "EncoderConfig": "sauce_jax.encoder",
    "EncoderOutput": "sauce_jax.encoder",
    "Hook": "sauce_jax.encoder",
    "preprocess": "sauce_jax.image_processor",
    "PreprocessConfig": "sauce_jax.image_processor",
    "SAE": "sauce_jax.sae",
    "SAEConfig": "sauce_jax.sae",
    "load_sae": "sauce_jax.sae_io",
    "save_sae": "sauce_jax.sae_io",
    "score_features": "sauce_jax.scoring",
    "select_features": "sauce_jax.scoring",
    "score_against_others": "sauce_jax.scoring",
    "specific_features": "sauce_jax.scoring",
    "replacement_targets": "sauce_jax.scoring",
    "image_activations": "sauce_jax.scoring",
    "select_one_vs_rest": "sauce_jax.scoring",
    "control_sets": "sauce_jax.scoring",
    "FeatureSet": "sauce_jax.scoring",
    "unlearn": "sauce_jax.intervention",
    "train_or_load": "sauce_jax.train.reuse",
    "train_sae": "sauce_jax.train.loop",
    "train_saes": "sauce_jax.train.loop",
    "TrainConfig": "sauce_jax.train.config",
    "per_image_ids": "sauce_jax.intervention",
    "torch_hook": "sauce_jax.torch_bridge",
    "to_torch": "sauce_jax.torch_bridge",
    "export_unlearned": "sauce_jax.export",
}

__all__ = ["SauceError", "ConfigError", "CheckpointError", "InputError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sauce_jax' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
