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
