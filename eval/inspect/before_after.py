"""The before/after view: what a few images look like to the model with and without a concept.

Vision only, the evidence is (a) the activations of the set's features at the edited layer,
clean and unlearned, and (b) when the image folder has class subfolders, the label a linear
probe fitted on the clean encoder's output gives each image, clean and unlearned. With a LLaVA
or Mllama checkpoint the language model's answer to a prompt is shown too
(`eval/vlm/llava_answerer`, `eval/vlm/mllama_answerer`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from sauce_jax.image_processor import preprocess
from sauce_jax.images import open_image
from sauce_jax.intervention import unlearn

from .activations import feature_values



@dataclasses.dataclass(frozen=True)
class Probe:
    """A linear probe on the mean over tokens of the last hidden state: ridge regression of
    one-hot labels on standardised features (closed form, deterministic)."""

    classes: tuple[str, ...]
    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    weights: np.ndarray  # [D + 1, C]
    train_accuracy: float

    def predict(self, pooled: np.ndarray) -> list[str]:
        x = (np.asarray(pooled, np.float64) - self.mean) / self.std  # [n, D]
        scores = np.concatenate([x, np.ones((len(x), 1))], axis=1) @ self.weights  # [n, C]
        return [self.classes[i] for i in scores.argmax(axis=1)]


def folder_labels(items, root) -> list[str] | None:
    """Each image's class subfolder under `root`, or None unless every image has one and there
    are at least two classes (a flat folder has no labels)."""
    if root is None:
        return None
    root = Path(root)
    labels = []
    for item in items:
        if not isinstance(item, Path) or item.parent == root:
            return None
        labels.append(item.relative_to(root).parts[0])
    return labels if len(set(labels)) >= 2 else None


def fit_probe(pooled: np.ndarray, labels: list[str], ridge: float = 1.0) -> Probe:
    """The probe on clean pooled outputs [N, D] and their labels [N]."""
    classes = tuple(sorted(set(labels)))
    x = np.asarray(pooled, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1)  # [N, D + 1]
    y = np.eye(len(classes))[[classes.index(c) for c in labels]]  # [N, C]
    reg = ridge * np.eye(xs.shape[1])
    reg[-1, -1] = 0.0  # the bias is not shrunk
    weights = np.linalg.solve(xs.T @ xs + reg, xs.T @ y)
    probe = Probe(classes, mean, std, weights, 0.0)
    accuracy = float(np.mean([p == t for p, t in zip(probe.predict(x), labels)]))
    return dataclasses.replace(probe, train_accuracy=accuracy)


def before_after(encoder, sae, feature_set, items, *, token: str, mode: str = "reconstruct", probe: Probe | None = None,
                 answerer=None, prompt: str | None = None, max_new_tokens: int = 24) -> list[dict]:
    """For each image of `items` (a few): the set's feature activations at its layer, the probe's
    label and the model's answer, clean and with the set unlearned (eq. 6 with its gamma)."""


    images = [open_image(item) for item in items]
    edited = unlearn(encoder, sae, feature_set, mode=mode)
    layer = feature_set.layer
    ids = jnp.asarray(np.asarray(feature_set.feature_ids, np.int32))
    params = {k: jnp.asarray(v) for k, v in sae.params.items()}
    px = preprocess(images, encoder)
    rows = [{} for _ in images]
    for name, tower in (("clean", encoder), ("unlearned", edited)):
        states = tower.hidden_states(px)
        values, _ = feature_values(params, states[layer], ids, config=sae.config, token=token, grid=None)
        values = np.asarray(values)  # [n, k]
        pooled = np.asarray(states[-1].mean(axis=1))  # [n, D]
        labels = probe.predict(pooled) if probe is not None else [None] * len(images)
        for row, v, label in zip(rows, values, labels):
            row[name] = {"set_activation": float(v.sum()), "features": [float(x) for x in v], "probe": label}
    if answerer is not None:
        for name, tower in (("clean", None), ("unlearned", edited)):
            answers = answerer.ask(images, [[prompt]] * len(images), unlearned=tower, max_new_tokens=max_new_tokens)
            for row, answer in zip(rows, answers):
                row[name]["answer"] = answer[0]
    return rows
