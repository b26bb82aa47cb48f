"""The SAUCE intervention (paper eq. 6) and its variants as pure hook functions, and `unlearn`.

Four modes, applied to one hidden state x [B, T, D] at the tokens a mask selects, with z the
SAE's latents of x at each token and F the concept's features:

    reconstruct (the paper): x -> decode(z'),  z'_i = gamma * z_i for i in F, z'_i = z_i otherwise
    delta:                   x -> x + sum_{i in F} (gamma - 1) z_i W_dec[i]
    gated:                   x -> x + g(x) sum_{i in F} (gamma - 1) z_i W_dec[i]
    replace:                 x -> x + g(x) sum_{i in F} (target_i - z_i) W_dec[i]

    with the gate g(x) = 1 if max_{i in F} z_i > threshold else 0 (per token)

`delta` keeps the SAE's reconstruction error, so gamma = 1 is exactly the identity, and for
standard and BatchTopK SAEs it computes only the k selected latents. `gated` is `delta` only
at the tokens where the concept is active: every other token is returned bit-identical, so an
image without the concept is not moved off the data manifold. At threshold 0 it computes what
`delta` does (a latent at 0 adds nothing to delta's edit either); the gate changes the edit
only above 0, where it leaves weakly active tokens alone. `replace` sets the selected
latents to `target_i` (their mean activation on images without the concept, see
`sauce_jax.scoring.replacement_targets`) instead of scaling them, at the same tokens.

Feature ids, gamma, threshold, targets, the token mask and the SAE arrays are traced
arguments: any concept set of the same size reuses the compiled forward. Ids of -1 are
padding (no feature), so sets of different sizes can share one shape; ids of shape [B, k]
give each image of a batch its own set (and targets [B, k] their targets).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sauce_jax import sae as sae_lib
from sauce_jax.errors import ConfigError, InputError
from sauce_jax.sae import SAE, SAEConfig
from sauce_jax.modes import GATED_MODES, MODES, WHERE
from sauce_jax.scoring import FeatureSet


class InterventionArgs(NamedTuple):
    """The traced inputs of an intervention hook."""

    params: dict  # SAE params
    feature_ids: jax.Array  # int32 [k] or [B, k]; -1 = padding
    gamma: jax.Array  # float32 scalar or [B]
    token_mask: jax.Array  # bool [T]: where the intervention applies
    threshold: Any = 0.0  # float32 scalar or [B]: gated/replace edit a token iff max_F z_i > threshold
    targets: Any = 0.0  # float32 scalar, [k] or [B, k] aligned with feature_ids: replace's latent values


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"intervention mode {mode!r} is not one of {MODES}")
    return mode


def token_mask(num_tokens: int, where: str = "all") -> np.ndarray:
    """[T] bool: every token, the patch tokens only, or the class token only."""
    if where not in WHERE:
        raise ConfigError(f"token mask {where!r} is not one of {WHERE}")
    mask = np.ones(num_tokens, bool)
    if where == "patch":
        mask[0] = False
    elif where == "cls":
        mask[1:] = False
    return mask


# -- the parts of a hook (shapes are static: the checks run at trace time) ------------------
def _selected(ids: jax.Array, d_sae: int, batch: int) -> tuple[jax.Array, jax.Array]:
    """Per-image ids [B, k] (padding clipped to 0) and validity [B, k]."""
    if ids.ndim == 2 and ids.shape[0] not in (1, batch):
        raise InputError(f"per-image feature ids hold {ids.shape[0]} sets for a batch of {batch} images")
    ids = jnp.broadcast_to(ids, (batch, ids.shape[-1]))
    return jnp.clip(ids, 0, d_sae - 1), ids >= 0


def _per_image(value: Any, batch: int, name: str) -> jax.Array:
    """A scalar or one value per image -> float32 [B]."""
    value = jnp.asarray(value, jnp.float32)
    if value.ndim > 1 or (value.ndim == 1 and value.shape[0] not in (1, batch)):
        raise InputError(f"{name} of shape {value.shape} does not fit a batch of {batch} images")
    return jnp.broadcast_to(value, (batch,))


def _per_image_targets(targets: Any, batch: int, k: int) -> jax.Array:
    """Targets as a scalar, [k] or [B, k] -> float32 [B, k]."""
    targets = jnp.asarray(targets, jnp.float32)
    fits = targets.ndim == 0 or (targets.shape[-1] == k and (targets.ndim == 1 or (
        targets.ndim == 2 and targets.shape[0] in (1, batch))))
    if not fits:
        raise InputError(f"targets of shape {targets.shape} do not fit {k} feature ids for a batch of {batch} images")
    return jnp.broadcast_to(targets, (batch, k))


def _selected_latents(p: dict, x: jax.Array, ids: jax.Array, config: SAEConfig) -> jax.Array:
    """The SAE latents of the selected ids [B, k] at every token of x [B, T, D] -> [B, T, k]."""
    if config.is_topk:
        # Whether a latent survives TopK depends on all pre-activations: encode fully.
        z_all = sae_lib.encode(p, x, config)  # [B, T, d_sae]
        return jnp.take_along_axis(z_all, ids[:, None, :], axis=-1)
    # Standard and BatchTopK: only the k selected columns of W_enc.
    w_enc = jnp.take(p["W_enc"], ids, axis=1).transpose(1, 0, 2)  # [B, D, k]
    pre = jnp.einsum("btd,bdk->btk", x - p["b_dec"], w_enc) + jnp.take(p["b_enc"], ids)[:, None, :]
    z = jax.nn.relu(pre)
    if config.has_threshold:
        z = jnp.where(z > jnp.take(p["threshold"], ids)[:, None, :], z, 0.0)
    return z


def _decoded_edit(p: dict, coeff: jax.Array, ids: jax.Array, valid: jax.Array) -> jax.Array:
    """sum_k coeff[b, t, k] W_dec[ids[b, k]] over the valid ids -> [B, T, D]; padding adds nothing."""
    coeff = jnp.where(valid[:, None, :], coeff, 0.0)  # [B, T, k]
    return jnp.einsum("btk,bkd->btd", coeff, jnp.take(p["W_dec"], ids, axis=0))  # W_dec[ids]: [B, k, D]


def _concept_active(z: jax.Array, valid: jax.Array, threshold: jax.Array) -> jax.Array:
    """[B, T] bool: max over the valid selected latents z [B, T, k] exceeds the image's threshold [B]."""
    return jnp.any(valid[:, None, :] & (z > threshold[:, None, None]), axis=-1)


def _apply_at(hidden, edited, mask):
    """`edited` where mask ([T] or [B, T]) holds, `hidden` itself (bit-identical) elsewhere."""
    mask = mask if mask.ndim == 2 else mask[None, :]
    return jnp.where(mask[:, :, None], edited.astype(hidden.dtype), hidden)


@functools.lru_cache(maxsize=None)
def make_hook(mode: str, config: SAEConfig):
    """The hook function `(hidden, InterventionArgs) -> hidden` for a mode and SAE shape.

    Cached: the same (mode, config) gives the same function object, so the encoder's jit
    cache keys on it and a new concept set, gamma, threshold or targets never recompiles."""
    check_mode(mode)

    def reconstruct(hidden: jax.Array, args: InterventionArgs) -> jax.Array:
        b = hidden.shape[0]  # hidden [B, T, D]
        x = hidden.astype(jnp.float32)
        ids, valid = _selected(args.feature_ids, config.d_sae, b)  # [B, k]
        gamma = _per_image(args.gamma, b, "gamma")
        z = sae_lib.encode(args.params, x, config)  # [B, T, d_sae]
        # decode(z with z_F scaled by gamma) = decode(z) + sum_F (gamma - 1) z_i W_dec[i]: the
        # edit touches k decoder rows instead of rescaling all d_sae latents of every token.
        z_f = jnp.take_along_axis(z, ids[:, None, :], axis=-1)  # [B, T, k]
        edit = _decoded_edit(args.params, (gamma[:, None, None] - 1.0) * z_f, ids, valid)
        return _apply_at(hidden, sae_lib.decode(args.params, z) + edit, args.token_mask)

    def scaled(hidden: jax.Array, args: InterventionArgs):
        """x [B, T, D] in float32, the selected latents z [B, T, k], their validity [B, k] and
        delta's edit sum_F (gamma - 1) z_i W_dec[i] [B, T, D]."""
        b = hidden.shape[0]
        x = hidden.astype(jnp.float32)
        ids, valid = _selected(args.feature_ids, config.d_sae, b)  # [B, k]
        gamma = _per_image(args.gamma, b, "gamma")
        z = _selected_latents(args.params, x, ids, config)  # [B, T, k]
        return x, z, valid, _decoded_edit(args.params, (gamma[:, None, None] - 1.0) * z, ids, valid)

    def delta(hidden: jax.Array, args: InterventionArgs) -> jax.Array:
        x, _, _, edit = scaled(hidden, args)
        return _apply_at(hidden, x + edit, args.token_mask)

    def gated(hidden: jax.Array, args: InterventionArgs) -> jax.Array:
        x, z, valid, edit = scaled(hidden, args)
        active = _concept_active(z, valid, _per_image(args.threshold, hidden.shape[0], "threshold"))  # [B, T]
        return _apply_at(hidden, x + edit, args.token_mask[None, :] & active)

    def replace(hidden: jax.Array, args: InterventionArgs) -> jax.Array:
        b = hidden.shape[0]
        x = hidden.astype(jnp.float32)
        ids, valid = _selected(args.feature_ids, config.d_sae, b)  # [B, k]
        targets = _per_image_targets(args.targets, b, ids.shape[-1])  # [B, k]
        z = _selected_latents(args.params, x, ids, config)  # [B, T, k]
        # Moving z_i to target_i along W_dec[i]: the latent takes the value it has on images
        # without the concept, instead of a negative value no real image produces.
        edit = _decoded_edit(args.params, targets[:, None, :] - z, ids, valid)
        active = _concept_active(z, valid, _per_image(args.threshold, b, "threshold"))  # [B, T]
        return _apply_at(hidden, x + edit, args.token_mask[None, :] & active)

    return {"reconstruct": reconstruct, "delta": delta, "gated": gated, "replace": replace}[mode]


# -- what callers pass, checked once for unlearn, torch_hook and export --------------------
def resolve_features(features: Any, sae: SAE, mode: str | None = None) -> tuple[np.ndarray, float | None, int | None]:
    """What `unlearn` and `torch_hook` accept as features (a FeatureSet, a list of them, ids [k]
    or per-image ids [B, k]), checked against `sae`: int32 ids, and the gamma and layer the
    sets carry (None for raw ids). A list of sets is their union; with mode "replace" (which
    ignores gamma) the sets may carry different gammas."""
    if isinstance(features, FeatureSet):
        features.check_sae(sae)
        return np.asarray(features.feature_ids, np.int32), features.gamma, features.layer
    if isinstance(features, Sequence) and features and all(isinstance(f, FeatureSet) for f in features):
        return resolve_features(FeatureSet.union(*features, same_gamma=mode != "replace"), sae)
    ids = np.asarray(features)
    if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids.ndim not in (1, 2):
        raise InputError(f"feature ids must be a non-empty int array [k] or [B, k], got {ids.dtype} {ids.shape}")
    bad = ids[(ids < -1) | (ids >= sae.config.d_sae)]
    if bad.size:
        raise InputError(f"feature ids {bad[:5].tolist()} are outside [0, d_sae={sae.config.d_sae}) (-1 pads)")
    if not (ids >= 0).any():  # padding alone would edit nothing, or silently just reconstruct
        raise InputError(f"feature ids {ids.tolist()[:5]} select no feature: -1 only pads a set")
    for row in ids.reshape(-1, ids.shape[-1]):
        real = row[row >= 0]
        if len(np.unique(real)) != len(real):  # an edit applied twice would scale by gamma twice
            raise InputError(f"feature ids {row.tolist()} repeat an id")
    return ids.astype(np.int32), None, None


def _finite_per_image(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value, np.float64)
    if array.ndim > 1 or not np.isfinite(array).all():
        raise ConfigError(f"{name} must be a finite scalar or one value per image [B], got {value!r}")
    return array.astype(np.float32)


def target_array(targets: Any, ids: np.ndarray) -> np.ndarray:
    """replace's targets as float32 aligned with `ids` (0 at padding) from "zero", a mapping
    {feature id: target} or an array of the ids' shape."""
    if targets is None:
        raise ConfigError("mode 'replace' needs targets: the mean activation of each selected feature on images "
                          "without the concept (sauce_jax.replacement_targets(z_neg, ids) with z_neg from "
                          "image_activations, or a {feature id: target} mapping), or targets='zero'")
    if isinstance(targets, str):
        if targets != "zero":
            raise ConfigError(f"targets {targets!r}: the only named targets are 'zero'")
        return np.zeros(ids.shape, np.float32)
    if isinstance(targets, Mapping):
        values = {int(i): float(v) for i, v in targets.items()}
        missing = sorted({int(i) for i in ids[ids >= 0]} - set(values))
        if missing:
            raise InputError(f"targets give no value for features {missing[:5]}")
        array = np.vectorize(lambda i: values.get(int(i), 0.0), otypes=[np.float64])(ids)
    else:
        array = np.asarray(targets, np.float64)
        if array.shape != ids.shape:
            raise InputError(f"targets of shape {array.shape} do not align with feature ids of shape {ids.shape}")
    array = np.where(ids >= 0, array, 0.0)  # padding has no feature, so no target
    if not np.isfinite(array).all():
        raise InputError("targets contain NaN or infinite values")
    return array.astype(np.float32)


class Edit(NamedTuple):
    """An intervention's checked inputs (what `unlearn`, `torch_hook` and export apply)."""

    ids: np.ndarray  # int32 [k] or [B, k]; -1 pads
    gamma: np.ndarray  # float32 scalar or [B]
    threshold: np.ndarray  # float32 scalar or [B]
    targets: np.ndarray  # float32, the ids' shape; 0 at padding (and for the modes that ignore targets)
    layer: int | None  # the FeatureSets' layer (None for raw ids)


def resolve_edit(features: Any, sae: SAE, *, mode: str, gamma: Any = None, threshold: Any = None,
                 targets: Any = None) -> Edit:
    """Check the arguments of an intervention against `sae` and `mode`; gamma defaults to the
    FeatureSet's (else -0.5), threshold to 0 (any selected feature active). `threshold` is for
    the gated modes and `targets` for "replace" only: given to another mode, they are errors."""
    check_mode(mode)
    ids, set_gamma, set_layer = resolve_features(features, sae, mode=mode)
    gamma = (set_gamma if set_gamma is not None else -0.5) if gamma is None else gamma
    if threshold is not None and mode not in GATED_MODES:
        raise ConfigError(f"a threshold gates only the modes {GATED_MODES}, not {mode!r}")
    if targets is not None and mode != "replace":
        raise ConfigError(f"targets are for mode 'replace' only, not {mode!r}")
    targets = target_array(targets, ids) if mode == "replace" else np.zeros(ids.shape, np.float32)
    return Edit(ids, _finite_per_image(gamma, "gamma"), _finite_per_image(0.0 if threshold is None else threshold,
                                                                          "threshold"), targets, set_layer)


def per_image_ids(sets: Sequence[Any], sae: SAE, k: int | None = None) -> np.ndarray:
    """Stack one feature set per image into [B, k] ids, padding with -1 (multi-tenant batches)."""
    rows = [resolve_features(s, sae)[0].reshape(-1) for s in sets]
    if not rows:
        raise InputError("per_image_ids needs at least one feature set")
    width = k or max(len(r) for r in rows)
    if any(len(r) > width for r in rows):
        raise InputError(f"a feature set has more than k={width} ids")
    return np.stack([np.pad(r, (0, width - len(r)), constant_values=-1) for r in rows])


def intervention_args(sae: SAE, features: Any, *, gamma: Any, num_tokens: int, where: str = "all",
                      dtype=jnp.float32, threshold: Any = 0.0, targets: Any = None) -> InterventionArgs:
    """The traced hook arguments. Every field is an array of a fixed shape in every mode (targets
    zero unless given), so a new gamma, threshold or set of targets reuses the compiled forward."""
    ids, _, _ = resolve_features(features, sae)
    params = {name: jnp.asarray(value) for name, value in sae.params.items()}
    targets = np.zeros(ids.shape, np.float32) if targets is None else target_array(targets, ids)
    return InterventionArgs(params, jnp.asarray(ids), jnp.asarray(gamma, jnp.float32),
                            jnp.asarray(token_mask(num_tokens, where)), jnp.asarray(threshold, jnp.float32),
                            jnp.asarray(targets))


def unlearn(encoder, sae: SAE, features: Any, layer: int | None = None, gamma: Any = None,
            mode: str = "reconstruct", where: str = "all", threshold: Any = None, targets: Any = None):
    """An encoder with the concept's SAE features edited at `layer` (paper eq. 6 and variants).

    Args:
      encoder: a `VisionEncoder`.
      sae: the SAE trained on `layer` of this encoder.
      features: a FeatureSet, a list of them (their union: a feature two sets share is edited
        once), feature ids [k], or ids [B, k] (one set per image, -1 pads; see `per_image_ids`).
      layer, gamma: default to the FeatureSet's (else -2 and -0.5); gamma may be one value per image [B].
      mode: "reconstruct" (the paper), "delta" (keeps the SAE's reconstruction error), "gated"
        (delta at the tokens where the concept is active only) or "replace" (the selected
        latents set to `targets` at those tokens); see the module docstring for the equations.
      where: "all" tokens, "patch" tokens only, or the "cls" token only.
      threshold: gated and replace: a token is edited iff one of its selected latents exceeds
        it (default 0: any selected feature active); a scalar or one value per image [B].
      targets: replace only: each feature's mean activation on images without the concept, as
        an array aligned with the ids ([k], or [B, k] for per-image ids; see
        `sauce_jax.replacement_targets`), a {feature id: target} mapping, or "zero".

    Returns a `VisionEncoder` with the same `hidden_states` contract; the intervention is a
    hook whose SAE arrays, ids, gamma, threshold, targets and mask are traced arguments.
    """
    edit = resolve_edit(features, sae, mode=mode, gamma=gamma, threshold=threshold, targets=targets)
    layer = encoder.layer_index(layer if layer is not None else edit.layer if edit.layer is not None else -2)
    if sae.config.d_in != encoder.config.hidden_size:
        raise InputError(f"SAE d_in={sae.config.d_in} differs from the encoder width {encoder.config.hidden_size}")
    args = intervention_args(sae, edit.ids, gamma=edit.gamma, num_tokens=encoder.config.num_tokens, where=where,
                             threshold=edit.threshold, targets=edit.targets)
    return encoder.with_hooks({layer: (make_hook(mode, sae.config), args)})
