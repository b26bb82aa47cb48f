"""SAE training: the train step, mesh and sharding, activation streaming and caching, metrics.

`train_sae` is the entry point; `train_or_load` trains once per run folder and loads the SAE
after; `make_source` builds its activation stream; `train_saes` trains several SAEs (layers,
sizes) from one pass of the images. The names load on first use, so `sauce_jax.train.config`
(what the command line reads for its defaults) does not load jax.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "TrainConfig": "sauce_jax.train.config",
    "Setting": "sauce_jax.train.loop",
    "TrainingDiverged": "sauce_jax.train.loop",
    "make_source": "sauce_jax.train.loop",
    "sweep_settings": "sauce_jax.train.loop",
    "train_sae": "sauce_jax.train.loop",
    "train_saes": "sauce_jax.train.loop",
    "train_or_load": "sauce_jax.train.reuse",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sauce_jax.train' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
