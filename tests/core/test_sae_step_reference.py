"""The fast TopK / BatchTopK step against a plain reference: the loss as it was written before
the speed work (dense decode, `lax.top_k` everywhere, AuxK always computed), kept here verbatim
in spirit, so every optimisation (sparse encoder gradient, sparse decode, the centred matmul's
cheap b_dec gradient, BatchTopK's bisection, AuxK skipped while nothing is dead and computed on
the dead latents' columns only) must give the same numbers to 1e-6 relative."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sauce_jax import ConfigError
from sauce_jax import sae as S
from sauce_jax.train.config import TrainConfig
from sauce_jax.train.step import init_state, train_step


# -- the reference: plain autodiff of the formulas, nothing clever -------------------------
def ref_loss(params, x, config, dead=None):
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    relu = jax.nn.relu(pre)
    n = x.shape[0]
    if config.is_topk:
        _, idx = jax.lax.top_k(pre, config.k)
        mask = jnp.zeros(pre.shape, bool).at[jnp.arange(n)[:, None], idx].set(True)
        z, kth = jnp.where(mask, relu, 0.0), jnp.zeros(())
    else:
        kept = min(config.k * n, n * config.d_sae)
        kth = jax.lax.top_k(relu.reshape(-1), kept)[0][-1]
        z = jnp.where(relu >= jnp.maximum(kth, 1e-30), relu, 0.0)
    x_hat = z @ params["W_dec"] + params["b_dec"]
    residual = x - x_hat
    mse = jnp.mean(jnp.sum(residual**2, axis=-1))
    auxk = jnp.zeros(())
    if dead is not None:
        aux_k = config.resolved_aux_k
        masked = jnp.where(dead, pre, -jnp.inf)
        _, idx = jax.lax.top_k(masked, aux_k)
        mask = jnp.zeros(pre.shape, bool).at[jnp.arange(n)[:, None], idx].set(True)
        z_aux = jnp.where(mask & dead, relu, 0.0)
        err = z_aux @ params["W_dec"] - jax.lax.stop_gradient(residual)
        auxk = jnp.minimum(jnp.sum(dead) / aux_k, 1.0) * jnp.mean(jnp.sum(err**2, axis=-1))
    return mse + config.aux_coefficient * auxk, dict(mse=mse, auxk=auxk, l0=jnp.mean(jnp.sum(z > 0, -1)),
                                                     fired=jnp.any(z > 0, axis=0), kth=kth)


def _close(actual, expected, what, rtol=1e-6):
    """Equal to rtol relative to the largest entry of the reference (float32 sums in another order)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    err = float(np.max(np.abs(actual - expected))) / scale
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


def _setup(architecture, seed=0, d_in=16, d_sae=256, n=64, k=4):
    config = S.SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, k=k, aux_k=8)
    params = S.init_params(jax.random.key(seed), config)
    rng = np.random.default_rng(seed)
    params = {name: jnp.asarray(np.asarray(v) + 0.05 * rng.standard_normal(v.shape), jnp.float32)
              for name, v in params.items()}
    x = jnp.asarray(rng.standard_normal((n, d_in)) + 0.5, jnp.float32)
    return config, params, x


# (dead=None, the loss without AuxK, runs in the host switch's test: its step without AuxK.)
DEADS = {"none dead": lambda f: jnp.zeros(f, bool), "half dead": lambda f: jnp.arange(f) % 2 == 0}


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dead_kind", list(DEADS))
def test_loss_and_gradients_equal_the_reference(architecture, sparse, dead_kind):
    config, params, x = _setup(architecture)
    dead = DEADS[dead_kind](config.d_sae)
    trainable = {k: params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}

    def ours_fn(t, d):
        out = S.loss(t, x, config, dead=d, sparse=sparse)
        return out.loss, out

    (value, out), grads = jax.jit(lambda t, d: S.loss_and_grad(ours_fn, t, d, config))(trainable, dead)
    (ref_value, ref), ref_grads = jax.value_and_grad(lambda t: ref_loss(t, x, config, dead), has_aux=True)(trainable)
    _close(value, ref_value, "loss")
    for name in trainable:
        _close(grads[name], ref_grads[name], f"d{name}")
    _close(out.mse, ref["mse"], "mse")
    _close(out.auxk, ref["auxk"], "auxk")
    _close(out.l0, ref["l0"], "l0")
    _close(out.kth_value, ref["kth"], "kth")
    np.testing.assert_array_equal(np.asarray(out.fired), np.asarray(ref["fired"]))
    if dead_kind == "half dead":
        assert float(out.auxk) > 0  # the comparison exercised AuxK


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
@pytest.mark.parametrize("decode", ["dense", "sparse"])
def test_train_steps_equal_reference_steps(architecture, decode):
    """Three Adam steps of `train_step` (AuxK live: dead_after_steps=1 marks latents dead after one
    silent step) against the reference loss under the same optimizer. Adam divides each gradient
    by its own running scale, so float32 rounding differences of 1e-7 in a near-zero gradient
    entry move its parameter by more: the parameters after three steps agree to 2e-5."""
    config, params, _ = _setup(architecture, seed=3)
    cfg = TrainConfig(lr=1e-2, batch_size=64, decode=decode, dead_after_steps=1)
    optimizer = optax.adam(cfg.lr)
    state = init_state(params, optimizer, config)
    step = jax.jit(lambda s, b: train_step(s, b, sae_config=config, cfg=cfg, optimizer=optimizer))
    ref_params = {k: params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    ref_opt, since = optimizer.init(ref_params), jnp.zeros(config.d_sae, jnp.int32)
    rng = np.random.default_rng(7)
    saw_dead = False
    for _ in range(3):
        batch = jnp.asarray(rng.standard_normal((64, config.d_in)), jnp.float32)
        dead = since >= cfg.dead_after_steps
        saw_dead |= bool(dead.any())
        (_, ref), grads = jax.value_and_grad(lambda t: ref_loss(t, batch, config, dead), has_aux=True)(ref_params)
        updates, ref_opt = optimizer.update(grads, ref_opt, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
        since = jnp.where(ref["fired"], 0, since + 1)
        state, metrics = step(state, batch)
        _close(metrics["mse"], ref["mse"], "mse")
    assert saw_dead
    np.testing.assert_array_equal(np.asarray(state.since_fired), np.asarray(since))
    for name in ref_params:
        _close(state.params[name], ref_params[name], name, rtol=2e-5)


def test_batchtopk_kth_value_is_the_exact_order_statistic():
    rng = np.random.default_rng(0)
    for values in (rng.random((7, 50)), np.round(rng.random((7, 50)), 1), np.zeros((3, 4)),
                   np.maximum(rng.standard_normal((5, 30)), 0)):
        values = jnp.asarray(values, jnp.float32)
        for kept in (1, 3, min(17, values.size), values.size):
            expected = np.sort(np.asarray(values).reshape(-1))[::-1][kept - 1]
            assert float(S._kth_largest(values, kept)) == expected


def test_auxk_is_skipped_while_no_latent_is_dead():
    """The step's gradient is a `lax.cond` between the loss with AuxK and the loss without it,
    chosen by whether any latent is dead; without AuxK (standard SAE, or coefficient 0) there is
    no cond at all."""
    config, params, x = _setup("topk")
    trainable = {k: params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    calls = []

    def ours_fn(t, d):
        calls.append(d is None)
        out = S.loss(t, x, config, dead=d)
        return out.loss, out

    jaxpr = str(jax.make_jaxpr(lambda t, d: S.loss_and_grad(ours_fn, t, d, config))(trainable, jnp.zeros(256, bool)))
    assert "cond[" in jaxpr and sorted(calls) == [False, True]  # one branch with AuxK, one without
    no_aux = S.SAEConfig(d_in=16, d_sae=256, architecture="topk", k=4, aux_coefficient=0.0)
    calls.clear()
    jaxpr = str(jax.make_jaxpr(lambda t, d: S.loss_and_grad(ours_fn, t, d, no_aux))(trainable, jnp.zeros(256, bool)))
    assert "cond[" not in jaxpr and calls == [True]


def test_decode_is_chosen_by_cost():
    topk = lambda d_sae, k: S.SAEConfig(d_in=8, d_sae=d_sae, architecture="topk", k=k)
    assert S.sparse_pays(topk(2048, 32), backend="cpu") and not S.sparse_pays(topk(2048, 64), backend="cpu")
    assert not S.sparse_pays(topk(65536, 64), backend="gpu") and S.sparse_pays(topk(1 << 20, 64), backend="gpu")
    assert not S.sparse_pays(S.SAEConfig(d_in=8, d_sae=1 << 20), backend="cpu")  # standard: never
    big = topk(1 << 14, 8)
    assert TrainConfig().sparse(big) == S.sparse_pays(big)
    assert TrainConfig(decode="dense").sparse(big) is False and TrainConfig(decode="sparse").sparse(topk(64, 32))
    assert TrainConfig(sparse_decode=True).sparse(topk(64, 32))  # the older switch still forces it
    assert TrainConfig(model_parallel=2).sparse(big) is False  # a split feature axis stays dense


def test_topk_recall_reaches_approx_max_k_and_is_validated():
    config, params, x = _setup("topk")
    jaxpr = str(jax.make_jaxpr(lambda p: S.loss(p, x, config, sparse=True, recall_target=0.9).loss)(params))
    assert "approx_top_k" in jaxpr
    assert "approx_top_k" not in str(jax.make_jaxpr(lambda p: S.loss(p, x, config).loss)(params))
    for bad in (0, 1.5, -0.1, True, "0.9"):
        with pytest.raises(ConfigError, match="topk_recall"):
            TrainConfig(topk_recall=bad)
    with pytest.raises(ConfigError, match="decode"):
        TrainConfig(decode="fast")


def test_the_host_switch_takes_auxk_exactly_when_a_latent_can_be_dead():
    """`jit_train_step` (`AuxKSwitch` over compiled steps without and with AuxK) against `train_step` deciding on the
    device, over steps where four latents (encoder bias -100) turn dead (dead_after_steps=5): same
    states, and the switch ran the AuxK step exactly on the steps whose state had a dead latent."""
    from sauce_jax.train.sharding import make_mesh, shard_state
    from sauce_jax.train.step import AuxKSwitch, jit_train_step

    if jax.default_backend() != "cpu":
        pytest.skip("the host switch is used on CPU only")

    config, params, _ = _setup("topk", seed=5, d_sae=32)
    params["b_enc"] = params["b_enc"].at[:4].set(-100.0)
    cfg = TrainConfig(lr=1e-2, batch_size=64, dead_after_steps=5)
    optimizer = optax.adam(cfg.lr)
    mesh = make_mesh(1)
    state = shard_state(init_state(params, optimizer, config), mesh)
    switch = jit_train_step(mesh, state, sae_config=config, cfg=cfg, optimizer=optimizer)
    assert jax.default_backend() != "cpu" or isinstance(switch, AuxKSwitch)
    used = []
    without = switch.without_auxk
    switch.without_auxk = lambda s, b: (used.append("without_auxk"), without(s, b))[1]
    make = switch.with_auxk
    switch.with_auxk = lambda columns: (lambda s, b, fn=make(columns): (used.append("with_auxk"), fn(s, b))[1])
    device = jax.jit(lambda s, b: train_step(s, b, sae_config=config, cfg=cfg, optimizer=optimizer))
    ref = init_state(params, optimizer, config)
    rng = np.random.default_rng(11)
    for _ in range(8):
        batch = jnp.asarray(rng.standard_normal((64, config.d_in)), jnp.float32)
        ref, ref_metrics = device(ref, batch)
        state, metrics = switch(state, batch)
        _close(metrics["auxk"], ref_metrics["auxk"], "auxk")
    assert float(ref_metrics["dead_fraction"]) > 0 and float(ref_metrics["auxk"]) > 0  # latents died, AuxK ran
    # the biased latents have since_fired j in state j: dead (>= 5) from state 5 on
    assert used == ["without_auxk"] * 5 + ["with_auxk"] * 3, used
    assert list(switch.steps) == [config.resolved_aux_k]  # 4 dead: AuxK looked at aux_k = 8 columns
    np.testing.assert_array_equal(np.asarray(state.since_fired), np.asarray(ref.since_fired))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        _close(state.params[name], ref.params[name], name, rtol=2e-5)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dead_count", [3, 8, 20])
def test_auxk_on_the_dead_columns_equals_the_reference(sparse, dead_count):
    """AuxK computed on the dead latents' columns only (`dead_columns`, as `AuxKSwitch` sets it)
    gives the reference's loss and gradients: fewer dead latents than aux_k (8; latent 0 among
    them, so the padding columns must not repeat it), as many, and more; the main loss decoded
    densely and sparsely. Too few columns (fewer than are dead) must differ: the test sees a
    dead latent left out."""
    config, params, x = _setup("topk", d_sae=1024, k=4)  # aux_k 8
    picks = np.random.default_rng(dead_count).choice(config.d_sae, dead_count, replace=False)
    dead = jnp.zeros(config.d_sae, bool).at[picks].set(True)
    dead = dead.at[0].set(True) if dead_count < 8 else dead
    trainable = {k: params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    (ref_total, ref), ref_g = jax.value_and_grad(lambda t: ref_loss(t, x, config, dead), has_aux=True)(trainable)

    def grads(columns):
        def fn(t):
            out = S.loss(t, x, config, dead=dead, sparse=sparse, dead_columns=columns)
            return out.loss, out
        (_, out), g = jax.jit(jax.value_and_grad(fn, has_aux=True))(trainable)
        return out, g

    columns = 8
    while columns < int(dead.sum()):
        columns *= 2
    for c in (columns, 2 * columns):
        out, g = grads(c)
        assert float(out.auxk) > 0
        _close(out.auxk, ref["auxk"], "auxk")
        _close(out.loss, ref_total, "loss")
        for name in trainable:
            _close(g[name], ref_g[name], name)
    if int(dead.sum()) > 8:  # fewer columns than dead latents: some dead latents are never seen
        short, _ = grads(8)
        assert abs(float(short.auxk) - float(ref["auxk"])) > 1e-3 * float(ref["auxk"])
