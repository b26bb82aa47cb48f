"""Concept feature selection (paper eq. 4) and the `FeatureSet` it produces.

    S(i) = mu_i(D_c) / (sum_j mu_j(D_c) + delta) - mu_i(D_nc) / (sum_j mu_j(D_nc) + delta)

mu_i(D) is feature i's mean activation over the images of D; the k best-scoring features
form F_c, the features of concept c.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from sauce_jax import sae as sae_lib
from sauce_jax.errors import ConfigError, InputError
from sauce_jax.sae import SAE


def score_features(z_pos: Any, z_neg: Any, delta: float = 1e-6) -> np.ndarray:
    """Eq. 4 on per-image SAE activations z_pos [N_c, d_sae] and z_neg [N_nc, d_sae] -> [d_sae]."""
    pos, neg = np.asarray(z_pos, np.float64), np.asarray(z_neg, np.float64)
    for name, z in (("z_pos", pos), ("z_neg", neg)):
        if z.ndim != 2 or z.shape[0] == 0:
            raise InputError(f"{name} must be [N, d_sae] with N > 0 images, got shape {z.shape}")
        if not np.isfinite(z).all():
            raise InputError(f"{name} contains NaN or infinite values")
    if pos.shape[1] != neg.shape[1]:
        raise InputError(f"z_pos has {pos.shape[1]} features, z_neg {neg.shape[1]}")
    if delta < 0:
        raise ConfigError(f"delta must be >= 0, got {delta}")
    mu_pos, mu_neg = pos.mean(axis=0), neg.mean(axis=0)
    return mu_pos / (mu_pos.sum() + delta) - mu_neg / (mu_neg.sum() + delta)


def top_features(scores: Any, k: int, *, concept: str, layer: int, sae_fingerprint: str, gamma: float = -0.5,
                 token: str = "last") -> "FeatureSet":
    """F_c: the k features with the highest eq. 4 scores [d_sae], best first (ties: the lower id)."""
    scores = np.asarray(scores)
    best = np.argsort(-scores, kind="stable")[:k]  # [k]
    return FeatureSet(concept=concept, feature_ids=tuple(int(i) for i in best),
                      scores=tuple(float(scores[i]) for i in best), layer=layer,
                      sae_fingerprint=sae_fingerprint, gamma=gamma, token=token)


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """The SAE features of a concept, and how to apply them."""

    concept: str
    feature_ids: tuple[int, ...]  # best first
    scores: tuple[float, ...]  # eq. 4 score of each id
    layer: int  # hidden-state index the SAE was trained on
    sae_fingerprint: str  # `SAE.fingerprint()` of the SAE the ids refer to
    gamma: float = -0.5  # eq. 6 scale of the selected activations
    token: str = "last"  # token choice used to score

    @property
    def k(self) -> int:
        return len(self.feature_ids)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        data = dataclasses.asdict(self)
        data["k"] = self.k
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureSet":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise InputError(f"feature set file {str(path)!r} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise InputError(f"feature set file {str(path)!r} is not valid JSON: {exc}") from exc
        data.pop("k", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f for f in fields if f not in data and f not in ("gamma", "token"))
        if missing:
            raise InputError(f"feature set file {str(path)!r} lacks {missing}")
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields})
        except TypeError as exc:
            raise InputError(f"feature set file {str(path)!r} is malformed: {exc}") from exc

    def check_sae(self, sae: SAE) -> None:
        """Refuse to apply these ids to an SAE they were not selected on."""
        if self.sae_fingerprint != sae.fingerprint():
            raise ConfigError(f"feature set {self.concept!r} belongs to SAE {self.sae_fingerprint}, "
                              f"not to this one ({sae.fingerprint()})")
        bad = [i for i in self.feature_ids if not 0 <= i < sae.config.d_sae]
        if bad:
            raise InputError(f"feature set {self.concept!r} has ids {bad[:5]} outside [0, {sae.config.d_sae})")

    def top(self, k: int, gamma: float | None = None) -> "FeatureSet":
        """The k best features of this set (its ids are best first), applied with `gamma`
        (default: this set's own)."""
        return dataclasses.replace(self, feature_ids=self.feature_ids[:k], scores=self.scores[:k],
                                   gamma=self.gamma if gamma is None else gamma)

    @staticmethod
    def union(*sets: "FeatureSet") -> "FeatureSet":
        """One set for a multi-concept request: the union of the ids (first occurrence kept)."""
        if not sets:
            raise InputError("union of no feature sets")
        first = sets[0]
        for other in sets[1:]:
            for name in ("sae_fingerprint", "layer", "gamma"):
                if getattr(other, name) != getattr(first, name):
                    raise ConfigError(f"cannot combine {first.concept!r} and {other.concept!r}: "
                                      f"{name} {getattr(first, name)!r} != {getattr(other, name)!r}")
        seen: dict[int, float] = {}
        for s in sets:
            for i, score in zip(s.feature_ids, s.scores):
                seen.setdefault(i, score)
        return FeatureSet(concept="+".join(s.concept for s in sets), feature_ids=tuple(seen),
                          scores=tuple(seen.values()), layer=first.layer, sae_fingerprint=first.sae_fingerprint,
                          gamma=first.gamma, token=first.token)


def image_activations(sae: SAE, encoder, images: Any, *, layer: int, token: str = "last", batch_size: int = 32,
                      desc: str = "images", progress: bool = True) -> np.ndarray:
    """Per-image SAE activations [N, d_sae]: the token choice's activations, mean over an image's tokens."""
    from sauce_jax.images import as_image_items, open_image
    from sauce_jax.tokens import check_token_choice, select_tokens, tokens_per_image
    from sauce_jax.image_processor import preprocess

    check_token_choice(token)
    if sae.config.d_in != encoder.config.hidden_size:
        raise InputError(f"SAE d_in={sae.config.d_in} differs from the encoder width {encoder.config.hidden_size}")
    items = as_image_items(images)
    per_image = tokens_per_image(token, encoder.config.num_tokens)
    encode = jax.jit(lambda p, x: sae_lib.encode(p, x, sae.config))
    rows = []
    key = jax.random.key(0)
    for start in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress, leave=False):
        opened = [open_image(item) for item in items[start : start + batch_size]]
        opened = [image for image in opened if image is not None]
        if not opened:
            continue
        hidden = encoder.hidden_state(preprocess(opened, encoder), layer)  # [b, T, D]
        acts = select_tokens(hidden, token, jax.random.fold_in(key, start))  # [b * per_image, D]
        z = encode(sae.params, acts).reshape(len(opened), per_image, -1).mean(axis=1)  # [b, d_sae]
        rows.append(np.asarray(z))
    if not rows:
        raise InputError(f"no readable images among the {len(items)} {desc}")
    return np.concatenate(rows)


def select_features(sae: SAE, encoder, positives: Any, negatives: Any, k: int, layer: int | None = None, *,
                    concept: str = "concept", token: str | None = None, gamma: float = -0.5, delta: float = 1e-6,
                    batch_size: int = 32, progress: bool = True) -> FeatureSet:
    """Score every SAE feature on images with (`positives`) and without (`negatives`) the
    concept (folders, lists of images or uint8 arrays) and keep the k best (eq. 4).

    `layer` and `token` default to what the SAE was trained with (its metadata), else -2 and "last".
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= sae.config.d_sae:
        raise ConfigError(f"k must be an integer in [1, d_sae={sae.config.d_sae}], got {k!r}")
    layer = encoder.layer_index(sae.metadata.get("layer", -2) if layer is None else layer)
    token = token or sae.metadata.get("token") or "last"
    z_pos = image_activations(sae, encoder, positives, layer=layer, token=token, batch_size=batch_size,
                              desc="positives", progress=progress)
    z_neg = image_activations(sae, encoder, negatives, layer=layer, token=token, batch_size=batch_size,
                              desc="negatives", progress=progress)
    return top_features(score_features(z_pos, z_neg, delta), k, concept=concept, layer=layer,
                        sae_fingerprint=sae.fingerprint(), gamma=gamma, token=token)
