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
import functools
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _centred_matmul(x: jax.Array, b_dec: jax.Array, w_enc: jax.Array, compute_dtype) -> jax.Array:
    """(x - b_dec) @ W_enc. Its gradient for b_dec is -W_enc @ (the cotangent summed over rows), a
    matrix-vector product, where autodiff would multiply the whole [N, d_sae] cotangent by W_enc^T
    first: one [N, d_sae] x [d_sae, d_in] product less per train step, same values."""
    return _mm(x - b_dec, w_enc, compute_dtype)


def _centred_matmul_fwd(x, b_dec, w_enc, compute_dtype):
    return _mm(x - b_dec, w_enc, compute_dtype), (x, b_dec, w_enc)


def _centred_matmul_bwd(compute_dtype, residuals, g):
    x, b_dec, w_enc = residuals
    xc = (x - b_dec).reshape(-1, x.shape[-1])  # [N, d_in]
    g2 = g.reshape(-1, g.shape[-1])  # [N, d_sae]
    d_w = _mm(xc.T, g2, compute_dtype).astype(w_enc.dtype)
    d_b = -jnp.matmul(w_enc.astype(jnp.float32), jnp.sum(g2, axis=0)).astype(b_dec.dtype)
    d_x = _mm(g, w_enc.T, compute_dtype).astype(x.dtype)  # unused by training: jit drops it
    return d_x, d_b, d_w


_centred_matmul.defvjp(_centred_matmul_fwd, _centred_matmul_bwd)


def pre_activations(params: Params, x: jax.Array, compute_dtype=jnp.float32) -> jax.Array:
    """(x - b_dec) @ W_enc + b_enc. [..., d_in] -> [..., d_sae]"""
    return _centred_matmul(x, params["b_dec"], params["W_enc"], compute_dtype) + params["b_enc"]


def _top_k_indices(pre: jax.Array, k: int, recall_target: float = 1.0) -> jax.Array:
    """Indices of the k largest entries of each row of [N, d]: exact (`lax.top_k`), or with
    `recall_target` < 1 through `lax.approx_max_k` (faster on TPU; exact elsewhere)."""
    if recall_target < 1.0:
        return jax.lax.approx_max_k(pre, k, recall_target=recall_target)[1]
    return jax.lax.top_k(pre, k)[1]


def _topk_mask(pre: jax.Array, k: int, recall_target: float = 1.0) -> jax.Array:
    """Exactly k True per row of [..., d_sae]: the k largest pre-activations."""
    flat = jax.lax.stop_gradient(pre).reshape(-1, pre.shape[-1])  # [N, d_sae]
    idx = _top_k_indices(flat, k, recall_target)  # [N, k]
    mask = jnp.zeros(flat.shape, bool).at[jnp.arange(flat.shape[0])[:, None], idx].set(True)
    return mask.reshape(pre.shape)


def _kth_largest(values: jax.Array, kept: int) -> jax.Array:
    """The kept-th largest of the non-negative float32 `values` (any shape), exactly: a bisection on
    their bit patterns (ordered like the values for non-negative floats), 31 passes of a compare
    and a count. It replaces `lax.top_k(values.ravel(), kept)[0][-1]`, which XLA turns into a full
    sort of the batch (100 ms on one CPU core at 256 x 2,048, against 3 ms)."""
    keys = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(values).astype(jnp.float32), jnp.int32)
    keys = jnp.maximum(keys, 0)  # -0.0 counts as 0

    def body(_, bounds):
        low, high = bounds  # count(keys >= low) >= kept > count(keys >= high)
        mid = low + (high - low) // 2
        enough = jnp.sum(keys >= mid) >= kept
        return jnp.where(enough, mid, low), jnp.where(enough, high, mid)

    low, _ = jax.lax.fori_loop(0, 32, body, (jnp.int32(0), jnp.int32(0x7F800001)))
    return jax.lax.bitcast_convert_type(low, jnp.float32)


def _batch_kept(config: SAEConfig, n_tokens: int) -> int:
    """How many activations BatchTopK keeps in a batch of n_tokens: k per token on average."""
    return min(config.k * n_tokens, n_tokens * config.d_sae)


def activate(pre: jax.Array, config: SAEConfig, *, threshold: jax.Array | None = None,
             training: bool = False, recall_target: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Feature activations from pre-activations; also returns batchtopk's kth value."""
    relu = jax.nn.relu(pre)
    if config.uses_l1:
        return relu, jnp.zeros((), pre.dtype)
    if config.is_topk:
        return jnp.where(_topk_mask(pre, config.k, recall_target), relu, 0.0), jnp.zeros((), pre.dtype)
    # batchtopk: while training, the k * N largest activations of the whole batch survive, so
    # busy tokens get more latents and quiet ones fewer; at inference a fixed threshold
    # (learned as a running mean of the smallest kept value) replaces the batch.
    if training or threshold is None:
        kept = _batch_kept(config, relu.size // config.d_sae)
        kth = _kth_largest(relu, kept)
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
# Dense decoding multiplies the [N, d_sae] latents by W_dec three times per step (forward, the
# latents' gradient, W_dec's gradient) and the encoder's gradient is one more [N, d_sae] product;
# sparse decoding gathers and scatter-adds N * k rows of d_in instead. The ratio d_sae / k above
# which sparse costs less depends on how fast a backend multiplies matrices against how fast it
# gathers and scatters rows. CPU (one core, jax 0.10, benchmarks/sae_step.py): sparse level with
# dense at d_sae / k = 64 (256 x 2,048, k 32), 1.8x at 512 (128 x 16,384, k 32), and 5x slower
# at 16 (AuxK's aux_k = 128 over 2,048). GPU: an estimate from matmul throughput against
# scatter-add bandwidth, not yet measured; TPU: high, its gathers are slow.
SPARSE_BREAK_EVEN = {"cpu": 64, "gpu": 2048, "tpu": 4096}


def sparse_pays(config: SAEConfig, k: int | None = None, backend: str | None = None) -> bool:
    """Whether decoding from the k active latents of each token costs less than the dense decode
    on `backend` (default: JAX's default backend): d_sae >= SPARSE_BREAK_EVEN[backend] * k.
    Never for the standard SAE, whose latents are not k per token."""
    if not config.uses_k:
        return False
    backend = backend or jax.default_backend()
    return config.d_sae >= SPARSE_BREAK_EVEN.get(backend, SPARSE_BREAK_EVEN["gpu"]) * (k or config.k)


def loss(params: Params, x: jax.Array, config: SAEConfig, *, l1_coefficient: jax.Array | float | None = None,
         dead: jax.Array | None = None, compute_dtype=jnp.float32, sparse: bool | None = None,
         recall_target: float = 1.0, dead_columns: int | None = None) -> LossOutput:
    """The training loss on a batch of activations x [N, d_in].

    `l1_coefficient` overrides the config's (for an L1 warm-up); `dead` [d_sae] marks the
    latents the AuxK loss may use (None: no AuxK term; with no latent dead the term is 0, and
    the train step then takes the gradient of the loss without it, see `loss_and_grad`).
    `sparse` (topk, batchtopk): work from the active latents only: the decoder, its gradient and
    the encoder's gradient touch k rows per token (gather + scatter-add), so nothing but the
    encoder's forward product grows with d_sae; the result equals the dense path. None (the
    default) chooses by cost (`sparse_pays`). `recall_target` < 1 (topk): select the k latents
    with `lax.approx_max_k` at that recall (a TPU speed-up; exact on CPU and GPU).
    `dead_columns`: a bound, known before the step, on how many latents are dead; AuxK is then
    computed on that many columns instead of all d_sae (`_auxk_reconstruction`).
    """
    x = x.astype(jnp.float32)
    n = x.shape[0]
    if sparse is None:
        sparse = sparse_pays(config)
    sparse = bool(sparse) and config.uses_k
    if sparse:
        pre = jax.lax.stop_gradient(pre_activations(params, x, compute_dtype))  # [N, d_sae], selection only
        rows, cols, valid, kth = _active_latents(pre, config, recall_target)  # [M] each
        values = jax.nn.relu(_picked_pre(x, params["b_dec"], params["W_enc"], params["b_enc"], pre, rows, cols))
        if valid is not None:
            values = jnp.where(valid, values, 0.0)
        x_hat = _sparse_decode(params["W_dec"], values, rows, cols, n, config.k if config.is_topk else None,
                               compute_dtype) + params["b_dec"]
        weight = jnp.linalg.norm(params["W_dec"], axis=-1)[cols] if config.l1_decoder_norm else 1.0
        l1 = jnp.sum(jnp.abs(values) * weight) / n
        l0 = jnp.sum(values > 0) / n
        fired = jnp.zeros((config.d_sae,), bool).at[cols].max(values > 0)
    else:
        pre = pre_activations(params, x, compute_dtype)  # [N, d_sae]
        z, kth = activate(pre, config, training=True, recall_target=recall_target)
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
        auxk = _auxk_loss(params, x, pre, jax.lax.stop_gradient(residual), dead, config=config,
                          compute_dtype=compute_dtype, sparse=sparse, recall_target=recall_target,
                          columns=dead_columns)
        total = total + config.aux_coefficient * auxk
    sst = jnp.sum((x - x.mean(axis=0)) ** 2)
    return LossOutput(
        loss=total, mse=mse, l1=l1, l0=l0, auxk=auxk,
        explained_variance=1.0 - jnp.sum(residual**2) / jnp.maximum(sst, 1e-30),
        fired=fired, kth_value=kth,
    )


def loss_and_grad(loss_fn, trainable, dead: jax.Array | None, config: SAEConfig):
    """`jax.value_and_grad(loss_fn, has_aux=True)(trainable, dead)` for a `loss_fn(trainable,
    dead)` returning (loss, LossOutput), with the AuxK work only where it counts: while no
    latent is dead, a `lax.cond` takes the branch that calls `loss_fn(trainable, None)`, which
    computes no AuxK at all (the term is 0 then, by its min(#dead / aux_k, 1) scale). Both
    branches are compiled; one runs. (A cond inside the loss would not do: its gradient
    carries the AuxK branch's intermediates out of both branches, zero-filled in the idle one.)"""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if dead is None or not config.uses_auxk:
        return grad_fn(trainable, None)
    return jax.lax.cond(jnp.any(dead), lambda t: grad_fn(t, dead), lambda t: grad_fn(t, None), trainable)


def _active_latents(pre: jax.Array, config: SAEConfig, recall_target: float = 1.0):
    """The latents TopK / BatchTopK keep, as (token rows, feature cols, valid or None, kth value),
    flat [M]: TopK's M = N * k, row by row; BatchTopK's M = k * N slots, of which the first
    `count` hold the kept (row, col) pairs in row-major order and the rest are padding."""
    n, d_sae = pre.shape
    if config.is_topk:
        cols = _top_k_indices(pre, config.k, recall_target)  # [N, k]
        rows = jnp.broadcast_to(jnp.arange(n)[:, None], cols.shape)
        return rows.reshape(-1), cols.reshape(-1), None, jnp.zeros((), pre.dtype)
    relu = jax.nn.relu(pre)
    kept = _batch_kept(config, n)
    kth = _kth_largest(relu, kept)
    mask = (relu >= jnp.maximum(kth, 1e-30)).reshape(-1)
    flat = jnp.nonzero(mask, size=kept, fill_value=0)[0]  # [kept], row-major: rows come sorted
    valid = jnp.arange(kept) < jnp.sum(mask)
    return flat // d_sae, flat % d_sae, valid, kth


@jax.custom_vjp
def _picked_pre(x, b_dec, w_enc, b_enc, pre, rows, cols):
    """pre[rows, cols] of pre = (x - b_dec) @ W_enc + b_enc (passed in, already computed), with
    the gradient of that formula taken sparsely: W_enc's and b_enc's by a scatter-add of the M
    picked entries, b_dec's as -W_enc @ (b_enc's gradient); no [N, d_sae] array in the backward."""
    return pre[rows, cols]


def _picked_pre_fwd(x, b_dec, w_enc, b_enc, pre, rows, cols):
    return pre[rows, cols], (x, b_dec, w_enc, b_enc, pre, rows, cols)


def _picked_pre_bwd(residuals, g):
    x, b_dec, w_enc, b_enc, pre, rows, cols = residuals
    g = g.astype(jnp.float32)
    # Scatter-add into W_enc^T's layout (rows of d_in, as the gather of W_dec), then transpose.
    d_w = jnp.zeros(w_enc.shape[::-1], jnp.float32).at[cols].add((x - b_dec)[rows] * g[:, None]).T
    d_b_enc = jnp.zeros(b_enc.shape, jnp.float32).at[cols].add(g)
    d_b_dec = -jnp.matmul(w_enc.astype(jnp.float32), d_b_enc)
    d_x = jnp.zeros(x.shape, jnp.float32).at[rows].add(g[:, None] * w_enc.T[cols])  # unused by training: dropped
    return (d_x.astype(x.dtype), d_b_dec.astype(b_dec.dtype), d_w.astype(w_enc.dtype), d_b_enc.astype(b_enc.dtype),
            jnp.zeros_like(pre), None, None)


_picked_pre.defvjp(_picked_pre_fwd, _picked_pre_bwd)


def _sparse_decode(w_dec, values, rows, cols, n: int, per_row: int | None, compute_dtype) -> jax.Array:
    """sum over active (row, col) of values * W_dec[col], per row: [N, d_in] without d_sae work.
    `per_row`: every row has exactly that many entries, in order (TopK): a sum over them;
    otherwise (BatchTopK) a segment sum over the sorted rows."""
    contrib = values.astype(compute_dtype)[:, None] * jnp.take(w_dec, cols, axis=0).astype(compute_dtype)  # [M, d_in]
    contrib = contrib.astype(jnp.float32)
    if per_row is not None:
        return jnp.sum(contrib.reshape(n, per_row, -1), axis=1)
    return jax.ops.segment_sum(contrib, rows, num_segments=n, indices_are_sorted=True)


def _auxk_loss(params, x, pre, residual, dead, *, config: SAEConfig, compute_dtype, sparse: bool = False,
               recall_target: float = 1.0, columns: int | None = None) -> jax.Array:
    """Reconstruct the residual from the top aux_k dead latents (Gao et al. 2024). `pre` carries
    its gradient on the dense path; on the sparse path it is selection-only, and the AuxK term
    (which runs only on steps with dead latents) recomputes it with its dense gradient: aux_k is
    d_in / 2, far above k, where gathering aux_k rows per token costs more than the products.
    The decode is sparse only where `sparse_pays` for aux_k. With `columns` (a bound on how many
    latents are dead) the term is computed on the dead latents' columns only
    (`_auxk_reconstruction`)."""
    aux_k = config.resolved_aux_k
    n = pre.shape[0]
    if columns is not None and columns < config.d_sae:
        recon = _auxk_reconstruction(params, x, dead, columns, aux_k, compute_dtype, recall_target)
    else:
        if sparse:
            pre = pre_activations(params, x, compute_dtype)
        masked = jnp.where(dead, jax.lax.stop_gradient(pre), -jnp.inf)  # [N, d_sae]
        if sparse and sparse_pays(config, k=aux_k):
            cols = _top_k_indices(masked, aux_k, recall_target)  # [N, aux_k]
            values = jnp.where(dead[cols], jax.nn.relu(jnp.take_along_axis(pre, cols, axis=1)), 0.0)
            recon = _sparse_decode(params["W_dec"], values.reshape(-1), None, cols.reshape(-1), n, aux_k,
                                   compute_dtype)
        else:
            z_aux = jnp.where(_topk_mask(masked, aux_k, recall_target) & dead, jax.nn.relu(pre), 0.0)
            recon = _mm(z_aux, params["W_dec"], compute_dtype)
    err = recon - residual
    scale = jnp.minimum(jnp.sum(dead) / aux_k, 1.0)
    return scale * jnp.mean(jnp.sum(err**2, axis=-1))


def _auxk_reconstruction(params, x, dead, columns: int, aux_k: int, compute_dtype,
                         recall_target: float = 1.0) -> jax.Array:
    """AuxK's reconstruction [N, d_in] from the dead latents' columns alone: their encoder
    columns and decoder rows gathered (in index order, padded with a live latent up to `columns`,
    which must be at least the number of dead latents and at least aux_k), the top aux_k of each
    token among them, decoded. The same term and gradients as over all d_sae latents (to float
    rounding), with [N, columns] products in place of [N, d_sae] ones: a few percent of the
    latents are dead once any are, and the whole-width AuxK tripled a CPU step."""
    live = jnp.argmin(dead)  # a latent that is not dead (one exists: fewer than d_sae are dead)
    idx = jnp.nonzero(dead, size=columns, fill_value=live)[0]  # [C], the dead latents first
    is_dead = dead[idx]  # [C]
    pre = _centred_matmul(x, params["b_dec"], params["W_enc"][:, idx], compute_dtype) + params["b_enc"][idx]  # [N, C]
    masked = jnp.where(is_dead, jax.lax.stop_gradient(pre), -jnp.inf)
    z_aux = jnp.where(_topk_mask(masked, aux_k, recall_target) & is_dead, jax.nn.relu(pre), 0.0)  # [N, C]
    return _mm(z_aux, params["W_dec"][idx], compute_dtype)


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


# The norm of the random decoder rows at initialisation: unit rows for every architecture.
# SAELens' TopK trainer starts at 0.1 (`TrainConfig.decoder_init_norm=0.1` does the same): on its
# planted-feature data (tests/benchmarks/test_planted.py) that lifts our mean MCC from 0.590 to
# 0.633 (SAELens 0.648), but the short-budget TopK SAEs of ConceptWorld (108 steps) then
# reconstruct so poorly that the SAE alone collapses the VLM (utility score 0.13 against > 0.5
# with unit rows), so it is not the default.
DECODER_INIT_NORM = {"standard": 1.0, "topk": 1.0, "batchtopk": 1.0}


def init_params(key: jax.Array, config: SAEConfig, sample: jax.Array | None = None,
                dtype=jnp.float32, *, decoder_norm: float | None = None) -> Params:
    """Random decoder rows of norm `decoder_norm` (default DECODER_INIT_NORM[architecture]),
    encoder = decoder transposed, zero b_enc, and b_dec the geometric median of `sample`
    [N, d_in] (zeros without a sample)."""
    norm = DECODER_INIT_NORM[config.architecture] if decoder_norm is None else decoder_norm
    w_dec = jax.random.normal(key, (config.d_sae, config.d_in), jnp.float32)
    w_dec = norm * w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
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
