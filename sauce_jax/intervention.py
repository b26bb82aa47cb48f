"""The SAUCE intervention (paper eq. 6) as pure hook functions, and `unlearn`.

Two modes, applied to one hidden state x [B, T, D] at the tokens a mask selects:

    reconstruct (the paper): x -> decode(z'),  z'_i = gamma * z_i for i in F, z'_i = z_i otherwise
    delta:                   x -> x + sum_{i in F} (gamma - 1) z_i W_dec[i]

`delta` keeps the SAE's reconstruction error, so gamma = 1 is exactly the identity, and for
standard and BatchTopK SAEs it computes only the k selected latents. Feature ids, gamma, the
token mask and the SAE arrays are traced arguments: any concept set of the same size reuses
the compiled forward. Ids of -1 are padding (no feature), so sets of different sizes can
share one shape; ids of shape [B, k] give each image of a batch its own set.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sauce_jax import sae as sae_lib
from sauce_jax.errors import ConfigError, InputError
from sauce_jax.sae import SAE, SAEConfig
from sauce_jax.scoring import FeatureSet

MODES = ("reconstruct", "delta")
WHERE = ("all", "patch", "cls")


class InterventionArgs(NamedTuple):
    """The traced inputs of an intervention hook."""

    params: dict  # SAE params
    feature_ids: jax.Array  # int32 [k] or [B, k]; -1 = padding
    gamma: jax.Array  # float32 scalar or [B]
    token_mask: jax.Array  # bool [T]: where the intervention applies


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


def _selected(ids: jax.Array, d_sae: int, batch: int) -> tuple[jax.Array, jax.Array]:
    """Per-image ids [B, k] (padding clipped to 0) and validity [B, k]."""
    if ids.ndim == 2 and ids.shape[0] not in (1, batch):  # shapes are static: this runs at trace time
        raise InputError(f"per-image feature ids hold {ids.shape[0]} sets for a batch of {batch} images")
    ids = jnp.broadcast_to(ids, (batch, ids.shape[-1]))
    return jnp.clip(ids, 0, d_sae - 1), ids >= 0


def _per_image_gamma(gamma: jax.Array, batch: int) -> jax.Array:
    if gamma.ndim > 1 or (gamma.ndim == 1 and gamma.shape[0] not in (1, batch)):
        raise InputError(f"gamma of shape {gamma.shape} does not fit a batch of {batch} images")
    return jnp.broadcast_to(gamma, (batch,))


def _apply_at(hidden, edited, mask):
    return jnp.where(mask[None, :, None], edited.astype(hidden.dtype), hidden)


@functools.lru_cache(maxsize=None)
def make_hook(mode: str, config: SAEConfig):
    """The hook function `(hidden, InterventionArgs) -> hidden` for a mode and SAE shape.

    Cached: the same (mode, config) gives the same function object, so the encoder's jit
    cache keys on it and a new concept set never recompiles."""
    if mode not in MODES:
        raise ConfigError(f"intervention mode {mode!r} is not one of {MODES}")

    def reconstruct(hidden: jax.Array, args: InterventionArgs) -> jax.Array:
        b = hidden.shape[0]  # hidden [B, T, D]
        x = hidden.astype(jnp.float32)
        ids, valid = _selected(args.feature_ids, config.d_sae, b)  # [B, k]
        gamma = _per_image_gamma(args.gamma, b)
        z = sae_lib.encode(args.params, x, config)  # [B, T, d_sae]
        # decode(z with z_F scaled by gamma) = decode(z) + sum_F (gamma - 1) z_i W_dec[i]: the
        # edit touches k decoder rows instead of rescaling all d_sae latents of every token.
        z_f = jnp.take_along_axis(z, ids[:, None, :], axis=-1)  # [B, T, k]
        coeff = jnp.where(valid[:, None, :], (gamma[:, None, None] - 1.0) * z_f, 0.0)
        edit = jnp.einsum("btk,bkd->btd", coeff, jnp.take(args.params["W_dec"], ids, axis=0))
        return _apply_at(hidden, sae_lib.decode(args.params, z) + edit, args.token_mask)

    def delta(hidden: jax.Array, args: InterventionArgs) -> jax.Array:
        b = hidden.shape[0]
        x = hidden.astype(jnp.float32)
        ids, valid = _selected(args.feature_ids, config.d_sae, b)  # [B, k]
        gamma = _per_image_gamma(args.gamma, b)
        p = args.params
        if config.is_topk:
            # Whether a latent survives TopK depends on all pre-activations: encode fully.
            z_all = sae_lib.encode(p, x, config)  # [B, T, d_sae]
            z = jnp.take_along_axis(z_all, ids[:, None, :], axis=-1)  # [B, T, k]
        else:
            w_enc = jnp.take(p["W_enc"], ids, axis=1).transpose(1, 0, 2)  # [B, D, k]
            pre = jnp.einsum("btd,bdk->btk", x - p["b_dec"], w_enc) + jnp.take(p["b_enc"], ids)[:, None, :]
            z = jax.nn.relu(pre)
            if config.has_threshold:
                z = jnp.where(z > jnp.take(p["threshold"], ids)[:, None, :], z, 0.0)
        coeff = jnp.where(valid[:, None, :], (gamma[:, None, None] - 1.0) * z, 0.0)  # [B, T, k]
        w_dec = jnp.take(p["W_dec"], ids, axis=0)  # [B, k, D]
        return _apply_at(hidden, x + jnp.einsum("btk,bkd->btd", coeff, w_dec), args.token_mask)

    return reconstruct if mode == "reconstruct" else delta


def resolve_features(features: Any, sae: SAE) -> tuple[np.ndarray, float | None, int | None]:
    """What `unlearn` and `torch_hook` accept as features (a FeatureSet, a list of them, ids [k]
    or per-image ids [B, k]), checked against `sae`: int32 ids, and the gamma and layer the
    sets carry (None for raw ids)."""
    if isinstance(features, FeatureSet):
        features.check_sae(sae)
        return np.asarray(features.feature_ids, np.int32), features.gamma, features.layer
    if isinstance(features, Sequence) and features and all(isinstance(f, FeatureSet) for f in features):
        return resolve_features(FeatureSet.union(*features), sae)
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
                      dtype=jnp.float32) -> InterventionArgs:
    ids, _, _ = resolve_features(features, sae)
    params = {name: jnp.asarray(value) for name, value in sae.params.items()}
    return InterventionArgs(params, jnp.asarray(ids), jnp.asarray(gamma, jnp.float32),
                            jnp.asarray(token_mask(num_tokens, where)))


def unlearn(encoder, sae: SAE, features: Any, layer: int | None = None, gamma: float | None = None,
            mode: str = "reconstruct", where: str = "all"):
    """An encoder with the concept's SAE features scaled by gamma at `layer` (paper eq. 6).

    Args:
      encoder: a `VisionEncoder`.
      sae: the SAE trained on `layer` of this encoder.
      features: a FeatureSet, a list of them (their union), feature ids [k], or ids [B, k]
        (one set per image, -1 pads; see `per_image_ids`).
      layer, gamma: default to the FeatureSet's (else -2 and -0.5).
      mode: "reconstruct" (the paper) or "delta" (keeps the SAE's reconstruction error).
      where: "all" tokens, "patch" tokens only, or the "cls" token only.

    Returns a `VisionEncoder` with the same `hidden_states` contract; the intervention is a
    hook whose SAE arrays, ids, gamma and mask are traced arguments.
    """
    ids, set_gamma, set_layer = resolve_features(features, sae)
    layer = encoder.layer_index(layer if layer is not None else set_layer if set_layer is not None else -2)
    gamma = (set_gamma if set_gamma is not None else -0.5) if gamma is None else gamma
    if sae.config.d_in != encoder.config.hidden_size:
        raise InputError(f"SAE d_in={sae.config.d_in} differs from the encoder width {encoder.config.hidden_size}")
    if not np.isfinite(np.asarray(gamma, np.float64)).all():
        raise ConfigError(f"gamma must be finite, got {gamma!r}")
    args = intervention_args(sae, ids, gamma=gamma, num_tokens=encoder.config.num_tokens, where=where)
    return encoder.with_hooks({layer: (make_hook(mode, sae.config), args)})
