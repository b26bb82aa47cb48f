"""`torch_hook` on SigLIP, DINOv2 and Mllama towers against our `unlearn`, as for CLIP in
test_torch_bridge: with the hook registered, transformers' outputs must equal our JAX
encoder's with the same intervention. For Mllama, whose vision model returns no hidden
states, the reference is its last_hidden_state (global output and every intermediate local
layer); inside MllamaForConditionalGeneration, test_export compares the logits."""

from __future__ import annotations

import pytest
import torch

import sauce_jax
from tiny_models import (DINOV2_SMALL, MLLAMA_SMALL, SIGLIP_SMALL, make_dinov2_model, make_mllama,
                         make_siglip_vision, mllama_random_inputs, mllama_torch_inputs, random_pixels, relative_error)
from tiny_saes import busiest_features, make_sae
from sauce_jax.torch_bridge import torch_hook, vision_tower

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def torch_forward(model, pixels):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)


# State 0 (the embeddings' output) on one family, a block's output on the other; the
# vision-only export tests (test_export) hook block outputs of both.
@pytest.mark.parametrize("family,architecture,mode,layer,where", [("siglip", "standard", "reconstruct", 0, "all"),
                                                                  ("dinov2", "topk", "delta", -2, "patch")])
def test_vit_towers(family, architecture, mode, layer, where):
    fields, make = {"siglip": (SIGLIP_SMALL, make_siglip_vision), "dinov2": (DINOV2_SMALL, make_dinov2_model)}[family]
    model = make(fields, seed=5)
    assert vision_tower(model).family == family
    encoder = sauce_jax.load_encoder(model)
    pixels = random_pixels(fields, seed=5)
    base = torch_forward(model, pixels)
    sae = make_sae(architecture, fields["hidden_size"])
    ids = busiest_features(sae, base.hidden_states[layer])
    ours = sauce_jax.unlearn(encoder, sae, ids, layer=layer, mode=mode, where=where)(pixels)
    with torch_hook(sae, ids, mode=mode, where=where).register(model, layer):
        ref = torch_forward(model, pixels)
    assert len(ours.hidden_states) == len(ref.hidden_states)
    errors = [relative_error(a, b) for a, b in zip(ours.hidden_states, ref.hidden_states)]
    assert max(errors) <= TOL, errors
    assert relative_error(ours.pooler_output, ref.pooler_output) <= TOL
    # Not vacuous: the hooked state moved; the states before it did not.
    assert relative_error(ref.hidden_states[layer].numpy(), base.hidden_states[layer]) > 1e-2
    for i in range(encoder.layer_index(layer)):
        assert torch.equal(ref.hidden_states[i], base.hidden_states[i])


@pytest.fixture(scope="module")
def mllama_tower():
    model = make_mllama(MLLAMA_SMALL, seed=6)
    encoder = sauce_jax.load_encoder(model)
    inputs = mllama_random_inputs(MLLAMA_SMALL, seed=6)
    with torch.no_grad():
        base = model(**mllama_torch_inputs(inputs)).last_hidden_state[:, 0]
    return model, encoder, inputs, base


# Every kind of hook point: the local transformer's input (0, a pre-hook), the last local
# block (L = 3: the global transformer's input, and an intermediate layer the language model
# reads) and the last global block (-1); test_export hooks the penultimate one (-2).
MLLAMA_COVER = [("standard", "reconstruct", 0, "all"), ("batchtopk", "delta", 3, "patch"),
                ("topk", "reconstruct", -1, "cls")]


@pytest.mark.parametrize("architecture,mode,layer,where", MLLAMA_COVER)
def test_mllama_tower(mllama_tower, architecture, mode, layer, where):
    model, encoder, inputs, base = mllama_tower
    sae = make_sae(architecture, MLLAMA_SMALL["hidden_size"], seed=1)
    ids = busiest_features(sae, encoder.hidden_state(inputs, layer))
    ours = sauce_jax.unlearn(encoder, sae, ids, layer=layer, mode=mode, where=where)(inputs).last_hidden_state
    with torch_hook(sae, ids, mode=mode, where=where).register(model, layer):
        with torch.no_grad():
            ref = model(**mllama_torch_inputs(inputs)).last_hidden_state[:, 0]
    assert relative_error(ours, ref) <= TOL
    assert relative_error(ref.numpy(), base) > 1e-3  # the edit reached the tower's output
