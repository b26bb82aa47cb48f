"""SAE training: the train step, mesh and sharding, activation streaming and caching, metrics.

`train_sae` is the entry point; `make_source` builds its activation stream; `train_saes` trains
several SAEs (layers, sizes) from one pass of the images.
"""

from sauce_jax.train.config import TrainConfig
from sauce_jax.train.loop import Setting, TrainingDiverged, make_source, sweep_settings, train_sae, train_saes

__all__ = ["Setting", "TrainConfig", "TrainingDiverged", "make_source", "sweep_settings", "train_sae", "train_saes"]
