"""Selection beyond eq. 4: scoring against the other concepts, the specificity filter, and
the options recorded in the FeatureSet (old files without them still load)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sauce_jax
from tiny_models import SMALL
from tiny_saes import square_images, toy_sae
from sauce_jax import ConfigError, FeatureSet, InputError
from sauce_jax.scoring import image_activations


def numpy_against_others(z_pos, z_others, delta):
    """A direct transcription: positives' normalised mean minus the largest other's, per feature."""
    def normalised(z):
        mu = z.mean(axis=0)
        return mu / (mu.sum() + delta)

    return np.array([normalised(z_pos)[i] - max(normalised(z)[i] for z in z_others.values())
                     for i in range(z_pos.shape[1])])


def planted(seed=0):
    """Activations where features 3 and 8 fire for the concept only, 5 for the concept and
    for "dog" (another concept, absent from the generic negatives), 1 everywhere."""
    rng = np.random.default_rng(seed)
    z = {name: rng.exponential(0.1, (20, 12)) for name in ("pos", "neg", "dog", "car")}
    z["pos"][:, [3, 8]] += 2.0
    z["pos"][:, 5] += 3.0
    z["dog"][:, 5] += 3.0
    for name in z:
        z[name][:, 1] += 1.0
    return z


def test_score_against_others_is_its_equation():
    z = planted()
    others = {"dog": z["dog"], "car": z["car"]}
    np.testing.assert_allclose(sauce_jax.score_against_others(z["pos"], others, delta=0.1),
                               numpy_against_others(z["pos"], others, 0.1), rtol=1e-12)
    # One other concept is eq. 4 with that concept as the negatives.
    np.testing.assert_allclose(sauce_jax.score_against_others(z["pos"], {"dog": z["dog"]}),
                               sauce_jax.score_features(z["pos"], z["dog"]), rtol=1e-12)


def test_a_feature_shared_with_another_concept_is_dropped():
    z = planted()
    eq4 = np.argsort(-sauce_jax.score_features(z["pos"], z["neg"]), kind="stable")[:3]
    assert 5 in eq4  # eq. 4 against generic negatives ranks the shared feature first
    others = np.argsort(-sauce_jax.score_against_others(z["pos"], {"dog": z["dog"], "car": z["car"]}),
                        kind="stable")[:2]
    assert sorted(others) == [3, 8]
    keep = sauce_jax.specific_features(z["pos"], {"dog": z["dog"], "car": z["car"]}, specificity=0.5)
    assert keep[3] and keep[8] and not keep[5] and not keep[1]
    # The filter against the negatives alone keeps the shared feature: dogs are not among them.
    assert sauce_jax.specific_features(z["pos"], {"negatives": z["neg"]}, 0.5)[5]


def test_specificity_is_a_ratio_of_means():
    z_pos = np.array([[2.0, 1.0, 0.0, 0.0]])
    z_ref = np.array([[1.0, 1.0, 0.0, 0.5]])
    np.testing.assert_array_equal(sauce_jax.specific_features(z_pos, {"r": z_ref}, 0.5), [True, False, False, False])
    np.testing.assert_array_equal(sauce_jax.specific_features(z_pos, {"r": z_ref}, 1.0), [True, True, False, False])


@pytest.mark.parametrize("call, error, match", [
    (lambda z: sauce_jax.score_against_others(z["pos"], {}), InputError, "non-empty"),
    (lambda z: sauce_jax.score_against_others(z["pos"], {"dog": z["dog"][:, :5]}), InputError, "z_others\\['dog'\\]"),
    (lambda z: sauce_jax.score_against_others(z["pos"], {"dog": np.zeros((0, 12))}), InputError, "dog"),
    (lambda z: sauce_jax.score_against_others(z["pos"], {"dog": z["dog"]}, delta=-1), ConfigError, "delta"),
    (lambda z: sauce_jax.specific_features(z["pos"], {"dog": z["dog"]}, 0.0), ConfigError, "specificity"),
    (lambda z: sauce_jax.specific_features(z["pos"], {"dog": z["dog"]}, float("nan")), ConfigError, "specificity"),
])
def test_bad_scoring_input(call, error, match):
    with pytest.raises(error, match=match):
        call(planted())


@pytest.fixture(scope="module")
def toy(small_encoder):
    return toy_sae(SMALL["hidden_size"], 64, seed=1)


images = square_images


def test_select_features_with_options_and_the_recorded_selection(toy, small_encoder, tmp_path):
    red, plain, blue = images(0, 4, (255, 0, 0)), images(1, 4), images(2, 4, (0, 0, 255))
    fs = sauce_jax.select_features(toy, small_encoder, red, plain, k=5, layer=-2, concept="red", progress=False,
                                   contrast="others", others={"blue": blue}, specificity=2.0)
    z = {name: image_activations(toy, small_encoder, x, layer=-2, progress=False)
         for name, x in (("red", red), ("blue", blue))}
    scores = sauce_jax.score_against_others(z["red"], {"blue": z["blue"]})
    keep = sauce_jax.specific_features(z["red"], {"blue": z["blue"]}, 2.0)
    order = [i for i in np.argsort(-scores, kind="stable") if keep[i]]
    assert list(fs.feature_ids) == order[:5] and fs.k == min(5, len(order))
    assert fs.selection == {"contrast": "others", "specificity": 2.0, "delta": 1e-6, "others": ["blue"]}
    assert FeatureSet.load(fs.save(tmp_path / "red.json")) == fs
    assert fs.top(2).selection == fs.selection
    # The default is eq. 4 against the negatives, recorded as such.
    default = sauce_jax.select_features(toy, small_encoder, red, plain, k=3, layer=-2, progress=False)
    assert default.selection == {"contrast": "negatives", "specificity": None, "delta": 1e-6, "others": []}
    assert default != FeatureSet(**{**default.__dict__, "selection": {}})  # compared, though not hashed
    # A strict filter against the negatives keeps fewer than k; one nothing passes is an error.
    strict = sauce_jax.select_features(toy, small_encoder, red, plain, k=64, layer=-2, progress=False,
                                       specificity=1.0)
    assert 0 < strict.k < 64
    with pytest.raises(InputError, match="specificity filter"):
        sauce_jax.select_features(toy, small_encoder, red, red, k=3, layer=-2, progress=False, specificity=1e-9)


def test_old_featureset_files_load_without_a_selection(tmp_path):
    old = {"concept": "x", "feature_ids": [3, 1], "scores": [0.5, 0.2], "layer": 1, "sae_fingerprint": "f",
           "gamma": -0.5, "token": "last", "k": 2}
    (tmp_path / "old.json").write_text(json.dumps(old))
    fs = FeatureSet.load(tmp_path / "old.json")
    assert fs.selection == {} and fs.feature_ids == (3, 1)
    assert {fs: 1}[fs] == 1  # still hashable
    union = FeatureSet.union(fs, FeatureSet("y", (2,), (0.1,), 1, "f", selection={"contrast": "others"}))
    assert union.selection == {"union": {"x": {}, "y": {"contrast": "others"}}}


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(contrast="rivals"), ConfigError, "'rivals'"),
    (dict(contrast="others"), ConfigError, "needs others"),
    (dict(contrast="others", others={}), ConfigError, "others must be a non-empty"),
    (dict(specificity=0), ConfigError, "specificity"),
    (dict(specificity=-1.0), ConfigError, "specificity"),
    (dict(contrast="others", others={"blue": []}), InputError, "others\\['blue'\\]"),
])
def test_bad_selection_options(toy, small_encoder, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        sauce_jax.select_features(toy, small_encoder, images(0, 2), images(1, 2), k=2, progress=False, **kwargs)


def test_an_others_folder_without_readable_images(toy, small_encoder, tmp_path):
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "a.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="dogs"):
        sauce_jax.select_features(toy, small_encoder, images(0, 2), images(1, 2), k=2, progress=False,
                                  contrast="others", others={"dogs": tmp_path / "dogs"})


# -- the steps every evaluation stack shares ------------------------------------------------
def test_one_vs_rest_selection_is_eq4_per_target():
    """`select_one_vs_rest` on precomputed activations: each target's own rows against every
    other row, by eq. 4, as `score_features` + `top_features` give it concept by concept."""
    from sauce_jax.scoring import score_features, select_one_vs_rest, top_features

    z = planted()
    rows = np.concatenate([z["pos"], z["dog"], z["car"]])
    owners = np.array(["pos"] * 20 + ["dog"] * 20 + ["car"] * 20)
    sets = select_one_vs_rest(rows, owners, ["pos", "dog"], 3, layer=2, sae_fingerprint="f", gamma=-1.0)
    for target in ("pos", "dog"):
        own = owners == target
        expected = top_features(score_features(rows[own], rows[~own]), 3, concept=target, layer=2,
                                sae_fingerprint="f", gamma=-1.0, token="all")
        assert sets[target] == expected
    assert set(sets["pos"].feature_ids[:2]) == {3, 8}  # the planted features, not the one "dog" shares
    assert 5 in sets["dog"].feature_ids
    with pytest.raises(InputError, match="owners"):
        select_one_vs_rest(rows, owners[:10], ["pos"], 3, layer=2, sae_fingerprint="f")
    with pytest.raises(InputError, match="'cat'"):
        select_one_vs_rest(rows, owners, ["cat"], 3, layer=2, sae_fingerprint="f")
    with pytest.raises(ConfigError, match="k must"):
        select_one_vs_rest(rows, owners, ["pos"], 0, layer=2, sae_fingerprint="f")


def test_matched_random_controls_are_rank_matched_and_stable():
    """Each matched-random feature is one of the 10 unselected features nearest in rank of
    mean activation on the positives to the feature it replaces; no draw repeats a feature; the
    stream is a function of (seed, concept, draw); no-contrast is the k most active."""
    from sauce_jax.scoring import control_sets

    rng = np.random.default_rng(0)
    mean = rng.exponential(1.0, 200)
    features = FeatureSet(concept="cat", feature_ids=(5, 17, 42, 99), scores=(1.0,) * 4, layer=1,
                          sae_fingerprint="f", gamma=-1.0)
    made = control_sets(features, mean, draws=20, seed=3)
    order = np.argsort(-mean, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    others = [int(f) for f in order if f not in features.feature_ids]
    for drawn in made["matched-random"]:
        assert len(set(drawn.feature_ids)) == 4 and not set(drawn.feature_ids) & set(features.feature_ids)
        assert drawn.gamma == -1.0 and drawn.concept == "cat"
        for chosen, replacement in zip(features.feature_ids, drawn.feature_ids):
            distance = sorted(abs(rank[o] - rank[chosen]) for o in others)
            assert abs(rank[replacement] - rank[chosen]) <= distance[9 + 4]  # 10 nearest, minus those taken
    assert len({d.feature_ids for d in made["matched-random"]}) > 10  # the draws vary
    assert made == control_sets(features, mean, draws=20, seed=3)
    assert made["matched-random"] != control_sets(features, mean, draws=20, seed=4)["matched-random"]
    assert made["no-contrast"].feature_ids == tuple(int(i) for i in order[:4])
    with pytest.raises(InputError, match="positives_mean"):
        control_sets(features, np.full(200, np.nan), draws=2, seed=0)


def test_padded_activations_through_a_deeper_forward_equal_the_plain_ones(toy, small_encoder):
    """`image_activations` with `pad_to` (one compiled batch shape) and `upto` (the forward a
    VLM's answerer already runs) gives the plain per-image activations."""
    images = square_images(0, 5, (255, 0, 0))
    plain = image_activations(toy, small_encoder, images, layer=-2, token="all", batch_size=2, progress=False)
    padded = image_activations(toy, small_encoder, images, layer=-2, token="all", batch_size=2, pad_to=4,
                               upto=-1, progress=False)
    assert plain.shape == (5, toy.config.d_sae)
    np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="pad_to"):
        image_activations(toy, small_encoder, images, layer=-2, batch_size=4, pad_to=2, progress=False)
