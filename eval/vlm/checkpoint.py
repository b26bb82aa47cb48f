"""What every VLM answerer checks before it loads a checkpoint: the folder, its model type,
the batch size and the PyTorch dtype, each refused with an error naming the culprit."""

from __future__ import annotations

import os
from pathlib import Path

from sauce_jax.errors import CheckpointError, ConfigError

DTYPES = ("float32", "bfloat16", "float16")


def checked_checkpoint(checkpoint: str | os.PathLike, model_type: str, class_name: str, batch_size: int,
                       dtype: str):
    """(directory, torch dtype) of a `model_type` checkpoint folder to load with `class_name`."""
    import torch

    from sauce_jax.ports.weights import read_json

    directory = Path(checkpoint)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{str(directory)!r} is not a checkpoint directory (no config.json)")
    found = read_json(directory / "config.json").get("model_type")
    if found != model_type:
        raise ConfigError(f"{str(directory)!r} is a {found!r} checkpoint; this needs a {model_type} "
                          f"({class_name}) directory")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return directory, getattr(torch, dtype)
