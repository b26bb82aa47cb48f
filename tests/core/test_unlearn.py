"""Feature selection (eq. 4), FeatureSets, and the intervention composed into the encoder."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sauce_jax
from tiny_models import SMALL, random_pixels
from sauce_jax import ConfigError, FeatureSet, InputError
from sauce_jax import encoder as encoder_module
from sauce_jax.intervention import GATED_MODES, MODES, WHERE, make_hook
from sauce_jax.sae import SAE, SAEConfig, init_params
from tiny_saes import square_images, toy_sae


def numpy_eq4(z_pos, z_neg, delta):
    scores = []
    for i in range(z_pos.shape[1]):  # a direct transcription, one feature at a time
        mu_c = sum(row[i] for row in z_pos) / len(z_pos)
        mu_nc = sum(row[i] for row in z_neg) / len(z_neg)
        total_c = sum(sum(row[j] for row in z_pos) / len(z_pos) for j in range(z_pos.shape[1]))
        total_nc = sum(sum(row[j] for row in z_neg) / len(z_neg) for j in range(z_neg.shape[1]))
        scores.append(mu_c / (total_c + delta) - mu_nc / (total_nc + delta))
    return np.array(scores)


def test_score_features_is_eq4():
    rng = np.random.default_rng(0)
    z_pos = np.maximum(rng.standard_normal((7, 20)), 0)
    z_neg = np.maximum(rng.standard_normal((5, 20)), 0)
    np.testing.assert_allclose(sauce_jax.score_features(z_pos, z_neg, delta=0.3), numpy_eq4(z_pos, z_neg, 0.3),
                               rtol=1e-10)
    # delta = 0 is eq. 4 without the guard
    np.testing.assert_allclose(sauce_jax.score_features(z_pos, z_neg, delta=0.0), numpy_eq4(z_pos, z_neg, 0.0),
                               rtol=1e-10)
    from sauce_jax.scoring import top_features

    fs = top_features(scores=[0.1, 0.7, 0.7, 0.2], k=3, concept="c", layer=1, sae_fingerprint="f")
    assert fs.feature_ids == (1, 2, 3) and fs.gamma == -0.5 and fs.token == "last"  # ties: the lower id first
    assert {fs: "hashable"}[fs] == "hashable"  # immutable, so usable as a key
    with pytest.raises(dataclasses.FrozenInstanceError):
        fs.gamma = 0.0


def test_top_k_finds_planted_concept_features():
    rng = np.random.default_rng(1)
    z_neg = rng.exponential(1.0, (40, 100)) * (rng.random((40, 100)) < 0.1)
    z_pos = rng.exponential(1.0, (30, 100)) * (rng.random((30, 100)) < 0.1)
    planted = [3, 17, 42, 88]
    z_pos[:, planted] += rng.exponential(3.0, (30, 4))
    best = np.argsort(-sauce_jax.score_features(z_pos, z_neg))[:4]
    assert sorted(best) == planted


@pytest.fixture(scope="module")
def toy(small_encoder):
    return toy_sae(SMALL["hidden_size"], 128, seed=0)


images = square_images


def test_select_features_and_featureset_io(toy, small_encoder, tmp_path):
    fs = sauce_jax.select_features(toy, small_encoder, images(0, 6, (255, 0, 0)), images(1, 6), k=5,
                                   layer=-2, concept="red square", progress=False)
    assert fs.k == 5 and len(set(fs.feature_ids)) == 5
    assert list(fs.scores) == sorted(fs.scores, reverse=True)
    assert fs.layer == small_encoder.layer_index(-2) and fs.sae_fingerprint == toy.fingerprint()
    # The chosen ids are exactly the top of eq. 4 on the per-image activations.
    from sauce_jax.scoring import image_activations

    z_pos = image_activations(toy, small_encoder, images(0, 6, (255, 0, 0)), layer=-2, progress=False)
    z_neg = image_activations(toy, small_encoder, images(1, 6), layer=-2, progress=False)
    assert list(fs.feature_ids) == list(np.argsort(-sauce_jax.score_features(z_pos, z_neg), kind="stable")[:5])
    loaded = FeatureSet.load(fs.save(tmp_path / "red.json"))
    assert loaded == fs
    other = sauce_jax.select_features(toy, small_encoder, images(2, 4, (0, 0, 255)), images(1, 6), k=3,
                                      layer=-2, concept="blue", progress=False)
    union = FeatureSet.union(fs, other)
    assert union.concept == "red square+blue"
    assert set(union.feature_ids) == set(fs.feature_ids) | set(other.feature_ids)


def test_featureset_refuses_another_sae(toy, small_encoder):
    fs = sauce_jax.select_features(toy, small_encoder, images(0, 3, (255, 0, 0)), images(1, 3), k=2,
                                   progress=False)
    other = SAE(init_params(jax.random.key(9), toy.config), toy.config)
    with pytest.raises(ConfigError, match="belongs to SAE"):
        sauce_jax.unlearn(small_encoder, other, fs)


def base_and(encoder, sae, ids, **kw):
    pixels = random_pixels(SMALL)
    return encoder.hidden_states(pixels), sauce_jax.unlearn(encoder, sae, ids, **kw).hidden_states(pixels)


def test_delta_with_gamma_one_is_bit_identical(toy, small_encoder):
    base, edited = base_and(small_encoder, toy, np.array([1, 2, 3]), gamma=1.0, mode="delta")
    for a, b in zip(base, edited):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_reconstruct_with_gamma_one_is_the_plain_reconstruction(toy, small_encoder):
    """gamma = 1 scales nothing: the hooked layer holds decode(encode(h)), which is not h."""
    from sauce_jax import sae as sae_lib

    pixels = random_pixels(SMALL)
    layer = small_encoder.layer_index(-2)
    hidden = small_encoder.hidden_state(pixels, layer)
    expected = np.asarray(sae_lib.decode(toy.params, sae_lib.encode(toy.params, hidden, toy.config)))
    got = sauce_jax.unlearn(small_encoder, toy, np.array([4, 9, 30]), layer=layer, gamma=1.0,
                            mode="reconstruct").hidden_state(pixels, layer)
    assert not np.allclose(expected, np.asarray(hidden), atol=1e-3)  # the toy SAE is lossy
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_delta_equals_reconstruct_for_an_exact_sae(small_encoder):
    """An SAE with W_dec = W_enc^-1 and no ReLU losses reconstructs exactly: both modes agree."""
    d = SMALL["hidden_size"]
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))
    w_enc = np.concatenate([q, -q], axis=1).astype(np.float32)  # relu(v) - relu(-v) = v
    w_dec = np.concatenate([q.T, -q.T], axis=0).astype(np.float32)
    cfg = SAEConfig(d_in=d, d_sae=2 * d)
    sae = SAE({"W_enc": jnp.asarray(w_enc), "b_enc": jnp.zeros(2 * d), "W_dec": jnp.asarray(w_dec),
               "b_dec": jnp.asarray(np.random.default_rng(1).standard_normal(d).astype(np.float32))}, cfg)
    ids = np.array([0, 5, d + 3])
    pixels = random_pixels(SMALL)
    a = sauce_jax.unlearn(small_encoder, sae, ids, gamma=-0.5, mode="delta").hidden_states(pixels)
    b = sauce_jax.unlearn(small_encoder, sae, ids, gamma=-0.5, mode="reconstruct").hidden_states(pixels)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["reconstruct", "delta"])
@pytest.mark.parametrize("layer", [0, 1, -1])
def test_intervention_changes_nothing_before_its_layer(toy, small_encoder, mode, layer):
    base, edited = base_and(small_encoder, toy, np.array([4, 9, 30]), layer=layer, mode=mode)
    i = small_encoder.layer_index(layer)
    for j in range(i):
        assert np.array_equal(np.asarray(base[j]), np.asarray(edited[j]))
    assert not np.allclose(np.asarray(base[i]), np.asarray(edited[i]))


@pytest.mark.parametrize("where", ["patch", "cls"])
def test_token_mask(toy, small_encoder, where):
    layer = small_encoder.layer_index(-2)
    base, edited = base_and(small_encoder, toy, np.array([4, 9, 30]), layer=layer, where=where)
    changed = np.abs(np.asarray(base[layer]) - np.asarray(edited[layer])).max(axis=(0, 2)) > 0  # [T]
    assert changed[0] == (where == "cls") and changed[1:].all() == (where == "patch")
    assert not changed[1:].any() if where == "cls" else not changed[0]


def test_reconstruct_matches_a_numpy_transcription(toy, small_encoder):
    pixels = random_pixels(SMALL)
    layer = small_encoder.layer_index(-2)
    x = np.asarray(small_encoder.hidden_state(pixels, layer), np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in toy.params.items()}
    z = np.maximum((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0)
    z[..., [4, 9]] *= -0.5
    expected = z @ p["W_dec"] + p["b_dec"]
    got = sauce_jax.unlearn(small_encoder, toy, np.array([4, 9]), layer=layer).hidden_state(pixels, layer)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_switching_concept_sets_does_not_recompile(toy, small_encoder, mode):
    """New ids, gammas, token masks, per-image sets, thresholds and targets of the shapes
    already compiled reuse the compiled forward, in every mode."""
    pixels = random_pixels(SMALL, batch=4)

    def run(ids, gamma=-0.5, where="all", threshold=0.0, target=0.0):
        ids = np.array(ids)
        extra = {"threshold": threshold} if mode in GATED_MODES else {}
        if mode == "replace":
            extra["targets"] = np.full(ids.shape, target)
        sauce_jax.unlearn(small_encoder, toy, ids, gamma=gamma, mode=mode, where=where, **extra).hidden_states(pixels)

    run([1, 2, 3])
    run([[1, 2, 3]] * 4)  # the per-image shape [B, k] compiles once too
    before = encoder_module._run._cache_size()
    for ids in ([7, 8, 9], [0, 50, 127], [5, -1, -1]):
        for gamma, threshold, target in ((-0.5, 0.0, 0.0), (0.0, 0.3, 0.7)):
            for where in WHERE:
                run(ids, gamma, where, threshold, target)
    run([[7, 8, 9], [0, 50, 127], [5, -1, -1], [-1, -1, -1]], threshold=1.5, target=-0.25)
    run([[1, -1, -1], [2, 3, -1], [9, 8, 7], [4, 5, 6]], gamma=1.5, where="patch", threshold=0.01, target=2.0)
    assert encoder_module._run._cache_size() == before
    assert make_hook(mode, toy.config) is make_hook(mode, toy.config)


def test_one_concept_set_per_image(toy, small_encoder):
    pixels = random_pixels(SMALL, batch=3)
    sets = [np.array([4, 9]), np.array([30]), np.array([1, 2, 3])]
    batched = sauce_jax.unlearn(small_encoder, toy, sauce_jax.per_image_ids(sets, toy)).hidden_state(pixels, -1)
    for i, ids in enumerate(sets):
        single = sauce_jax.unlearn(small_encoder, toy, ids).hidden_state(pixels[i : i + 1], -1)
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(single[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, error, match", [
    (lambda e, s: sauce_jax.unlearn(e, s, np.array([128])), InputError, "outside"),
    (lambda e, s: sauce_jax.unlearn(e, s, np.array([], np.int32)), InputError, "non-empty"),
    (lambda e, s: sauce_jax.unlearn(e, s, np.array([3, 5, 3])), InputError, "repeat"),
    (lambda e, s: sauce_jax.unlearn(e, s, np.array([0, 5, 0])), InputError, "repeat"),
    (lambda e, s: sauce_jax.unlearn(e, s, np.array([1.0, 2.0])), InputError, "int array"),
    (lambda e, s: sauce_jax.unlearn(e, s, np.ones((1, 1, 2), np.int32)), InputError, "int array"),
    (lambda e, s: sauce_jax.unlearn(e, s, [-1]), InputError, "select no feature"),
    (lambda e, s: sauce_jax.unlearn(e, s, np.full((2, 3), -1), mode="delta"), InputError, "select no feature"),
    (lambda e, s: sauce_jax.unlearn(e, s, np.array([1]), layer=9), ConfigError, "out of range"),
    (lambda e, s: sauce_jax.unlearn(e, s, np.array([1]), mode="erase"), ConfigError, "erase"),
    (lambda e, s: sauce_jax.unlearn(e, s, np.array([1]), where="middle"), ConfigError, "middle"),
    (lambda e, s: sauce_jax.unlearn(e, SAE(init_params(jax.random.key(0), SAEConfig(d_in=8, d_sae=16)),
                                           SAEConfig(d_in=8, d_sae=16)), np.array([1])), InputError, "d_in=8"),
    (lambda e, s: sauce_jax.select_features(s, e, images(0, 2), images(1, 2), k=0, progress=False),
     ConfigError, "k must be"),
    (lambda e, s: sauce_jax.select_features(s, e, images(0, 2), images(1, 2), k=129, progress=False),
     ConfigError, "k must be"),
    (lambda e, s: sauce_jax.select_features(s, e, images(0, 2), images(1, 2), k=True, progress=False),
     ConfigError, "k must be"),
    (lambda e, s: sauce_jax.select_features(s, e, images(0, 2), images(1, 2), k=2.0, progress=False),
     ConfigError, "k must be"),
    (lambda e, s: sauce_jax.select_features(s, e, [], images(1, 2), k=2, progress=False), InputError, "no images"),
    (lambda e, s: sauce_jax.score_features(np.zeros((0, 4)), np.zeros((2, 4))), InputError, "z_pos"),
    (lambda e, s: sauce_jax.score_features(np.zeros((2, 4)), np.zeros((2, 5))), InputError, "features"),
])
def test_bad_input(toy, small_encoder, call, error, match):
    with pytest.raises(error, match=match):
        call(small_encoder, toy)


def test_featureset_file_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        FeatureSet.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        FeatureSet.load(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"concept": "x"}')
    with pytest.raises(InputError, match="lacks"):
        FeatureSet.load(tmp_path / "partial.json")


def test_per_image_arguments_must_fit_the_batch(toy, small_encoder):
    pixels = random_pixels(SMALL, batch=2)
    three = sauce_jax.per_image_ids([np.array([1]), np.array([2]), np.array([3])], toy)
    with pytest.raises(InputError, match="3 sets for a batch of 2"):
        sauce_jax.unlearn(small_encoder, toy, three).hidden_states(pixels)
    with pytest.raises(InputError, match="gamma of shape"):
        sauce_jax.unlearn(small_encoder, toy, np.array([1]), gamma=np.array([0.5, 0.1, 0.2])).hidden_states(pixels)


def test_featureset_top_and_union_through_an_instance():
    fs = FeatureSet("a", (5, 2, 9), (0.9, 0.5, 0.1), layer=3, sae_fingerprint="f", gamma=-0.5)
    assert fs.top(2) == FeatureSet("a", (5, 2), (0.9, 0.5), layer=3, sae_fingerprint="f", gamma=-0.5)
    assert fs.top(2).gamma == -0.5 and fs.top(1, gamma=0.25).gamma == 0.25 and fs.top(1, gamma=0.0).gamma == 0.0
    other = FeatureSet("b", (2, 7), (0.8, 0.3), layer=3, sae_fingerprint="f", gamma=-0.5)
    # union is a static method: called through a set, it combines only the sets passed
    assert fs.union(other) == other and fs.union(fs, other) == FeatureSet.union(fs, other)
    assert FeatureSet.union(fs, other).feature_ids == (5, 2, 9, 7)
    with pytest.raises(ConfigError, match="layer 3 != 4"):
        FeatureSet.union(fs, dataclasses.replace(other, layer=4))


def test_unreadable_images_are_skipped_batch_by_batch(toy, small_encoder, tmp_path):
    """A batch of unreadable files only is skipped; the batches after it still count."""
    from PIL import Image

    from sauce_jax.scoring import image_activations

    good = []
    for i, array in enumerate(images(3, 2)):
        Image.fromarray(array).save(tmp_path / f"good{i}.png")
        good.append(tmp_path / f"good{i}.png")
        (tmp_path / f"bad{i}.png").write_bytes(b"not a png")
    bad = [tmp_path / "bad0.png", tmp_path / "bad1.png"]
    z = image_activations(toy, small_encoder, bad + good, layer=-2, batch_size=2, progress=False)
    np.testing.assert_array_equal(z, image_activations(toy, small_encoder, good, layer=-2, progress=False))


def test_featureset_file_without_gamma_and_token_gets_the_defaults(tmp_path):
    (tmp_path / "old.json").write_text('{"concept": "x", "feature_ids": [3], "scores": [0.5], "layer": 1, '
                                       '"sae_fingerprint": "f"}')
    fs = FeatureSet.load(tmp_path / "old.json")
    assert (fs.gamma, fs.token, fs.feature_ids) == (-0.5, "last", (3,))  # the paper's gamma


def test_select_features_defaults_and_bounds(toy, small_encoder, capsys):
    """k may be 1 or d_sae; the token defaults to the SAE's metadata; a FeatureSet applies to
    its SAE and refuses ids outside it; image_activations shows progress by default."""
    from sauce_jax.scoring import image_activations

    sae = SAE(toy.params, toy.config, metadata={"token": "cls"})
    one = sauce_jax.select_features(sae, small_encoder, images(0, 2, (255, 0, 0)), images(1, 2), k=1, layer=-2,
                                    progress=False)
    assert one.k == 1 and one.token == "cls"
    every = sauce_jax.select_features(sae, small_encoder, images(0, 2), images(1, 2), k=128, token="all",
                                      progress=False)
    assert every.token == "all" and every.layer == small_encoder.layer_index(-2)  # no layer given or in metadata
    pixels = random_pixels(SMALL)
    ids = np.array(one.feature_ids)
    np.testing.assert_array_equal(sauce_jax.unlearn(small_encoder, sae, one).hidden_state(pixels, -1),
                                  sauce_jax.unlearn(small_encoder, sae, ids, layer=-2).hidden_state(pixels, -1))
    with pytest.raises(InputError, match="outside"):
        FeatureSet("x", (1, 128), (0.0, 0.0), layer=1, sae_fingerprint=sae.fingerprint()).check_sae(sae)
    FeatureSet("x", (0, 127), (0.0, 0.0), layer=1, sae_fingerprint=sae.fingerprint()).check_sae(sae)  # both ends valid
    assert "positives" not in capsys.readouterr().err  # progress=False above
    image_activations(sae=sae, encoder=small_encoder, images=images(0, 2), layer=-2, desc="my-images")
    err = capsys.readouterr().err
    assert "my-images" in err and not err.endswith("\n"), "the bar shows, then is cleared (leave=False)"
    sauce_jax.select_features(sae, small_encoder, images(0, 2), images(1, 2), k=1, layer=-2)
    assert "positives" in capsys.readouterr().err


@pytest.mark.parametrize("architecture", ["standard", "topk", "batchtopk"])
def test_delta_selected_latents_are_those_of_encode(architecture):
    """delta computes the selected latents itself (without encoding all d_sae): they must be
    those of sae.encode, with b_enc, and for BatchTopK with a latent at exactly its threshold off."""
    from sauce_jax import sae as sae_lib
    from sauce_jax.intervention import InterventionArgs

    cfg = SAEConfig(d_in=4, d_sae=4, architecture=architecture, k=None if architecture == "standard" else 2)
    params = {"W_enc": jnp.eye(4), "b_enc": jnp.array([0.0, 0.5, 0.0, -0.25]), "W_dec": 2.0 * jnp.eye(4),
              "b_dec": jnp.zeros(4)}
    if architecture == "batchtopk":
        params["threshold"] = jnp.array([1.0, 1.0, 0.5, 0.5])
    hidden = jnp.array([[[1.0, 2.0, 0.5, 3.0], [0.25, 1.5, 2.0, 0.5]]])  # [1, 2, 4]
    ids, gamma = jnp.array([0, 1, 2]), jnp.asarray(0.5)
    got = make_hook("delta", cfg)(hidden, InterventionArgs(params, ids, gamma, jnp.ones(2, bool)))
    z = np.asarray(sae_lib.encode(params, hidden, cfg))
    if architecture == "batchtopk":
        assert z[0, 0, 0] == 0 and z[0, 0, 2] == 0 and z[0, 1, 2] == 2.0  # at the threshold: off
    expected = np.asarray(hidden) + (0.5 - 1.0) * z[..., [0, 1, 2]] @ np.asarray(params["W_dec"])[[0, 1, 2]]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)


def test_raw_ids_default_to_layer_minus_two_and_the_paper_gamma(toy, small_encoder):
    pixels = random_pixels(SMALL)
    ids = np.array([4, 9, 30])
    default = sauce_jax.unlearn(small_encoder, toy, ids).hidden_states(pixels)
    explicit = sauce_jax.unlearn(small_encoder, toy, ids, layer=-2, gamma=-0.5).hidden_states(pixels)
    for a, b in zip(default, explicit):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # -1 pads a set; 0 is a feature like any other
    padded = sauce_jax.unlearn(small_encoder, toy, np.array([0, -1])).hidden_state(pixels, -1)
    np.testing.assert_allclose(padded, sauce_jax.unlearn(small_encoder, toy, np.array([0])).hidden_state(pixels, -1),
                               rtol=1e-5, atol=1e-5)


def test_one_gamma_per_image(toy, small_encoder):
    pixels = random_pixels(SMALL, batch=2)
    ids = np.array([4, 9, 30])
    both = sauce_jax.unlearn(small_encoder, toy, ids, gamma=np.array([0.5, -1.0])).hidden_state(pixels, -1)
    for i, gamma in enumerate((0.5, -1.0)):
        alone = sauce_jax.unlearn(small_encoder, toy, ids, gamma=gamma).hidden_state(pixels[i : i + 1], -1)
        np.testing.assert_allclose(np.asarray(both[i]), np.asarray(alone[0]), rtol=1e-5, atol=1e-5)


def test_intervention_args_by_keyword(toy):
    from sauce_jax.intervention import intervention_args

    args = intervention_args(sae=toy, features=np.array([3, -1]), gamma=0.25, num_tokens=5, where="patch")
    assert args.feature_ids.tolist() == [3, -1] and float(args.gamma) == 0.25
    assert args.token_mask.tolist() == [False, True, True, True, True]
