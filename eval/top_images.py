"""The images an SAE feature fires on most (the paper's Figure 5), how many of them hold a
concept, and their picture grid: shared by the emoji benchmark and the ConceptWorld features
experiment."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def top_activating(z: np.ndarray, feature_ids, n_images: int, active_only: bool = False) -> dict[int, list[int]]:
    """Per feature, the indices of the `n_images` images with its highest activation (z [N, d_sae],
    per image), best first; with `active_only`, images where it does not fire are left out."""
    tops = {}
    for f in feature_ids:
        rows = np.argsort(-z[:, f], kind="stable")[:n_images]
        tops[int(f)] = [int(i) for i in rows if not active_only or z[i, f] > 0]
    return tops


def precision(tops: dict[int, list[int]], holds: np.ndarray) -> float | None:
    """The share of all the top images (over every feature) whose image holds the concept
    (`holds` [N] bool); None when there are none."""
    own = [bool(holds[i]) for rows in tops.values() for i in rows]
    return float(np.mean(own)) if own else None


def plot_image_rows(rows: Sequence[tuple[str, Sequence]], path: str | Path, captions=None, cell: float = 1.3) -> None:
    """A grid: one row per (label, images), the label on the left; `captions` (same nesting,
    optional) is written small above each image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max([len(images) for _, images in rows] + [1])
    fig, axes = plt.subplots(len(rows), width, figsize=(cell * width, (cell + 0.15 * bool(captions)) * len(rows)),
                             squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(width):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c])
                if captions:
                    ax.set_title(captions[r][c], fontsize=4.5)
            else:
                ax.axis("off")
        axes[r, 0].axis("on")
        axes[r, 0].set_ylabel(label, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
