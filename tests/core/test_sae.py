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


@pytest.mark.parametrize("with_auxk", [False, True])
def test_sparse_decoding_does_half_the_work_at_large_d_sae(with_auxk):
    """XLA's own cost model of the compiled gradient step: decoding from the k active latents
    removes the dense [N, d_sae] @ [d_sae, d_in] products (forward and backward), and so does
    AuxK's sparse decoding of the aux_k dead latents. Counted, not timed, so a busy CI machine
    cannot flip it; wall-clock speed lives in benchmarks/."""
    cfg = S.SAEConfig(d_in=64, d_sae=65536, architecture="topk", k=8)
    p = S.init_params(jax.random.key(0), cfg)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((256, 64)), jnp.float32)
    dead = jnp.arange(cfg.d_sae) % 2 == 0 if with_auxk else None
    cost = {}
    for sparse in (False, True):
        step = jax.jit(jax.grad(lambda q, sparse=sparse: S.loss(q, x, cfg, dead=dead, sparse=sparse).loss))
        analysis = step.lower(p).compile().cost_analysis()
        cost[sparse] = (analysis[0] if isinstance(analysis, list) else analysis)
    assert cost[True]["flops"] < 0.6 * cost[False]["flops"], cost
    assert cost[True]["bytes accessed"] < 0.8 * cost[False]["bytes accessed"], cost


def test_config_accepts_the_boundary_values():
    S.SAEConfig(d_in=1, d_sae=1)
    S.SAEConfig(d_in=4, d_sae=8, l1_coefficient=0.0, aux_coefficient=0.0)
    for architecture in ("topk", "batchtopk"):
        assert S.SAEConfig(d_in=4, d_sae=8, architecture=architecture, k=1).k == 1
        assert S.SAEConfig(d_in=4, d_sae=8, architecture=architecture, k=8).k == 8
    for kwargs in (dict(d_in=4, d_sae=0), dict(d_in=4.0, d_sae=8), dict(d_in=4, d_sae=8, architecture="topk", k=0),
                   dict(d_in=4, d_sae=8, aux_coefficient=-0.5)):
        with pytest.raises(ConfigError):
            S.SAEConfig(**kwargs)


@pytest.mark.parametrize("architecture, uses_l1, is_topk, has_threshold", [
    ("standard", True, False, False), ("topk", False, True, False), ("batchtopk", False, False, True),
])
def test_config_properties_of_each_architecture(architecture, uses_l1, is_topk, has_threshold):
    k = None if architecture == "standard" else 2
    cfg = S.SAEConfig(d_in=8, d_sae=16, architecture=architecture, k=k)
    assert (cfg.uses_l1, cfg.uses_k, cfg.is_topk, cfg.has_threshold) == (uses_l1, not uses_l1, is_topk, has_threshold)
    assert cfg.uses_auxk is (not uses_l1)  # AuxK belongs to the k architectures, on by default (1/32)
    assert cfg.aux_coefficient == 1 / 32
    assert S.SAEConfig(d_in=8, d_sae=16, architecture=architecture, k=k, aux_coefficient=0.0).uses_auxk is False
    # Hashable and immutable: a static argument of jitted functions.
    assert hash(cfg) == hash(S.SAEConfig(d_in=8, d_sae=16, architecture=architecture, k=k))
    with pytest.raises(AttributeError):
        cfg.d_in = 4


def test_resolved_aux_k():
    cfg = lambda **kw: S.SAEConfig(architecture="topk", k=1, **kw)
    assert cfg(d_in=7, d_sae=100).resolved_aux_k == 3  # d_in // 2 (Gao et al.)
    assert cfg(d_in=7, d_sae=100, aux_k=5).resolved_aux_k == 5  # an explicit aux_k wins
    assert cfg(d_in=1, d_sae=100).resolved_aux_k == 1  # at least one latent
    assert cfg(d_in=64, d_sae=10).resolved_aux_k == 10  # at most d_sae
    assert cfg(d_in=8, d_sae=10, aux_k=50).resolved_aux_k == 10


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("n_dead", [2, 8])
def test_auxk_matches_its_definition(sparse, n_dead):
    """AuxK (Gao et al.): the top aux_k dead latents of each token (by pre-activation), ReLU'd and
    decoded without b_dec, against the residual, scaled by min(#dead / aux_k, 1)."""
    cfg = S.SAEConfig(d_in=8, d_sae=32, architecture="topk", k=2, aux_k=3)
    p = random_params(cfg, 4)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((6, 8)), jnp.float32)
    dead = jnp.arange(32) >= 32 - n_dead
    P = {k: np.asarray(v, np.float64) for k, v in p.items()}
    pre = (np.asarray(x, np.float64) - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
    z_aux = np.zeros_like(pre)
    dead_ids = np.flatnonzero(np.asarray(dead))
    for n in range(6):
        top = dead_ids[np.argsort(-pre[n, dead_ids])[:3]]
        z_aux[n, top] = np.maximum(pre[n, top], 0)
    residual = np.asarray(x, np.float64) - np.asarray(S.forward(p, x, cfg).x_hat, np.float64)
    recon = z_aux @ P["W_dec"]
    expected = min(n_dead / 3, 1.0) * np.mean(np.sum((recon - residual) ** 2, -1))
    out = S.loss(p, x, cfg, dead=dead, sparse=sparse)
    np.testing.assert_allclose(float(out.auxk), expected, rtol=1e-4)
    # The total adds AuxK with its coefficient (default 1/32).
    np.testing.assert_allclose(float(out.loss), float(out.mse) + float(out.auxk) / 32, rtol=1e-6)


def test_auxk_is_off_for_standard_and_for_a_zero_coefficient():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 8)), jnp.float32)
    dead = jnp.ones(32, bool)
    standard = S.SAEConfig(d_in=8, d_sae=32, l1_coefficient=0.01)
    p = random_params(standard)
    with_dead, without = S.loss(p, x, standard, dead=dead), S.loss(p, x, standard)
    assert float(with_dead.auxk) == 0.0 and float(with_dead.loss) == float(without.loss)
    no_aux = S.SAEConfig(d_in=8, d_sae=32, architecture="topk", k=2, aux_coefficient=0.0)
    out = S.loss(random_params(no_aux), x, no_aux, dead=dead)
    assert float(out.auxk) == 0.0 and float(out.loss) == float(out.mse)


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_explained_variance(architecture):
    cfg = S.SAEConfig(d_in=6, d_sae=20, architecture=architecture, k=None if architecture == "standard" else 3)
    p = random_params(cfg, 1)
    x = np.random.default_rng(2).standard_normal((10, 6)).astype(np.float32) + 2
    x_hat = np.asarray(S.forward(p, x, cfg).x_hat, np.float64)
    sse = np.sum((x - x_hat) ** 2)
    sst = np.sum((x - x.mean(0)) ** 2)
    out = S.loss(p, jnp.asarray(x), cfg)
    np.testing.assert_allclose(float(out.explained_variance), 1 - sse / sst, rtol=1e-5)
    np.testing.assert_allclose(float(out.mse), sse / 10, rtol=1e-5)


def test_sparse_flag_is_ignored_by_the_standard_sae():
    cfg = S.SAEConfig(d_in=6, d_sae=20, l1_coefficient=0.01)
    p = random_params(cfg)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((9, 6)), jnp.float32)
    dense, sparse = S.loss(p, x, cfg), S.loss(p, x, cfg, sparse=True)
    for field in ("loss", "mse", "l1", "l0", "explained_variance"):
        assert float(getattr(sparse, field)) == float(getattr(dense, field)), field


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
@pytest.mark.parametrize("sparse", [False, True])
def test_negative_pre_activations_are_not_active(architecture, sparse):
    """TopK keeps the k largest pre-activations, but a kept latent with a pre-activation <= 0 is
    zero after the ReLU: it neither counts in l0 nor fires."""
    cfg = S.SAEConfig(d_in=8, d_sae=32, architecture=architecture, k=4)
    p = random_params(cfg)
    p["b_enc"] = p["b_enc"] - 100.0
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 8)), jnp.float32)
    out = S.loss(p, x, cfg, sparse=sparse)
    assert float(out.l0) == 0.0 and float(out.l1) == 0.0
    assert not np.asarray(out.fired).any()


def test_batchtopk_encode_uses_the_batch_without_a_threshold_and_the_threshold_per_token():
    cfg = S.SAEConfig(d_in=8, d_sae=64, architecture="batchtopk", k=4)
    p = random_params(cfg)
    p["b_enc"] = p["b_enc"] + 10.0
    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 8)), jnp.float32)
    relu = np.maximum(np.asarray(S.pre_activations(p, x)), 0)
    # No threshold (not learned yet): the k * N largest of the batch, as while training.
    no_threshold = {k: v for k, v in p.items() if k != "threshold"}
    z = np.asarray(S.encode(no_threshold, x, cfg))
    kth = np.sort(relu.reshape(-1))[-4 * 16]
    np.testing.assert_array_equal(z, np.where(relu >= kth, relu, 0))
    # With a threshold, each token on its own: a zero threshold keeps every positive latent.
    p["threshold"] = jnp.zeros((64,))
    np.testing.assert_array_equal(np.asarray(S.encode(p, x, cfg)), relu)
    np.testing.assert_array_equal(np.asarray(S.encode(p, x[:1], cfg)), relu[:1])


def test_geometric_median_iterations_and_tolerance():
    points = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32) + 3
    mean = points.mean(0)

    def weiszfeld_step(guess):
        w = 1 / np.linalg.norm(points - guess, axis=-1)
        return (points * w[:, None]).sum(0) / w.sum()

    np.testing.assert_allclose(np.asarray(S.geometric_median(points, iterations=0)), mean, rtol=1e-6)
    one_step = weiszfeld_step(mean)
    np.testing.assert_allclose(np.asarray(S.geometric_median(points, iterations=1)), one_step, rtol=1e-5)
    # It stops once a step is below tolerance * (1 + |guess|): with half the first step as the
    # tolerance (scale 1 + |guess| ~ 7 here), after that first step.
    first = float(np.linalg.norm(one_step - mean))
    np.testing.assert_allclose(np.asarray(S.geometric_median(points, tolerance=first / 2)), one_step, rtol=1e-5)
    converged = np.asarray(S.geometric_median(points))
    assert np.abs(weiszfeld_step(converged) - converged).max() < 1e-4
    assert np.abs(converged - one_step).max() > 1e-3


def test_fingerprint():
    cfg = S.SAEConfig(d_in=4, d_sae=8)
    p = random_params(cfg)
    fp = S.SAE(p, cfg).fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert S.SAE({k: jnp.array(v) for k, v in p.items()}, cfg).fingerprint() == fp  # weights, not identity
    assert S.SAE(dict(reversed(list(p.items()))), cfg).fingerprint() == fp  # order-free
    assert S.SAE({**p, "b_enc": p["b_enc"].at[3].add(1e-3)}, cfg).fingerprint() != fp
    assert S.SAE({**p, "b_enc": p["b_dec"], "b_dec": p["b_enc"][:4]}, cfg).fingerprint() != fp
    assert S.SAE(p, cfg, {"layer": 3}).metadata == {"layer": 3} and S.SAE(p, cfg).metadata == {}


def test_options_are_keyword_only():
    """A positional slip (an L1 coefficient where `dead` was meant, a count of iterations) fails."""
    cfg = S.SAEConfig(d_in=4, d_sae=8)
    p = random_params(cfg)
    x = jnp.zeros((3, 4))
    with pytest.raises(TypeError):
        S.loss(p, x, cfg, 0.5)
    with pytest.raises(TypeError):
        S.activate(jnp.zeros((3, 8)), cfg, None)
    with pytest.raises(TypeError):
        S.geometric_median(np.ones((3, 4), np.float32), 10)
