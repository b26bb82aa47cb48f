"""Concept feature selection (paper eq. 4, and a contrast against other concepts) and the
`FeatureSet` it produces.

    eq. 4 (contrast="negatives"):  S(i) = mu_i(D_c) / (sum_j mu_j(D_c) + delta) - mu_i(D_nc) / (sum_j mu_j(D_nc) + delta)
    contrast="others":             S(i) = mu_i(D_c) / (sum_j mu_j(D_c) + delta) - max_o mu_i(D_o) / (sum_j mu_j(D_o) + delta)
    specificity s (a filter):      keep i only if mu_i(D_r) <= s * mu_i(D_c) for every reference set D_r

mu_i(D) is feature i's mean activation over the images of D; D_o are the images of each
other concept, and the reference sets of the filter are those (or D_nc when no others are
given). The k best-scoring features that pass the filter form F_c, the features of concept c.
A feature that also fires for another concept scores low against the others and fails the
filter, where eq. 4 against generic negatives may still rank it high.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from sauce_jax.errors import ConfigError, InputError

if TYPE_CHECKING:  # the selection maths and FeatureSet need no jax: only image_activations loads it
    from sauce_jax.sae import SAE


def _activations(name: str, z: Any) -> np.ndarray:
    """Per-image activations [N, d_sae] as float64, checked."""
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise InputError(f"{name} must be [N, d_sae] with N > 0 images, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return z


def _normalised_means(z: np.ndarray, delta: float) -> np.ndarray:
    """mu_i(D) / (sum_j mu_j(D) + delta) [d_sae]: eq. 4's per-set term, comparable across sets."""
    mu = z.mean(axis=0)
    return mu / (mu.sum() + delta)


def _reference_sets(z_pos: np.ndarray, refs: Any, what: str) -> dict[str, np.ndarray]:
    """{name: activations [N, d_sae]} of the sets compared with the positives, checked."""
    if not isinstance(refs, Mapping) or not refs:
        raise InputError(f"{what} must be a non-empty mapping {{concept: activations [N, d_sae]}}, got {refs!r:.60}")
    out = {str(name): _activations(f"{what}[{name!r}]", z) for name, z in refs.items()}
    for name, z in out.items():
        if z.shape[1] != z_pos.shape[1]:
            raise InputError(f"z_pos has {z_pos.shape[1]} features, {what}[{name!r}] {z.shape[1]}")
    return out


def score_features(z_pos: Any, z_neg: Any, delta: float = 1e-6) -> np.ndarray:
    """Eq. 4 on per-image SAE activations z_pos [N_c, d_sae] and z_neg [N_nc, d_sae] -> [d_sae]."""
    pos, neg = _activations("z_pos", z_pos), _activations("z_neg", z_neg)
    if pos.shape[1] != neg.shape[1]:
        raise InputError(f"z_pos has {pos.shape[1]} features, z_neg {neg.shape[1]}")
    if delta < 0:
        raise ConfigError(f"delta must be >= 0, got {delta}")
    return _normalised_means(pos, delta) - _normalised_means(neg, delta)


def score_against_others(z_pos: Any, z_others: Mapping[str, Any], delta: float = 1e-6) -> np.ndarray:
    """Each feature's score against the other concepts -> [d_sae]: the positives' normalised
    mean activation minus the largest normalised mean over the other concepts (each normalised
    as in eq. 4). A feature firing for any one other concept scores low, however rare that
    concept is among generic negatives.

    z_pos: [N_c, d_sae] activations of images with the concept; z_others: {concept: [N_o, d_sae]}."""
    pos = _activations("z_pos", z_pos)
    others = _reference_sets(pos, z_others, "z_others")
    if delta < 0:
        raise ConfigError(f"delta must be >= 0, got {delta}")
    rival = np.max([_normalised_means(z, delta) for z in others.values()], axis=0)  # [d_sae]
    return _normalised_means(pos, delta) - rival


def specific_features(z_pos: Any, z_refs: Mapping[str, Any], specificity: float) -> np.ndarray:
    """[d_sae] bool: the features whose mean activation on every reference set (the other
    concepts, or the negatives) is at most `specificity` times their mean on the positives.
    A feature silent on the positives is not the concept's: it never passes."""
    pos = _activations("z_pos", z_pos)
    refs = _reference_sets(pos, z_refs, "z_refs")
    if isinstance(specificity, bool) or not isinstance(specificity, (int, float, np.floating, np.integer)) \
            or not np.isfinite(specificity) or specificity <= 0:
        raise ConfigError(f"specificity must be a finite number > 0, got {specificity!r}")
    mu_pos = pos.mean(axis=0)
    worst = np.max([z.mean(axis=0) for z in refs.values()], axis=0)  # [d_sae]
    return (worst <= specificity * mu_pos) & (mu_pos > 0)


def replacement_targets(z_neg: Any, feature_ids: Any) -> np.ndarray:
    """The targets of mode "replace": each selected feature's mean activation over images
    without the concept, aligned with `feature_ids` ([k] or per-image [B, k]; 0 at the -1
    padding) -> float32 of the ids' shape.

    z_neg: [N, d_sae] activations of images without the concept (`image_activations`; with
    token="all" the mean is over every token, where the edit applies)."""
    neg = _activations("z_neg", z_neg)
    ids = np.asarray(feature_ids)
    if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids.ndim not in (1, 2):
        raise InputError(f"feature ids must be a non-empty int array [k] or [B, k], got {ids.dtype} {ids.shape}")
    if ((ids < -1) | (ids >= neg.shape[1])).any():
        raise InputError(f"feature ids {ids[(ids < -1) | (ids >= neg.shape[1])][:5].tolist()} are outside "
                         f"[0, d_sae={neg.shape[1]}) (-1 pads)")
    mu = neg.mean(axis=0)  # [d_sae]
    return np.where(ids >= 0, mu[np.clip(ids, 0, None)], 0.0).astype(np.float32)


def top_features(scores: Any, k: int, *, concept: str, layer: int, sae_fingerprint: str, gamma: float = -0.5,
                 token: str = "last", keep: Any = None, selection: dict | None = None) -> "FeatureSet":
    """F_c: the k features with the highest scores [d_sae], best first (ties: the lower id).

    keep: optional [d_sae] bool filter (e.g. `specific_features`): only those features may be
    chosen, so fewer than k come back when fewer pass. selection: how the scores were made,
    recorded in the FeatureSet."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")  # [d_sae]
    if keep is not None:
        keep = np.asarray(keep, bool)
        if keep.shape != scores.shape:
            raise InputError(f"the feature filter has shape {keep.shape}, the scores {scores.shape}")
        order = order[keep[order]]
        if order.size == 0:
            raise InputError(f"no feature of {concept!r} passes the specificity filter: raise specificity")
    best = order[:k]  # [<= k]
    return FeatureSet(concept=concept, feature_ids=tuple(int(i) for i in best),
                      scores=tuple(float(scores[i]) for i in best), layer=layer,
                      sae_fingerprint=sae_fingerprint, gamma=gamma, token=token, selection=dict(selection or {}))


def select_one_vs_rest(z: Any, owners: Any, targets: Any, k: int, *, layer: int, sae_fingerprint: str,
                       gamma: float = -0.5, token: str = "all") -> dict[str, FeatureSet]:
    """Each target's F_c by eq. 4 from precomputed per-image activations: its own images
    against every other image. z: [N, d_sae] (`image_activations`); owners: [N] the concept
    each row shows. Images are encoded once, however many targets are scored."""
    z = _activations("z", z)
    owners = np.asarray(owners)
    if owners.shape != (len(z),):
        raise InputError(f"owners has shape {owners.shape}, expected ({len(z)},): one concept per row of z")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= z.shape[1]:
        raise ConfigError(f"k must be an integer in [1, d_sae={z.shape[1]}], got {k!r}")
    sets = {}
    for target in targets:
        own = owners == target
        if not own.any() or own.all():
            raise InputError(f"concept {target!r} needs images of its own and of other concepts among the rows")
        scores = score_features(z[own], z[~own])  # [d_sae]
        sets[target] = top_features(scores, k, concept=str(target), layer=layer, sae_fingerprint=sae_fingerprint,
                                    gamma=gamma, token=token)
    return sets


def control_sets(features: FeatureSet, positives_mean: Any, draws: int, seed: int, near: int = 10) -> dict:
    """The controls every SAUCE figure is compared with in the same run, for one concept's set
    `features` (k ids, gamma), from every feature's mean activation on the concept's
    positives [d_sae]:

    - "no-contrast": the k features most active on the positives (eq. 4 without its second term);
    - "matched-random": `draws` sets, each replacing every selected feature by one drawn at
      random among the `near` unselected features nearest to it in that activation's rank, so
      the control edits features as active on the concept as the selected ones.

    The draws are a stable stream of (seed, concept, draw)."""
    from sauce_jax.seeds import rng_for

    mean = np.asarray(positives_mean, np.float64)
    if mean.ndim != 1 or not np.isfinite(mean).all():
        raise InputError(f"positives_mean must be a finite [d_sae] vector, got shape {mean.shape}")
    k, chosen = features.k, set(features.feature_ids)
    if len(mean) - len(chosen) < near:
        raise ConfigError(f"matched-random needs at least {near} unselected features; the SAE has {len(mean)} "
                          f"and {len(chosen)} are selected")
    order = np.argsort(-mean, kind="stable")  # most active first
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    others = np.array([f for f in order if f not in chosen])  # unselected, most active first
    others_rank = rank[others]
    random_sets = []
    for d in range(draws):
        rng = rng_for(seed, "matched-random", features.concept, d)
        taken: set[int] = set()
        ids = []
        for f in features.feature_ids:
            nearest = [int(o) for o in others[np.argsort(np.abs(others_rank - rank[f]), kind="stable")[:near + k]]
                       if int(o) not in taken][:near]
            pick = nearest[int(rng.integers(len(nearest)))]
            taken.add(pick)
            ids.append(pick)
        random_sets.append(dataclasses.replace(features, feature_ids=tuple(ids), scores=(0.0,) * k))
    top = tuple(int(f) for f in order[:k])
    return {"no-contrast": dataclasses.replace(features, feature_ids=top, scores=tuple(float(mean[f]) for f in top)),
            "matched-random": random_sets}


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
    # How the features were chosen (contrast, specificity, delta, the other concepts); {} in
    # sets saved before it was recorded, which were eq. 4 against negatives. Not hashed: a dict.
    selection: dict = dataclasses.field(default_factory=dict, hash=False)

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
        missing = sorted(f for f in fields if f not in data and f not in ("gamma", "token", "selection"))
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
    def union(*sets: "FeatureSet", same_gamma: bool = True) -> "FeatureSet":
        """One set for a multi-concept request: the union of the ids (first occurrence kept),
        so a feature two concepts share is edited once, not once per concept.

        The sets must share their SAE and layer, and their gamma unless `same_gamma` is False
        (for mode "replace", which ignores gamma; the union then carries the first set's)."""
        if not sets:
            raise InputError("union of no feature sets")
        first = sets[0]
        for other in sets[1:]:
            for name in ("sae_fingerprint", "layer", "gamma")[: 3 if same_gamma else 2]:
                if getattr(other, name) != getattr(first, name):
                    hint = " (only mode 'replace' ignores gamma)" if name == "gamma" else ""
                    raise ConfigError(f"cannot combine {first.concept!r} and {other.concept!r}: "
                                      f"{name} {getattr(first, name)!r} != {getattr(other, name)!r}{hint}")
        seen: dict[int, float] = {}
        for s in sets:
            for i, score in zip(s.feature_ids, s.scores):
                seen.setdefault(i, score)
        selections = {s.concept: s.selection for s in sets}
        same = all(s.selection == first.selection for s in sets)
        return FeatureSet(concept="+".join(s.concept for s in sets), feature_ids=tuple(seen),
                          scores=tuple(seen.values()), layer=first.layer, sae_fingerprint=first.sae_fingerprint,
                          gamma=first.gamma, token=first.token,
                          selection=dict(first.selection) if same else {"union": selections})


def image_activations(sae: SAE, encoder, images: Any, *, layer: int, token: str = "last", batch_size: int = 32,
                      desc: str = "images", progress: bool = True, pad_to: int | None = None,
                      upto: int | None = None, rgb: bool = False, strict: bool = False) -> np.ndarray:
    """Per-image SAE activations [N, d_sae]: the token choice's activations, mean over an image's tokens.

    Args:
      pad_to: pad every batch to this many images, so the tower compiles once for any count.
      upto: run the tower through hidden state `upto` (>= `layer`) and read `layer`: the forward
        another caller already compiled (a VLM's answerer reads its own layer) is reused.
      rgb, strict: as `sauce_jax.images.open_image`: convert files to RGB; raise on an
        unreadable image instead of skipping it.
    """
    import jax

    from sauce_jax import sae as sae_lib
    from sauce_jax.encoder import pad_batch
    from sauce_jax.image_processor import preprocess
    from sauce_jax.images import as_image_items, open_image
    from sauce_jax.tokens import check_token_choice, select_tokens, tokens_per_image

    check_token_choice(token)
    if sae.config.d_in != encoder.config.hidden_size:
        raise InputError(f"SAE d_in={sae.config.d_in} differs from the encoder width {encoder.config.hidden_size}")
    if pad_to is not None and pad_to < batch_size:
        raise ConfigError(f"pad_to={pad_to} is smaller than batch_size={batch_size}")
    try:
        items = as_image_items(images)
    except InputError as exc:  # say which of the image sets it is (positives, negatives, others[...])
        raise InputError(f"{desc}: {exc}") from exc
    per_image = tokens_per_image(token, encoder.config.num_tokens)
    encode = jax.jit(lambda p, x: sae_lib.encode(p, x, sae.config))
    rows = []
    key = jax.random.key(0)
    for start in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress, leave=False):
        opened = [open_image(item, rgb=rgb, strict=strict) for item in items[start : start + batch_size]]
        opened = [image for image in opened if image is not None]
        if not opened:
            continue
        pixels = preprocess(opened, encoder)  # [b, H, W, C]
        if pad_to is not None:
            pixels = pad_batch(pixels, pad_to)  # [pad_to, H, W, C]
        if upto is None:
            hidden = encoder.hidden_state(pixels, layer)  # [b', T, D]
        else:
            hidden = encoder.hidden_states(pixels, upto=upto)[encoder.layer_index(layer)]  # [b', T, D]
        acts = select_tokens(hidden, token, jax.random.fold_in(key, start))  # [b' * per_image, D]
        z = encode(sae.params, acts).reshape(len(pixels), per_image, -1).mean(axis=1)  # [b', d_sae]
        rows.append(np.asarray(z[:len(opened)]))
    if not rows:
        raise InputError(f"no readable images among the {len(items)} {desc}")
    return np.concatenate(rows)


CONTRASTS = ("negatives", "others")


def _check_selection(contrast: str, others: Any, specificity: Any) -> None:
    if contrast not in CONTRASTS:
        raise ConfigError(f"contrast {contrast!r} is not one of {CONTRASTS}")
    if contrast == "others" and others is None:
        raise ConfigError("contrast='others' needs others={concept: images} (the images of each other concept)")
    if others is not None and (not isinstance(others, Mapping) or not others):
        raise ConfigError(f"others must be a non-empty mapping {{concept: images}}, got {others!r:.60}")
    if specificity is not None and (isinstance(specificity, bool) or not isinstance(specificity, (int, float))
                                    or not np.isfinite(specificity) or specificity <= 0):
        raise ConfigError(f"specificity must be a finite number > 0 (or None), got {specificity!r}")


def select_features(sae: SAE, encoder, positives: Any, negatives: Any, k: int, layer: int | None = None, *,
                    concept: str = "concept", token: str | None = None, gamma: float = -0.5, delta: float = 1e-6,
                    batch_size: int = 32, progress: bool = True, contrast: str = "negatives",
                    others: Mapping[str, Any] | None = None, specificity: float | None = None) -> FeatureSet:
    """Score every SAE feature on images with (`positives`) and without (`negatives`) the
    concept (folders, lists of images or uint8 arrays) and keep the k best.

    `layer` and `token` default to what the SAE was trained with (its metadata), else -2 and "last".

    Args:
      contrast: "negatives" (eq. 4, the paper) or "others": score against the other concepts'
        images (`score_against_others`), so a feature also firing for another concept scores low.
      others: {concept: images} of each other concept (needed by contrast="others"; with
        specificity, the sets the filter compares with).
      specificity: drop the features whose mean activation on any other concept (on the
        negatives when no `others` are given) exceeds `specificity` times their mean on the
        positives (`specific_features`); fewer than k features remain when fewer pass.

    The options are recorded in the FeatureSet's `selection`.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= sae.config.d_sae:
        raise ConfigError(f"k must be an integer in [1, d_sae={sae.config.d_sae}], got {k!r}")
    _check_selection(contrast, others, specificity)
    layer = encoder.layer_index(sae.metadata.get("layer", -2) if layer is None else layer)
    token = token or sae.metadata.get("token") or "last"

    def activations(images, desc):
        return image_activations(sae, encoder, images, layer=layer, token=token, batch_size=batch_size,
                                 desc=desc, progress=progress)

    z_pos = activations(positives, "positives")
    z_neg = activations(negatives, "negatives")
    z_others = None if others is None else {str(name): activations(images, f"others[{name!r}]")
                                            for name, images in others.items()}
    scores = score_features(z_pos, z_neg, delta) if contrast == "negatives" else \
        score_against_others(z_pos, z_others, delta)
    keep = None if specificity is None else specific_features(
        z_pos, z_others if z_others is not None else {"negatives": z_neg}, specificity)
    selection = {"contrast": contrast, "specificity": specificity, "delta": delta,
                 "others": sorted(z_others) if z_others is not None else []}
    return top_features(scores, k, concept=concept, layer=layer, sae_fingerprint=sae.fingerprint(), gamma=gamma,
                        token=token, keep=keep, selection=selection)
