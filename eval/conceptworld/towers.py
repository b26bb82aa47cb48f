"""The ConceptWorld models that ship, by the name of how their tower was trained.

- `dense` (the default, `model/`): stage 1 supervises every patch token and the class token
  with concept labels, at the last hidden state, which is the layer the LLaVA reads and SAUCE's
  SAE hooks. Concepts are readable per token there by construction.
- `image` (`model_image/`): stage 1 supervises the class token only, with the image's concept
  labels (`RecipeConfig(tower_labels="image")`); no patch token is ever given a concept label,
  so whatever SAUCE finds per token at that layer the tower learnt on its own.

Every ConceptWorld command takes `--tower NAME` (or `--model DIR` for any other folder).
"""

from __future__ import annotations

from pathlib import Path

from sauce_jax.errors import ConfigError

from .vlm import SHIPPED

TOWERS = {"dense": SHIPPED, "image": SHIPPED.parent / "model_image"}
DEFAULT_TOWER = "dense"


def tower_dir(name: str) -> Path:
    """The model folder of the shipped tower `name` (one of `TOWERS`)."""
    if name not in TOWERS:
        raise ConfigError(f"unknown ConceptWorld tower {name!r}; choose one of {', '.join(TOWERS)}")
    return TOWERS[name]


def resolve_model_dir(model_dir=None, tower: str | None = None):
    """The folder to load: `model_dir`, or the shipped `tower`'s, or None (the default model).
    Both at once is refused, since they would name two models."""
    if tower is None:
        return model_dir
    if model_dir is not None:
        raise ConfigError(f"give a model folder ({model_dir}) or a tower ({tower}), not both")
    return tower_dir(tower)
