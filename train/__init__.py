"""SAE training: the train step, mesh and sharding, activation streaming and caching, metrics.

`train_sae` is the entry point; `make_source` builds its activation stream.
"""

from sauce_jax.train.config import TrainConfig
from sauce_jax.train.loop import TrainingDiverged, make_source, train_sae

__all__ = ["TrainConfig", "TrainingDiverged", "make_source", "train_sae"]
