"""Sparse autoencoders as pure functions over a params dict (SAELens names).

    z     = act((x - b_dec) @ W_enc + b_enc)          paper eq. 1 (act = ReLU for `standard`)
    x_hat = z @ W_dec + b_dec                          paper eq. 2
    loss  = ||x - x_hat||^2 + alpha * ||z||_1          paper eq. 3 (`standard`)

Params: `W_enc` [d_in, d_sae], `b_enc` [d_sae], `W_dec` [d_sae, d_in], `b_dec` [d_in], and for
`batchtopk` a per-feature inference `threshold` [d_sae]. Architectures: `standard` (ReLU + L1,
optionally weighted by decoder row norms as SAELens does), `topk` (keep the k largest
pre-activations per token) and `batchtopk` (keep the k * B largest over the batch while
training; a threshold at inference), both with the AuxK loss of Gao et al. for dead latents.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sauce_jax.errors import ConfigError, InputError
from sauce_jax.sae_config import SAEConfig

Params = dict[str, jax.Array]


@dataclasses.dataclass
class SAE:
    """A trained (or loaded) SAE: its params, its config, and free-form metadata
    (hooked model, layer, token choice, training figures) that travels with it on disk."""

    params: Params
    config: SAEConfig
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def fingerprint(self) -> str:
        """A short hash of the weights: FeatureSets record it to refuse a different SAE."""
        digest = hashlib.sha256()
        for name in sorted(self.params):
            array = np.asarray(jax.device_get(self.params[name]), np.float32)
            digest.update(name.encode())
            digest.update(str(array.shape).encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:16]


class SAEOutput(NamedTuple):
    x_hat: jax.Array  # [..., d_in]
    z: jax.Array  # [..., d_sae] feature activations
    pre: jax.Array  # [..., d_sae] pre-activations


class LossOutput(NamedTuple):
    loss: jax.Array  # scalar: what the optimizer minimizes
    mse: jax.Array  # mean over tokens of ||x - x_hat||^2
    l1: jax.Array  # mean over tokens of the (weighted) L1 of z
    l0: jax.Array  # mean active latents per token
    auxk: jax.Array  # AuxK loss (0 for standard)
    explained_variance: jax.Array  # 1 - SSE / SST over the batch
    fired: jax.Array  # [d_sae] bool: latent active on some token of the batch
    kth_value: jax.Array  # batchtopk: smallest kept activation (threshold estimate)


# -- forward ------------------------------------------------------------------------------
def _mm(a: jax.Array, b: jax.Array, compute_dtype) -> jax.Array:
    """a @ b in `compute_dtype` with float32 accumulation and result."""
    return jnp.matmul(a.astype(compute_dtype), b.astype(compute_dtype), preferred_element_type=jnp.float32)


def pre_activations(params: Params, x: jax.Array, compute_dtype=jnp.float32) -> jax.Array:
    """(x - b_dec) @ W_enc + b_enc. [..., d_in] -> [..., d_sae]"""
    return _mm(x - params["b_dec"], params["W_enc"], compute_dtype) + params["b_enc"]


def _topk_mask(pre: jax.Array, k: int) -> jax.Array:
    """Exactly k True per row of [..., d_sae]: the k largest pre-activations."""
    flat = pre.reshape(-1, pre.shape[-1])  # [N, d_sae]
    _, idx = jax.lax.top_k(flat, k)  # [N, k]
    mask = jnp.zeros(flat.shape, bool).at[jnp.arange(flat.shape[0])[:, None], idx].set(True)
    return mask.reshape(pre.shape)


def activate(pre: jax.Array, config: SAEConfig, *, threshold: jax.Array | None = None,
             training: bool = False) -> tuple[jax.Array, jax.Array]:
    """Feature activations from pre-activations; also returns batchtopk's kth value."""
    relu = jax.nn.relu(pre)
    if config.uses_l1:
        return relu, jnp.zeros((), pre.dtype)
    if config.is_topk:
        return jnp.where(_topk_mask(pre, config.k), relu, 0.0), jnp.zeros((), pre.dtype)
    # batchtopk: while training, the k * N largest activations of the whole batch survive, so
    # busy tokens get more latents and quiet ones fewer; at inference a fixed threshold
    # (learned as a running mean of the smallest kept value) replaces the batch.
    if training or threshold is None:
        flat = relu.reshape(-1)
        kept = min(config.k * (flat.shape[0] // config.d_sae), flat.shape[0])
        kth = jax.lax.top_k(flat, kept)[0][-1]
        return jnp.where(relu >= jnp.maximum(kth, 1e-30), relu, 0.0), kth
    return jnp.where(relu > threshold, relu, 0.0), jnp.zeros((), pre.dtype)


def encode(params: Params, x: jax.Array, config: SAEConfig, compute_dtype=jnp.float32) -> jax.Array:
    """Feature activations z, [..., d_in] -> [..., d_sae] (inference behaviour)."""
    z, _ = activate(pre_activations(params, x, compute_dtype), config, threshold=params.get("threshold"))
    return z


def decode(params: Params, z: jax.Array, compute_dtype=jnp.float32) -> jax.Array:
    """z @ W_dec + b_dec, [..., d_sae] -> [..., d_in]."""
    return _mm(z, params["W_dec"], compute_dtype) + params["b_dec"]


def forward(params: Params, x: jax.Array, config: SAEConfig, compute_dtype=jnp.float32) -> SAEOutput:
    pre = pre_activations(params, x, compute_dtype)
    z, _ = activate(pre, config, threshold=params.get("threshold"))
    return SAEOutput(decode(params, z, compute_dtype), z, pre)


# -- loss ---------------------------------------------------------------------------------
def loss(params: Params, x: jax.Array, config: SAEConfig, *, l1_coefficient: jax.Array | float | None = None,
         dead: jax.Array | None = None, compute_dtype=jnp.float32, sparse: bool = False) -> LossOutput:
    """The training loss on a batch of activations x [N, d_in].

    `l1_coefficient` overrides the config's (for an L1 warm-up); `dead` [d_sae] marks the
    latents the AuxK loss may use. `sparse` (topk, batchtopk): decode from the active latents
    only (gather + segment-sum), so the decoder and its gradient touch k rows per token and the
    decode cost no longer grows with d_sae; the result equals the dense path.
    """
    x = x.astype(jnp.float32)
    pre = pre_activations(params, x, compute_dtype)  # [N, d_sae]
    if sparse and config.uses_k:
        values, rows, cols, kth = _active_latents(pre, config)  # [M] each
        x_hat = _sparse_decode(params["W_dec"], values, rows, cols, x.shape[0], compute_dtype) + params["b_dec"]
        weight = jnp.linalg.norm(params["W_dec"], axis=-1)[cols] if config.l1_decoder_norm else 1.0
        l1 = jnp.sum(jnp.abs(values) * weight) / x.shape[0]
        l0 = jnp.sum(values > 0) / x.shape[0]
        fired = jnp.zeros((config.d_sae,), bool).at[cols].max(values > 0)
    else:
        z, kth = activate(pre, config, training=True)
        x_hat = decode(params, z, compute_dtype)  # [N, d_in]
        norms = jnp.linalg.norm(params["W_dec"], axis=-1) if config.l1_decoder_norm else 1.0
        l1 = jnp.mean(jnp.sum(jnp.abs(z) * norms, axis=-1))
        l0 = jnp.mean(jnp.sum(z > 0, axis=-1))
        fired = jnp.any(z > 0, axis=0)
    residual = x - x_hat
    mse = jnp.mean(jnp.sum(residual**2, axis=-1))
    total = mse
    if config.uses_l1:
        alpha = config.l1_coefficient if l1_coefficient is None else l1_coefficient
        total = total + alpha * l1
    auxk = jnp.zeros((), jnp.float32)
    if config.uses_auxk and dead is not None:
        auxk = _auxk_loss(params, pre, jax.lax.stop_gradient(residual), dead, config, compute_dtype, sparse)
        total = total + config.aux_coefficient * auxk
    sst = jnp.sum((x - x.mean(axis=0)) ** 2)
    return LossOutput(
        loss=total, mse=mse, l1=l1, l0=l0, auxk=auxk,
        explained_variance=1.0 - jnp.sum(residual**2) / jnp.maximum(sst, 1e-30),
        fired=fired, kth_value=kth,
    )


def _active_latents(pre: jax.Array, config: SAEConfig):
    """The latents TopK / BatchTopK keep, as (values, token rows, feature cols, kth value)."""
    n, d_sae = pre.shape
    if config.is_topk:
        values, cols = jax.lax.top_k(pre, config.k)  # [N, k]
        rows = jnp.broadcast_to(jnp.arange(n)[:, None], cols.shape)
        return jax.nn.relu(values).reshape(-1), rows.reshape(-1), cols.reshape(-1), jnp.zeros((), pre.dtype)
    kept = min(config.k * n, n * d_sae)
    values, flat = jax.lax.top_k(jax.nn.relu(pre).reshape(-1), kept)  # [k * N]
    kth = values[-1]
    values = jnp.where(values >= jnp.maximum(kth, 1e-30), values, 0.0)
    return values, flat // d_sae, flat % d_sae, kth


def _sparse_decode(w_dec, values, rows, cols, n: int, compute_dtype) -> jax.Array:
    """sum over active (row, col) of values * W_dec[col], per row: [N, d_in] without d_sae work."""
    contrib = values.astype(compute_dtype)[:, None] * jnp.take(w_dec, cols, axis=0).astype(compute_dtype)  # [M, d_in]
    return jax.ops.segment_sum(contrib.astype(jnp.float32), rows, num_segments=n)


def _auxk_loss(params, pre, residual, dead, config: SAEConfig, compute_dtype, sparse: bool = False) -> jax.Array:
    """Reconstruct the residual from the top aux_k dead latents (Gao et al. 2024)."""
    masked = jnp.where(dead, pre, -jnp.inf)  # [N, d_sae]
    if sparse:
        values, cols = jax.lax.top_k(masked, config.resolved_aux_k)  # [N, aux_k]
        values = jnp.where(dead[cols], jax.nn.relu(values), 0.0)
        rows = jnp.broadcast_to(jnp.arange(pre.shape[0])[:, None], cols.shape)
        recon = _sparse_decode(params["W_dec"], values.reshape(-1), rows.reshape(-1), cols.reshape(-1),
                               pre.shape[0], compute_dtype)
    else:
        z_aux = jnp.where(_topk_mask(masked, config.resolved_aux_k) & dead, jax.nn.relu(pre), 0.0)
        recon = _mm(z_aux, params["W_dec"], compute_dtype)
    err = recon - residual
    scale = jnp.minimum(jnp.sum(dead) / config.resolved_aux_k, 1.0)
    return scale * jnp.mean(jnp.sum(err**2, axis=-1))


# -- initialisation and constraints --------------------------------------------------------
def geometric_median(points: jax.Array, *, iterations: int = 100, tolerance: float = 1e-7) -> jax.Array:
    """The point minimizing the sum of Euclidean distances to `points` [N, d] (Weiszfeld).

    Starts from the mean; stops when the step is below `tolerance` times the scale.
    """
    points = jnp.asarray(points, jnp.float32)
    if points.ndim != 2 or points.shape[0] == 0:
        raise InputError(f"geometric_median needs points [N, d] with N > 0, got shape {points.shape}")

    def body(state):
        guess, _, i = state
        dist = jnp.linalg.norm(points - guess, axis=-1)
        weights = 1.0 / jnp.maximum(dist, 1e-12)
        new = jnp.sum(points * weights[:, None], axis=0) / jnp.sum(weights)
        return new, jnp.linalg.norm(new - guess), i + 1

    def cond(state):
        guess, step, i = state
        return (i < iterations) & (step > tolerance * (1.0 + jnp.linalg.norm(guess)))

    start = points.mean(axis=0)
    median, _, _ = jax.lax.while_loop(cond, body, (start, jnp.asarray(jnp.inf), 0))
    return median


def normalize_decoder(params: Params) -> Params:
    """Decoder rows scaled to unit norm (the optional constraint)."""
    norms = jnp.linalg.norm(params["W_dec"], axis=-1, keepdims=True)
    return {**params, "W_dec": params["W_dec"] / jnp.maximum(norms, 1e-12)}


def init_params(key: jax.Array, config: SAEConfig, sample: jax.Array | None = None,
                dtype=jnp.float32) -> Params:
    """Unit-norm random decoder rows, encoder = decoder transposed, zero b_enc, and b_dec the
    geometric median of `sample` [N, d_in] (zeros without a sample)."""
    w_dec = jax.random.normal(key, (config.d_sae, config.d_in), jnp.float32)
    w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
    if sample is not None:
        sample = jnp.asarray(sample)
        if sample.ndim != 2 or sample.shape[-1] != config.d_in:
            raise InputError(f"SAE init sample must be [N, d_in={config.d_in}], got shape {sample.shape}")
        b_dec = geometric_median(sample)
    else:
        b_dec = jnp.zeros((config.d_in,), jnp.float32)
    params = {"W_enc": w_dec.T, "b_enc": jnp.zeros((config.d_sae,)), "W_dec": w_dec, "b_dec": b_dec}
    if config.has_threshold:
        params["threshold"] = jnp.zeros((config.d_sae,))
    return {name: value.astype(dtype) for name, value in params.items()}



def stored_config(stored: Any, d_in: int, d_sae: int, where: str, label: str) -> SAEConfig:
    """The SAEConfig that `save_sae` stored beside a file (`label` names that object in the file,
    for the error): every field but the widths, which come from the tensors."""
    if not isinstance(stored, dict):
        raise ConfigError(f"{where}: {label} must be an object with a 'config' object")
    known = [f.name for f in dataclasses.fields(SAEConfig) if f.name not in ("d_in", "d_sae")]
    unknown = sorted(set(stored) - set(known))
    if unknown:
        raise ConfigError(f"{where}: {label}['config'] has unknown field(s) {unknown}; known: {known}")
    try:
        return SAEConfig(d_in=d_in, d_sae=d_sae, **stored)
    except (ConfigError, TypeError) as exc:  # TypeError: a value of the wrong type
        raise ConfigError(f"{where}: {label}['config'] is invalid: {exc}") from exc

def check_params(params: Params, config: SAEConfig, origin: str = "SAE") -> None:
    """Raise if `params` lacks a tensor or has the wrong shape for `config`."""
    expected = {
        "W_enc": (config.d_in, config.d_sae), "b_enc": (config.d_sae,),
        "W_dec": (config.d_sae, config.d_in), "b_dec": (config.d_in,),
    }
    if config.has_threshold:
        expected["threshold"] = (config.d_sae,)
    for name, shape in expected.items():
        if name not in params:
            raise InputError(f"{origin}: missing parameter {name!r}")
        if tuple(params[name].shape) != shape:
            raise InputError(f"{origin}: parameter {name!r} has shape {tuple(params[name].shape)}, expected {shape}")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise InputError(f"{origin}: unexpected parameter(s) {extra}")
