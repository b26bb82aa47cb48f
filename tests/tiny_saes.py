"""Random SAEs for intervention tests, and the features that fire on a hidden state.

Importable from every test folder (pytest's `pythonpath` holds tests/).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sauce_jax.sae import SAE, SAEConfig, encode, init_params

K = 6  # features unlearned


def make_sae(architecture: str, d_in: int, seed: int = 0) -> SAE:
    """A random SAE on which a healthy fraction of latents fire on CLIP hidden states."""
    config = SAEConfig(d_in, 4 * d_in, architecture, k=None if architecture == "standard" else 8)
    params = init_params(jax.random.key(seed), config)
    # init_params zeroes b_enc: shift it so that firing differs between latents.
    params["b_enc"] = 0.3 * jax.random.normal(jax.random.key(seed + 1), (config.d_sae,)) - 0.1
    if architecture == "batchtopk":
        params["threshold"] = jax.random.uniform(jax.random.key(seed + 2), (config.d_sae,), minval=0.2, maxval=0.8)
    return SAE(params, config)


_encode = jax.jit(encode, static_argnums=2)  # one compile per SAE config, not one per op


def busiest_features(sae: SAE, hidden) -> np.ndarray:
    """K latents that fire on `hidden` [B, T, D]: the largest mean activations over all
    tokens, plus the two largest on the CLS token (at layer 0 it is the same vector for every
    image, and TopK latents busy on the patches may miss it)."""
    z = np.asarray(_encode(sae.params, jnp.asarray(np.asarray(hidden)), sae.config))  # [B, T, d_sae]
    assert 0.02 < (z > 0).mean() < 0.8, (z > 0).mean()
    on_cls = [int(i) for i in np.argsort(-z[:, 0].mean(axis=0))[:2]]
    overall = [int(i) for i in np.argsort(-z.mean(axis=(0, 1))) if i not in on_cls]
    return np.array(on_cls + overall[:K - 2], np.int32)


def toy_sae(d_in: int, d_sae: int, seed: int) -> SAE:
    """A random standard SAE whose latents fire readily (encoder bias lifted)."""
    config = SAEConfig(d_in=d_in, d_sae=d_sae)
    params = init_params(jax.random.key(seed), config)
    params["b_enc"] = params["b_enc"] + 0.05
    return SAE(params, config)


def square_images(seed: int, n: int, color=None) -> np.ndarray:
    """[n, 40, 40, 3] uint8 noise images, with a colored square (the "concept") when `color` is given."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)
    if color is not None:
        out[:, 10:30, 10:30] = color
    return out
