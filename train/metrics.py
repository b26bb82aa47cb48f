"""Feature statistics of a trained SAE (paper eq. 7, 8), their Figure 4 histograms, and the
JSONL training log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from sauce_jax import sae as sae_lib


def feature_statistics(params, config, activations: Iterable[np.ndarray], batch_size: int = 4096):
    """FS_i (share of activations where z_i != 0) and FMAV_i (mean z_i where active), over
    every row of every array in `activations` ([n, d_in] each; the paper: one row per image)."""
    encode = jax.jit(lambda p, x: sae_lib.encode(p, x, config))
    count = jnp.zeros((config.d_sae,), jnp.float32)
    total = jnp.zeros((config.d_sae,), jnp.float32)
    rows = 0
    for acts in activations:
        for start in range(0, len(acts), batch_size):
            z = encode(params, jnp.asarray(acts[start : start + batch_size], jnp.float32))  # [n, d_sae]
            count = count + jnp.sum(z != 0, axis=0)
            total = total + jnp.sum(z, axis=0)
            rows += len(z)
    count, total = np.asarray(count), np.asarray(total)
    fs = count / max(rows, 1)
    fmav = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return fs, fmav, rows


def plot_feature_statistics(fs: np.ndarray, fmav: np.ndarray, path: str | Path) -> Path:
    """The paper's Figure 4: log10 histograms of FS and FMAV over the features that ever fire."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = fs > 0
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, values, title in ((axes[0], fs[live], "feature sparsity (FS)"),
                              (axes[1], fmav[live], "mean activation when active (FMAV)")):
        if values.size:
            ax.hist(np.log10(values), bins=50, color="#3a6ea5")
        ax.set_xlabel(f"log10 {title.split(' (')[1][:-1]}")
        ax.set_ylabel("features")
        ax.set_title(title)
    fig.suptitle(f"{int(live.sum())} of {fs.size} features fire; {int((~live).sum())} dead")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _step_of(line: str) -> int | None:
    """The step of one log line; None for a blank line or one torn by a killed process."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return None


class JsonlLog:
    """Appends one JSON object per line; on resume, lines past the restored step are dropped."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if _step_of(line) is not None and _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class TensorBoardLog:
    """Scalars to TensorBoard event files (the optional `tensorboard` extra: tensorboardX)."""

    def __init__(self, directory: str | Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as exc:
            from sauce_jax.errors import ConfigError

            raise ConfigError("TensorBoard logging needs tensorboardX: pip install 'sauce-jax[tensorboard]'") from exc
        self.writer = SummaryWriter(str(directory))

    def write(self, record: dict) -> None:
        step = record["step"]
        for name, value in record.items():
            if name not in ("step", "seconds"):
                self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
