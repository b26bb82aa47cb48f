"""Feature statistics of an SAE (paper eq. 7, 8) and their Figure 4 histograms.

    FS_i   = share of rows where z_i != 0                    (eq. 7, feature sparsity)
    FMAV_i = mean of z_i over the rows where z_i != 0        (eq. 8, mean activation value)

A row is one token (`feature_statistics`, streamed over activations) or one image
(`image_statistics`, over per-image activations such as `scoring.image_activations` returns).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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


def image_statistics(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 7 and 8 over per-image activations z [N, d_sae]: FS_i = share of images with z_i != 0,
    FMAV_i = mean of z_i over those images (0 for a feature that never fires)."""
    active = z != 0  # [N, d_sae]
    count = active.sum(axis=0)
    fmav = np.divide(z.sum(axis=0), count, out=np.zeros(z.shape[1]), where=count > 0)
    return count / max(len(z), 1), fmav
