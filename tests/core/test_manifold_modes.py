"""The gated and replace modes: a numpy transcription of their equations, the gate leaving
tokens without the concept bit-identical, multi-concept edits applying a shared feature once,
and their arguments checked."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sauce_jax
from tiny_models import SMALL, random_pixels
from sauce_jax import ConfigError, FeatureSet, InputError
from sauce_jax.intervention import InterventionArgs, make_hook
from sauce_jax.sae import SAE, SAEConfig, init_params


@pytest.fixture(scope="module")
def toy():
    cfg = SAEConfig(d_in=SMALL["hidden_size"], d_sae=128)
    params = init_params(jax.random.key(0), cfg)
    params["b_enc"] = params["b_enc"] + 0.05
    return SAE(params, cfg)


def latents(sae, x):
    """A standard SAE's latents [..., d_sae] of x, in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in sae.params.items()}
    return np.maximum((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0), p


def numpy_edit(sae, x, ids, mode, gamma=-0.5, threshold=0.0, targets=None):
    """The module docstring's equations, token by token: x [B, T, D], ids [k] (no padding)."""
    z, p = latents(sae, np.asarray(x, np.float64))
    out = np.array(x, np.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            zf = z[b, t, ids]  # [k]
            if zf.max() <= threshold:  # the gate: the concept is not active at this token
                continue
            coeff = (gamma - 1.0) * zf if mode == "gated" else np.asarray(targets) - zf
            out[b, t] = x[b, t] + coeff @ p["W_dec"][ids]
    return out


def hooked(encoder, sae, features, layer, **kw):
    pixels = random_pixels(SMALL, batch=2)
    base = np.asarray(encoder.hidden_state(pixels, layer))
    return base, np.asarray(sauce_jax.unlearn(encoder, sae, features, layer=layer, **kw).hidden_state(pixels, layer))


def threshold_between(sae, x, ids):
    """A gate threshold that leaves about half the tokens without the concept."""
    z, _ = latents(sae, np.asarray(x, np.float64))
    return float(np.median(z[..., ids].max(axis=-1)))


@pytest.mark.parametrize("mode", ["gated", "replace"])
def test_matches_the_equations_and_leaves_inactive_tokens_alone(toy, small_encoder, mode):
    layer = small_encoder.layer_index(-2)
    ids = np.array([4, 9, 30])
    base, _ = hooked(small_encoder, toy, ids, layer, mode="delta", gamma=1.0)
    threshold = threshold_between(toy, base, ids)
    targets = np.array([0.5, -0.25, 1.0])
    extra = {"targets": targets} if mode == "replace" else {"gamma": -1.0}
    _, got = hooked(small_encoder, toy, ids, layer, mode=mode, threshold=threshold, **extra)
    expected = numpy_edit(toy, base, ids, mode, gamma=-1.0, threshold=threshold, targets=targets)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    z, _ = latents(toy, np.asarray(base, np.float64))
    active = z[..., ids].max(axis=-1) > threshold  # [B, T]
    assert active.any() and (~active).any()  # not vacuous: both kinds of token are there
    assert np.array_equal(got[~active], base[~active])  # bit-identical where the concept is absent
    assert (np.abs(got - base).max(axis=-1)[active] > 0).all()


def test_gate_is_per_token_on_a_hand_built_sae():
    """Identity encoder, decoder 2 I: feature i is x_i where positive. Token 0 has none of the
    selected features on, token 1 has feature 1 on, token 2 feature 0 below the threshold."""
    cfg = SAEConfig(d_in=3, d_sae=3)
    params = {"W_enc": jnp.eye(3), "b_enc": jnp.zeros(3), "W_dec": 2.0 * jnp.eye(3), "b_dec": jnp.zeros(3)}
    hidden = jnp.array([[[-1.0, -2.0, 5.0], [0.5, 3.0, 1.0], [0.25, -1.0, 2.0]]])  # [1, 3, 3]
    ids = jnp.array([0, 1, -1])  # -1 pads: feature 2, active everywhere, is not selected
    mask = jnp.ones(3, bool)
    gated = make_hook("gated", cfg)(hidden, InterventionArgs(params, ids, jnp.asarray(0.0), mask, jnp.asarray(0.3)))
    # token 1: z = (0.5, 3), x + (0 - 1) z W_dec = x - 2 z on features 0 and 1
    np.testing.assert_array_equal(np.asarray(gated), [[[-1.0, -2.0, 5.0], [-0.5, -3.0, 1.0], [0.25, -1.0, 2.0]]])
    targets = jnp.array([0.125, 1.0, 7.0])  # 7.0 sits at the padding: ignored
    replaced = make_hook("replace", cfg)(hidden, InterventionArgs(params, ids, jnp.asarray(0.0), mask,
                                                                  jnp.asarray(0.3), targets))
    # token 1: x + 2 (target - z) on features 0 and 1: 0.5 + 2 (0.125 - 0.5), 3 + 2 (1 - 3)
    np.testing.assert_array_equal(np.asarray(replaced), [[[-1.0, -2.0, 5.0], [-0.25, -1.0, 1.0], [0.25, -1.0, 2.0]]])
    # threshold 0: token 2's feature 0 (0.25) opens the gate, and its feature 1 (off) goes to
    # its target too: 0.25 + 2 (0.125 - 0.25), -1 + 2 (1 - 0)
    low = make_hook("replace", cfg)(hidden, InterventionArgs(params, ids, jnp.asarray(0.0), mask,
                                                             jnp.asarray(0.0), targets))
    np.testing.assert_array_equal(np.asarray(low)[0, 2], [0.0, 1.0, 2.0])


def test_per_image_ids_targets_and_thresholds(toy, small_encoder):
    pixels = random_pixels(SMALL, batch=2)
    layer = small_encoder.layer_index(-2)
    ids = np.array([[4, 9, 30], [7, -1, -1]])
    targets = np.array([[0.5, 0.0, 0.25], [1.0, 9.0, 9.0]])  # 9.0 at padding: ignored
    threshold = np.array([0.05, 0.2])
    batched = sauce_jax.unlearn(small_encoder, toy, ids, mode="replace", targets=targets,
                                threshold=threshold).hidden_state(pixels, layer)
    for i in range(2):
        real = ids[i] >= 0
        alone = sauce_jax.unlearn(small_encoder, toy, ids[i][real], mode="replace", targets=targets[i][real],
                                  threshold=threshold[i]).hidden_state(pixels[i : i + 1], layer)
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(alone[0]), rtol=1e-5, atol=1e-5)


def test_shared_features_are_edited_once(toy, small_encoder):
    """Two concepts sharing features 9 and 30: the union edits each once, as the hand
    computation over the five distinct features; applying each concept's edit in turn would not."""
    layer = small_encoder.layer_index(-2)
    fp = toy.fingerprint()
    a = FeatureSet("a", (4, 9, 30), (1.0,) * 3, layer=layer, sae_fingerprint=fp, gamma=-1.0)
    b = FeatureSet("b", (30, 9, 77), (1.0,) * 3, layer=layer, sae_fingerprint=fp, gamma=-1.0)
    union_ids = [4, 9, 30, 77]
    base, _ = hooked(small_encoder, toy, [4], layer, mode="delta", gamma=1.0)
    targets = {4: 0.5, 9: 0.25, 30: 1.0, 77: 0.75}
    for mode, extra in (("gated", {}), ("replace", {"targets": targets})):
        _, got = hooked(small_encoder, toy, [a, b], layer, mode=mode, **extra)
        expected = numpy_edit(toy, base, union_ids, mode, gamma=-1.0,
                              targets=[targets[i] for i in union_ids])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        twice = numpy_edit(toy, base, [4, 9, 30, 30, 9, 77], mode, gamma=-1.0,
                           targets=[targets[i] for i in [4, 9, 30, 30, 9, 77]])
        assert np.abs(twice - expected).max() > 1e-2  # a pile-up would be visible


def test_union_gamma_rule(toy, small_encoder):
    """replace ignores gamma, so sets with different gammas combine; the other modes refuse."""
    fp = toy.fingerprint()
    a = FeatureSet("a", (4, 9), (1.0, 1.0), layer=1, sae_fingerprint=fp, gamma=-1.0)
    b = dataclasses.replace(a, concept="b", feature_ids=(9, 77), gamma=-0.5)
    for mode in ("reconstruct", "delta", "gated"):
        with pytest.raises(ConfigError, match="gamma -1.0 != -0.5 .only mode 'replace'"):
            sauce_jax.unlearn(small_encoder, toy, [a, b], mode=mode)
    edited = sauce_jax.unlearn(small_encoder, toy, [a, b], mode="replace", targets="zero")
    assert edited.hidden_state(random_pixels(SMALL), -1).shape[0] == 2
    assert FeatureSet.union(a, b, same_gamma=False).feature_ids == (4, 9, 77)
    with pytest.raises(ConfigError, match="layer"):  # the layer still has to agree
        FeatureSet.union(a, dataclasses.replace(b, layer=0), same_gamma=False)


def test_replacement_targets_are_the_negatives_mean():
    z_neg = np.array([[0.0, 1.0, 2.0, 4.0], [0.0, 3.0, 0.0, 2.0]])
    got = sauce_jax.replacement_targets(z_neg, np.array([3, 1, -1]))
    np.testing.assert_array_equal(got, np.array([3.0, 2.0, 0.0], np.float32))
    per_image = sauce_jax.replacement_targets(z_neg, np.array([[2, -1], [0, 3]]))
    np.testing.assert_array_equal(per_image, [[1.0, 0.0], [0.0, 3.0]])
    with pytest.raises(InputError, match="outside"):
        sauce_jax.replacement_targets(z_neg, np.array([4]))
    with pytest.raises(InputError, match="z_neg"):
        sauce_jax.replacement_targets(np.zeros((0, 4)), np.array([1]))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(mode="replace"), ConfigError, "needs targets.*replacement_targets.*'zero'"),
    (dict(mode="replace", targets="mean"), ConfigError, "'mean'"),
    (dict(mode="replace", targets=np.zeros(3)), InputError, "shape \\(3,\\) do not align"),
    (dict(mode="replace", targets={4: 1.0}), InputError, "no value for features \\[9\\]"),
    (dict(mode="replace", targets=np.array([0.0, np.nan])), InputError, "NaN"),
    (dict(mode="delta", targets="zero"), ConfigError, "targets are for mode 'replace'"),
    (dict(mode="reconstruct", threshold=0.5), ConfigError, "threshold gates only"),
    (dict(mode="gated", threshold=float("inf")), ConfigError, "threshold must be"),
    (dict(mode="gated", gamma=float("nan")), ConfigError, "gamma must be"),
])
def test_bad_arguments(toy, small_encoder, kwargs, error, match):
    with pytest.raises(error, match=match):
        sauce_jax.unlearn(small_encoder, toy, np.array([4, 9]), **kwargs)


def test_targets_that_do_not_fit_the_batch(toy, small_encoder):
    from sauce_jax.intervention import intervention_args

    args = intervention_args(toy, np.array([4, 9]), gamma=-0.5, num_tokens=SMALL["image_size"] // 4, where="all")
    hidden = jnp.zeros((2, 3, SMALL["hidden_size"]))
    bad = args._replace(token_mask=jnp.ones(3, bool), targets=jnp.zeros((3, 2)))
    with pytest.raises(InputError, match="targets of shape"):
        make_hook("replace", toy.config)(hidden, bad)
    with pytest.raises(InputError, match="threshold of shape"):
        make_hook("gated", toy.config)(hidden, bad._replace(threshold=jnp.zeros(3)))
