"""`torch_hook` on the Mllama tower against our `unlearn`, as for CLIP in test_torch_bridge:
with the hook registered, transformers' output must equal our JAX encoder's with the same
intervention. The vision model returns no hidden states, so the reference is its
last_hidden_state (the global output and every intermediate local layer); inside
MllamaForConditionalGeneration, test_export compares the logits. (SigLIP and DINOv2 towers
run the same hooks in test_export's vision-only exports.)"""

from __future__ import annotations

import pytest
import torch

import sauce_jax
from tiny_models import MLLAMA_SMALL, make_mllama, mllama_random_inputs, mllama_torch_inputs, relative_error
from tiny_saes import busiest_features, make_sae
from sauce_jax.torch_bridge import torch_hook, vision_tower

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def mllama_tower():
    model = make_mllama(MLLAMA_SMALL, seed=6)
    assert vision_tower(model).family == "mllama"
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
