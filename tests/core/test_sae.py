"""Pure SAE functions: equations, architectures, initialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from sauce_jax import ConfigError, InputError
from sauce_jax import sae as S


def random_params(cfg, seed=0):
    params = S.init_params(jax.random.key(seed), cfg)
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(np.asarray(v) + 0.1 * rng.standard_normal(v.shape).astype(np.float32)) for k, v in params.items()}


def test_standard_matches_the_paper_equations():
    cfg = S.SAEConfig(d_in=6, d_sae=20, l1_coefficient=0.01)
    p = random_params(cfg)
    x = np.random.default_rng(1).standard_normal((9, 6)).astype(np.float32)
    P = {k: np.asarray(v, np.float64) for k, v in p.items()}
    z = np.maximum((x - P["b_dec"]) @ P["W_enc"] + P["b_enc"], 0)  # eq. 1
    x_hat = z @ P["W_dec"] + P["b_dec"]  # eq. 2
    loss = np.mean(np.sum((x - x_hat) ** 2, -1)) + 0.01 * np.mean(np.sum(np.abs(z), -1))  # eq. 3
    out = S.loss(p, jnp.asarray(x), cfg)
    np.testing.assert_allclose(np.asarray(S.encode(p, x, cfg)), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(S.forward(p, x, cfg).x_hat), x_hat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(out.loss), loss, rtol=1e-5)
    np.testing.assert_allclose(float(out.l0), np.mean(np.sum(z > 0, -1)), rtol=1e-6)


def test_decoder_norm_weighted_l1():
    cfg = S.SAEConfig(d_in=6, d_sae=20, l1_coefficient=0.5, l1_decoder_norm=True)
    p = random_params(cfg, 2)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((5, 6)), jnp.float32)
    z = np.asarray(S.encode(p, x, cfg))
    norms = np.linalg.norm(np.asarray(p["W_dec"]), axis=-1)
    np.testing.assert_allclose(float(S.loss(p, x, cfg).l1), np.mean(np.sum(z * norms, -1)), rtol=1e-5)


def test_topk_keeps_exactly_k():
    cfg = S.SAEConfig(d_in=8, d_sae=64, architecture="topk", k=5)
    p = random_params(cfg)
    p["b_enc"] = p["b_enc"] + 10.0  # every pre-activation positive: ReLU removes nothing
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3, 8)), jnp.float32)
    z = np.asarray(S.encode(p, x, cfg))
    assert z.shape == (4, 3, 64)
    assert (np.count_nonzero(z, axis=-1) == 5).all()
    pre = np.asarray(S.pre_activations(p, x))
    kept_min = np.where(z > 0, pre, np.inf).min(-1)
    dropped_max = np.where(z == 0, pre, -np.inf).max(-1)
    assert (kept_min >= dropped_max).all()


def test_batchtopk_keeps_k_per_token_on_average_and_uses_threshold_at_inference():
    cfg = S.SAEConfig(d_in=8, d_sae=64, architecture="batchtopk", k=4)
    p = random_params(cfg)
    p["b_enc"] = p["b_enc"] + 10.0
    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 8)), jnp.float32)
    out = S.loss(p, x, cfg)
    assert float(out.l0) == pytest.approx(4.0)
    p["threshold"] = jnp.full((64,), float(out.kth_value))
    z = np.asarray(S.encode(p, x, cfg))
    relu = np.maximum(np.asarray(S.pre_activations(p, x)), 0)
    np.testing.assert_array_equal(z, np.where(relu > float(out.kth_value), relu, 0))


def test_auxk_uses_only_dead_latents():
    cfg = S.SAEConfig(d_in=8, d_sae=32, architecture="topk", k=2, aux_k=4)
    p = random_params(cfg)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 8)), jnp.float32)
    none_dead = S.loss(p, x, cfg, dead=jnp.zeros(32, bool))
    some_dead = S.loss(p, x, cfg, dead=jnp.arange(32) < 8)
    assert float(none_dead.auxk) == 0.0 and float(some_dead.auxk) > 0
    # The AuxK gradient reaches only dead latents' decoder rows.
    grads = jax.grad(lambda q: S.loss(q, x, cfg, dead=jnp.arange(32) < 8).auxk)(p)
    assert np.abs(np.asarray(grads["W_dec"][8:])).max() == 0
    assert np.abs(np.asarray(grads["W_dec"][:8])).max() > 0


def test_geometric_median_matches_a_direct_minimization():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.standard_normal((200, 5)), 50 + rng.standard_normal((20, 5))]).astype(np.float32)
    ours = np.asarray(S.geometric_median(points))
    objective = lambda m: np.linalg.norm(points - m, axis=1).sum()
    ref = minimize(objective, points.mean(0), method="Nelder-Mead",
                   options=dict(xatol=1e-8, fatol=1e-10, maxiter=40000, maxfev=40000)).x
    assert objective(ours) <= objective(ref) + 1e-3
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    # Robust to the outlier cluster, unlike the mean.
    assert np.linalg.norm(ours) < 1.0 < np.linalg.norm(points.mean(0))


def test_init_params():
    cfg = S.SAEConfig(d_in=10, d_sae=40)
    sample = np.random.default_rng(0).standard_normal((300, 10)).astype(np.float32) + 3
    p = S.init_params(jax.random.key(0), cfg, sample)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p["W_dec"]), axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(p["W_enc"]), np.asarray(p["W_dec"]).T)
    np.testing.assert_allclose(np.asarray(p["b_dec"]), np.asarray(S.geometric_median(sample)))
    assert not np.asarray(p["b_enc"]).any()
    S.check_params(p, cfg)


def test_normalize_decoder():
    cfg = S.SAEConfig(d_in=4, d_sae=8)
    p = random_params(cfg)
    p["W_dec"] = p["W_dec"] * 3
    np.testing.assert_allclose(np.linalg.norm(np.asarray(S.normalize_decoder(p)["W_dec"]), axis=-1), 1, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_in=0, d_sae=4), "d_in"),
    (dict(d_in=4, d_sae=8, architecture="gated"), "gated"),
    (dict(d_in=4, d_sae=8, architecture="topk"), "k=None"),
    (dict(d_in=4, d_sae=8, architecture="topk", k=9), "k=9"),
    (dict(d_in=4, d_sae=8, l1_coefficient=-1.0), "coefficient"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        S.SAEConfig(**kwargs)


def test_bad_params_and_samples():
    cfg = S.SAEConfig(d_in=4, d_sae=8)
    p = S.init_params(jax.random.key(0), cfg)
    with pytest.raises(InputError, match="W_enc"):
        S.check_params({**p, "W_enc": p["W_enc"][:, :3]}, cfg)
    with pytest.raises(InputError, match="missing parameter 'b_dec'"):
        S.check_params({k: v for k, v in p.items() if k != "b_dec"}, cfg)
    with pytest.raises(InputError, match="d_in=4"):
        S.init_params(jax.random.key(0), cfg, np.zeros((5, 3), np.float32))
    with pytest.raises(InputError, match="N > 0"):
        S.geometric_median(np.zeros((0, 3), np.float32))


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
@pytest.mark.parametrize("decoder_norm", [False, True])
def test_sparse_decoding_equals_dense(architecture, decoder_norm):
    cfg = S.SAEConfig(d_in=16, d_sae=256, architecture=architecture, k=4, aux_k=8, l1_decoder_norm=decoder_norm)
    p = random_params(cfg)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((32, 16)), jnp.float32)
    dead = jnp.arange(256) % 3 == 0
    dense, g_dense = jax.value_and_grad(lambda q: S.loss(q, x, cfg, dead=dead).loss)(p)
    sparse, g_sparse = jax.value_and_grad(lambda q: S.loss(q, x, cfg, dead=dead, sparse=True).loss)(p)
    np.testing.assert_allclose(float(sparse), float(dense), rtol=1e-5)
    for name in g_dense:
        np.testing.assert_allclose(np.asarray(g_sparse[name]), np.asarray(g_dense[name]), rtol=1e-4, atol=1e-5)
    a, b = S.loss(p, x, cfg, dead=dead), S.loss(p, x, cfg, dead=dead, sparse=True)
    for field in ("mse", "l1", "l0", "auxk", "explained_variance"):
        np.testing.assert_allclose(float(getattr(b, field)), float(getattr(a, field)), rtol=1e-5, err_msg=field)
    np.testing.assert_array_equal(np.asarray(a.fired), np.asarray(b.fired))


def test_sparse_decoding_does_half_the_work_at_large_d_sae():
    """XLA's own cost model of the compiled gradient step: decoding from the k active latents
    removes the dense [N, d_sae] @ [d_sae, d_in] products (forward and backward). Counted, not
    timed, so a busy CI machine cannot flip it; wall-clock speed lives in benchmarks/."""
    cfg = S.SAEConfig(d_in=64, d_sae=65536, architecture="topk", k=8)
    p = S.init_params(jax.random.key(0), cfg)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((256, 64)), jnp.float32)
    cost = {}
    for sparse in (False, True):
        step = jax.jit(jax.grad(lambda q, sparse=sparse: S.loss(q, x, cfg, sparse=sparse).loss))
        analysis = step.lower(p).compile().cost_analysis()
        cost[sparse] = (analysis[0] if isinstance(analysis, list) else analysis)
    assert cost[True]["flops"] < 0.6 * cost[False]["flops"], cost
    assert cost[True]["bytes accessed"] < 0.8 * cost[False]["bytes accessed"], cost
