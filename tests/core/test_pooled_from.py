"""`VisionEncoder.pooled_from`: resuming the forward at a cached hidden state gives what the
whole (hooked) tower gives, so benchmarks may edit cached activations instead of images."""

from __future__ import annotations

import numpy as np
import pytest

from sauce_jax.errors import ConfigError, InputError


def shift(hidden, amount):
    return hidden + amount * hidden[:, -1:]  # a change the final layernorm does not undo


def test_pooled_from_matches_the_hooked_tower(tiny_dinov2):
    import sauce_jax

    encoder = sauce_jax.load_encoder(tiny_dinov2)
    pixels = np.random.default_rng(0).standard_normal((3, 28, 28, 3)).astype(np.float32)
    for layer in (0, -1):
        cached = encoder.hidden_state(pixels, layer)  # [3, T, D] before any hook at `layer`
        np.testing.assert_allclose(encoder.pooled_from(cached, layer), encoder(pixels).pooler_output,
                                   rtol=1e-5, atol=1e-5)
        hooked = encoder(pixels, hooks={layer: (shift, 1.5)}).pooler_output
        np.testing.assert_allclose(encoder.pooled_from(cached, layer, hooks={layer: (shift, 1.5)}), hooked,
                                   rtol=1e-5, atol=1e-5)
        # The hook must change the output, or the comparison above would prove nothing.
        assert np.abs(np.asarray(hooked) - np.asarray(encoder(pixels).pooler_output)).max() > 1e-3
    with pytest.raises(ConfigError, match="before layer 2"):
        encoder.pooled_from(encoder.hidden_state(pixels, 2), 2, hooks={1: (shift, 2.0)})
    with pytest.raises(InputError, match="hidden states must be"):
        encoder.pooled_from(np.zeros((3, 4, 32), np.float32), 1)


def test_hidden_state_from_matches_the_hooked_tower(tiny_dinov2):
    """`hidden_state_from` resumes at a cached state and stops at `upto`, hooks on the way
    applied (those past `upto` cannot matter), as the whole hooked tower gives it."""
    import sauce_jax

    encoder = sauce_jax.load_encoder(tiny_dinov2)
    pixels = np.random.default_rng(1).standard_normal((3, 28, 28, 3)).astype(np.float32)
    last = encoder.layer_index(-1)
    for start, upto in ((0, last), (1, 1), (1, last - 1)):
        cached = encoder.hidden_state(pixels, start)
        hooks = {start: (shift, 1.5), last: (shift, -3.0)}
        edited = encoder.with_hooks(hooks)
        want = edited.hidden_state(pixels, upto)
        np.testing.assert_allclose(edited.hidden_state_from(cached, start, upto), want, rtol=1e-5, atol=1e-5)
        assert np.abs(np.asarray(want) - np.asarray(encoder.hidden_state(pixels, upto))).max() > 1e-3
    with pytest.raises(ConfigError, match="lies before layer 2"):
        encoder.hidden_state_from(encoder.hidden_state(pixels, 2), 2, 1)
    with pytest.raises(ConfigError, match="before layer 2"):
        encoder.hidden_state_from(encoder.hidden_state(pixels, 2), 2, 3, hooks={1: (shift, 2.0)})
