"""The hidden-state and hook contract of VisionEncoder (design.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sauce_jax
from tiny_models import SMALL, random_pixels
from sauce_jax.ports import clip
from sauce_jax import encoder as encoder_module


def identity(hidden, args):
    return hidden


def add_args(hidden, args):
    return hidden + args


def test_jit_equals_eager(small_encoder):
    pixels = random_pixels(SMALL)
    jitted = small_encoder.hidden_states(pixels)
    with jax.disable_jit():
        eager = small_encoder.hidden_states(pixels)
    for a, b in zip(jitted, eager):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_identity_hooks_are_bit_identical(small_encoder):
    pixels = random_pixels(SMALL)
    plain = small_encoder.hidden_states(pixels)
    hooked = small_encoder.hidden_states(pixels, hooks={i: identity for i in range(len(plain))})
    for a, b in zip(plain, hooked):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("index", [0, 1, -1])
def test_hook_changes_nothing_before_its_index(small_encoder, index):
    pixels = random_pixels(SMALL)
    plain = small_encoder.hidden_states(pixels)
    i = small_encoder.layer_index(index)
    shift = jnp.full((SMALL["hidden_size"],), 0.5, jnp.float32)
    hooked = small_encoder.hidden_states(pixels, hooks={index: (add_args, shift)})
    for j in range(i):
        assert np.array_equal(np.asarray(plain[j]), np.asarray(hooked[j])), j
    # The rewritten value is what hidden_states returns at the hooked index ...
    np.testing.assert_allclose(np.asarray(hooked[i]), np.asarray(plain[i]) + 0.5, rtol=1e-6, atol=1e-6)
    # ... and the blocks after it read it.
    for j in range(i + 1, len(plain)):
        assert not np.allclose(np.asarray(plain[j]), np.asarray(hooked[j])), j


def test_negative_indices_and_upto(small_encoder):
    pixels = random_pixels(SMALL)
    full = small_encoder.hidden_states(pixels)
    assert len(full) == SMALL["num_hidden_layers"] + 1
    upto = small_encoder.hidden_states(pixels, upto=-2)
    assert len(upto) == len(full) - 1
    for a, b in zip(upto, full):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(small_encoder.hidden_state(pixels, -2)), np.asarray(full[-2]))
    np.testing.assert_array_equal(np.asarray(small_encoder.hidden_state(pixels, 0)), np.asarray(full[0]))


def test_early_stop_runs_no_block_past_the_requested_layer(small_encoder, monkeypatch):
    calls = []
    original = clip.CLIPVisionModel.block

    def counting_block(self, i, hidden):
        calls.append(i)
        return original(self, i, hidden)

    monkeypatch.setattr(clip.CLIPVisionModel, "block", counting_block)
    pixels = random_pixels(SMALL, batch=5)  # a batch size no other test compiles
    small_encoder.hidden_state(pixels, -2)
    assert calls == list(range(SMALL["num_hidden_layers"] - 1))


def test_new_hook_args_of_the_same_shape_do_not_recompile(small_encoder):
    pixels = random_pixels(SMALL, batch=3)
    first = jnp.zeros((SMALL["hidden_size"],), jnp.float32)
    small_encoder.hidden_states(pixels, hooks={-2: (add_args, first)})
    size = encoder_module._run._cache_size()
    out = small_encoder.hidden_states(pixels, hooks={-2: (add_args, first + 1.0)})
    assert encoder_module._run._cache_size() == size
    base = small_encoder.hidden_states(pixels)
    np.testing.assert_allclose(np.asarray(out[-2]), np.asarray(base[-2]) + 1.0, rtol=1e-6, atol=1e-6)


def test_with_hooks_is_persistent_and_shares_params(small_encoder):
    pixels = random_pixels(SMALL)
    shifted = small_encoder.with_hooks({1: (add_args, jnp.float32(2.0))})
    assert shifted.state is small_encoder.state
    np.testing.assert_allclose(np.asarray(shifted.hidden_state(pixels, 1)),
                               np.asarray(small_encoder.hidden_state(pixels, 1)) + 2.0, rtol=1e-6)
    with pytest.raises(sauce_jax.ConfigError, match="already has a hook"):
        shifted.hidden_states(pixels, hooks={1: identity})


def test_preprocess_feeds_the_encoder(small_encoder):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), rng.integers(0, 256, (40, 40), dtype=np.uint8)]
    pixels = sauce_jax.preprocess(images, small_encoder)
    assert pixels.shape == (2, SMALL["image_size"], SMALL["image_size"], 3) and pixels.dtype == np.float32
    assert small_encoder.hidden_state(pixels, -2).shape == (2, (SMALL["image_size"] // SMALL["patch_size"]) ** 2 + 1,
                                                           SMALL["hidden_size"])
