"""Mllama end to end: our JAX tower inside `MllamaForConditionalGeneration` (sauce_jax.eval.vlm.mllama_bridge)
gives the native logits and generations; an SAE trained on a hooked Mllama layer, its
features selected and the unlearned tower run through the same bridge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sauce_jax
import transformers
from tiny_models import MLLAMA_SMALL as SMALL, make_mllama_cg, relative_error
from sauce_jax.eval.vlm.mllama_bridge import generate_with_states, logits_with_states, mllama_cross_attention_states
from sauce_jax.sae import SAEConfig
from sauce_jax.train import TrainConfig, train_sae

MllamaImageProcessorPil = getattr(transformers, "MllamaImageProcessorPil", None) or transformers.MllamaImageProcessor
IMAGE_TOKEN = 95


@pytest.fixture(scope="module")
def cg():
    model = make_mllama_cg(SMALL, seed=7)
    return model, sauce_jax.load_encoder(model)


def photos(seed: int, n: int, square=None) -> list[np.ndarray]:
    """Random images of several aspect ratios (1 to 4 tiles of 16 px), optionally with a colored square."""
    rng = np.random.default_rng(seed)
    shapes = [(20, 50), (60, 15), (30, 30), (14, 40), (33, 33), (16, 64)]
    out = []
    for i in range(n):
        image = rng.integers(0, 256, shapes[i % len(shapes)] + (3,), dtype=np.uint8)
        if square is not None:
            image[2:12, 2:12] = square
        out.append(image)
    return out


def prompt(batch: int, tiles_mask: np.ndarray, seed: int = 0) -> dict:
    """input_ids [B, S] starting with the image token; every text token sees the image's tiles."""
    ids = torch.from_numpy(np.random.default_rng(seed).integers(3, IMAGE_TOKEN, (batch, 6)))
    ids[:, 0] = IMAGE_TOKEN
    cross = torch.from_numpy(tiles_mask).long()[:, None, None, :].expand(batch, ids.shape[1], 1, -1).contiguous()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "cross_attention_mask": cross}


def native_pixels(images) -> dict:
    processor = MllamaImageProcessorPil(size={"height": 16, "width": 16}, max_image_tiles=4)
    out = processor(images=[[Image.fromarray(i)] for i in images], return_tensors="pt")
    return {k: out[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}


def test_bridge_without_intervention_gives_native_logits_and_generation(cg):
    model, encoder = cg
    images = photos(0, 4)
    inputs = sauce_jax.preprocess(images, encoder)
    text = prompt(len(images), inputs["aspect_ratio_mask"])
    native = native_pixels(images)
    with torch.no_grad():
        expected = model(**text, **native).logits
    states = mllama_cross_attention_states(model, encoder, inputs)
    assert states.shape == (4 * 4, (16 // 4) ** 2 + 1, 32)  # images x tiles, tokens per tile, text width
    assert relative_error(logits_with_states(model, text, states).numpy(), expected) <= 1e-5
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected_ids = model.generate(**text, **native, **greedy)
    torch.testing.assert_close(generate_with_states(model, text, states, **greedy), expected_ids, rtol=0, atol=0)


def test_sae_trained_on_mllama_layer_and_unlearned_tower(cg, tmp_path):
    model, encoder = cg
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(photos(1, 8)):
        Image.fromarray(image).save(folder / f"img_{i:02d}.png")
    layer = encoder.layer_index(-2)  # the default: output of the penultimate global block
    assert layer == encoder.layer_index(("global", SMALL["num_global_layers"] - 1))
    cfg = TrainConfig(lr=2e-3, batch_size=128, epochs=1, log_every=5, checkpoint_every=10**6)
    sae = train_sae(tmp_path / "run", encoder=encoder, images=folder, layer=-2, token="all", chunk_images=8,
                    encode_batch=4, sae_config=SAEConfig(d_in=SMALL["hidden_size"], d_sae=64), train_config=cfg,
                    progress=False)
    assert sae.metadata["layer"] == layer
    positives, negatives = photos(2, 4, square=(255, 0, 0)), photos(3, 4)  # batches of 4: no new compile
    fs = sauce_jax.select_features(sae, encoder, positives, negatives, k=4, concept="red square", progress=False)
    assert fs.layer == layer and fs.k == 4
    unlearned = sauce_jax.unlearn(encoder, sae, fs)
    inputs = sauce_jax.preprocess(positives, encoder)
    before, after = encoder(inputs), unlearned(inputs)
    for i in range(layer):  # nothing changes before the hooked layer ...
        np.testing.assert_array_equal(np.asarray(before.hidden_states[i]), np.asarray(after.hidden_states[i]))
    assert relative_error(after.hidden_states[layer], before.hidden_states[layer]) > 1e-3  # ... it does there
    # A global-layer edit leaves the intermediate local channels of the tower's output as they were.
    d = SMALL["hidden_size"]
    np.testing.assert_array_equal(np.asarray(after.last_hidden_state[..., d:]),
                                  np.asarray(before.last_hidden_state[..., d:]))
    text = prompt(4, inputs["aspect_ratio_mask"])
    plain = logits_with_states(model, text, mllama_cross_attention_states(model, encoder, inputs))
    edited = logits_with_states(model, text, mllama_cross_attention_states(model, encoder, inputs,
                                                                           unlearned=unlearned))
    assert np.isfinite(edited.numpy()).all() and relative_error(edited.numpy(), plain) > 1e-6
