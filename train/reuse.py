"""Train an SAE once per run folder: every later call loads what the first one finished."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sauce_jax.sae import SAE
from sauce_jax.train.loop import train_sae


def finished_sae(out_dir: str | Path) -> Path | None:
    """The SAE folder (SAELens format) a finished run left in `out_dir`, or None."""
    folder = Path(out_dir) / "sae"
    return folder if (folder / "cfg.json").is_file() else None


def train_or_load(out_dir: str | Path, *, progress: bool = True, lazy: Callable[[], dict[str, Any]] | None = None,
                  **train_sae_kwargs) -> SAE:
    """The SAE of run folder `out_dir`: loaded when an earlier call finished it, else trained
    by `train_sae(out_dir, **train_sae_kwargs, **lazy())`, resuming from the folder's latest
    checkpoint so that an interrupted run loses at most the steps since that checkpoint.
    `lazy` makes the arguments that cost time to build (images to render, say) only when
    training is needed.

    Nothing checks that a finished SAE was trained with these arguments: give each setting its
    own folder (e.g. named by a hash of the settings)."""
    from sauce_jax.sae_io import load_sae

    done = finished_sae(out_dir)
    if done is not None:
        if progress:
            print(f"reusing the SAE in {Path(out_dir)}")
        return load_sae(done)
    return train_sae(out_dir, resume=True, progress=progress, **train_sae_kwargs, **(lazy() if lazy else {}))
