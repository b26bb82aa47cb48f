"""The PyTorch bridge: DLPack conversion, `torch_hook` against our `unlearn`, and the LLaVA bridge.

The reference for `torch_hook` is our JAX encoder with the same intervention: every hidden
state transformers returns with the hook registered must match ours, so a model served in
PyTorch is unlearned exactly as the one we evaluate in JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import sauce_jax
from tiny_saes import K, busiest_features, make_sae
from tiny_models import CLIP_CONFIGS, SMALL, make_clip, make_clip_model, make_llava, perturb, random_pixels, relative_error
from sauce_jax.eval.vlm.llava_bridge import generate_with_features, llava_image_features, logits_with_features
from sauce_jax import ConfigError, InputError
from sauce_jax.scoring import FeatureSet
from sauce_jax.torch_bridge import clip_vision_tower, from_torch, to_torch, torch_hook

TOL = 1e-5  # hidden states, relative
LLAVA_TOL = 1e-4  # logits, relative
PARITY = CLIP_CONFIGS["w48-h3-p4-i24-l3-gelu"]  # 3 blocks: indices 0, 1, -2 (= 2), -1 (= 3) differ


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def torch_forward(model, pixels):
    """All hidden states of a transformers CLIP vision model on NHWC pixels."""
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)


def max_error(ours, ref) -> float:
    assert len(ours.hidden_states) == len(ref.hidden_states)
    return max(relative_error(a, b) for a, b in zip(ours.hidden_states, ref.hidden_states))


@pytest.fixture(scope="module")
def clip3():
    model = make_clip(PARITY, seed=2)
    pixels = random_pixels(PARITY, seed=2)
    return model, sauce_jax.load_encoder(model), pixels, torch_forward(model, pixels)


# -- to_torch / from_torch -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_round_trip_shares_memory(dtype):
    x = jax.random.normal(jax.random.key(0), (3, 5, 7)).astype(dtype)
    t = to_torch(x)
    assert t.dtype == {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[dtype]
    assert tuple(t.shape) == x.shape
    assert t.data_ptr() == x.unsafe_buffer_pointer()  # zero-copy on CPU
    back = from_torch(t)
    assert back.dtype == x.dtype and back.shape == x.shape
    np.testing.assert_array_equal(np.asarray(back), np.asarray(x))
    np.testing.assert_array_equal(t.float().numpy(), np.asarray(x.astype(jnp.float32)))


def test_from_torch_grad_and_strided_tensors():
    t = torch.randn(4, 6, requires_grad=True)
    np.testing.assert_array_equal(np.asarray(from_torch(t)), t.detach().numpy())
    strided = torch.randn(6, 4).T  # not row-major
    np.testing.assert_array_equal(np.asarray(from_torch(strided)), strided.numpy())
    tree = from_torch({"a": strided, "b": (t,)})
    assert isinstance(tree["b"][0], jax.Array)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hidden_states_convert(clip3, dtype):
    _, encoder, pixels, _ = clip3
    out = jax.tree_util.tree_map(lambda h: h.astype(dtype), encoder(pixels))
    converted = to_torch(out)  # an EncoderOutput of tensors; image_embeds stays None
    assert converted.image_embeds is None
    assert len(converted.hidden_states) == len(out.hidden_states)
    for h, t in zip(out.hidden_states, converted.hidden_states):
        assert isinstance(t, torch.Tensor) and t.dtype == getattr(torch, dtype)
        np.testing.assert_array_equal(t.float().numpy(), np.asarray(h).astype(np.float32))
    assert isinstance(sauce_jax.to_torch(out.hidden_states), tuple)


def test_numpy_leaves():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    converted = to_torch({"x": x, "low": x.astype(jnp.bfloat16), "none": None})
    assert converted["x"].data_ptr() == x.ctypes.data and converted["none"] is None
    assert converted["low"].dtype == torch.bfloat16
    np.testing.assert_array_equal(converted["low"].float().numpy(), x.astype(jnp.bfloat16).astype(np.float32))


def test_to_torch_rejects_non_arrays():
    with pytest.raises(InputError, match="str"):
        to_torch(["not an array"])


# -- torch_hook == unlearn -----------------------------------------------------------------
# Each (architecture, mode) at two layers, so that every architecture meets all four indices
# and so does every mode: half the JAX compilations of the full grid (about 1 s each).
COVER = [("standard", "reconstruct", 0), ("standard", "reconstruct", -2), ("standard", "delta", 1),
         ("standard", "delta", -1), ("topk", "reconstruct", 1), ("topk", "reconstruct", -1),
         ("topk", "delta", 0), ("topk", "delta", -2), ("batchtopk", "reconstruct", 0),
         ("batchtopk", "reconstruct", -1), ("batchtopk", "delta", 1), ("batchtopk", "delta", -2)]


@pytest.mark.parametrize("architecture,mode,layer", COVER)
def test_hook_matches_unlearn(clip3, architecture, layer, mode):
    model, encoder, pixels, base = clip3
    sae = make_sae(architecture, PARITY["hidden_size"])
    ids = busiest_features(sae, base.hidden_states[layer])
    for where in ("all", "patch", "cls"):  # traced in JAX: no recompilation per mask
        ours = sauce_jax.unlearn(encoder, sae, ids, layer=layer, mode=mode, where=where)(pixels)
        with torch_hook(sae, ids, mode=mode, where=where).register(model, layer):
            ref = torch_forward(model, pixels)
        assert max_error(ours, ref) <= TOL, (where, [relative_error(a, b) for a, b in
                                                     zip(ours.hidden_states, ref.hidden_states)])
        # Not vacuous: the hooked state itself moved, and only at the masked tokens.
        hooked, before = ref.hidden_states[layer].numpy(), base.hidden_states[layer].numpy()
        assert relative_error(hooked, before) > 1e-2
        untouched = ~sauce_jax.intervention.token_mask(hooked.shape[1], where)
        np.testing.assert_array_equal(hooked[:, untouched], before[:, untouched])
        # Upstream states are untouched; the last one agrees with last_hidden_state.
        for i in range(encoder.layer_index(layer)):
            assert torch.equal(ref.hidden_states[i], base.hidden_states[i])
        assert torch.equal(ref.hidden_states[-1], ref.last_hidden_state)


@pytest.mark.parametrize("architecture,mode", [("standard", "reconstruct"), ("topk", "delta"),
                                               ("batchtopk", "reconstruct")])
def test_per_image_ids_and_gamma(clip3, architecture, mode):
    model, encoder, pixels, base = clip3
    sae = make_sae(architecture, PARITY["hidden_size"], seed=3)
    busy = busiest_features(sae, base.hidden_states[1])
    ids = np.array([busy[:3], [busy[3], -1, -1]], np.int32)  # [B, k], -1 pads
    gamma = np.array([-0.5, 0.25], np.float32)  # one per image
    ours = sauce_jax.unlearn(encoder, sae, ids, layer=1, gamma=gamma, mode=mode)(pixels)
    with torch_hook(sae, ids, gamma=gamma, mode=mode).register(model, 1):
        ref = torch_forward(model, pixels)
    assert max_error(ours, ref) <= TOL
    # Each image gets its own set: image 1 with image 0's set would differ.
    swapped = sauce_jax.unlearn(encoder, sae, ids[::-1].copy(), layer=1, gamma=gamma, mode=mode)(pixels)
    assert relative_error(swapped.hidden_states[-1][1], ref.hidden_states[-1][1]) > 1e-3


def gate_threshold(sae, hidden, ids) -> float:
    """A threshold between two distinct values of max_F z near their median: about half the
    tokens have the concept, and none sits on the boundary where float32 noise could flip it."""
    z = np.asarray(sauce_jax.sae.encode(sae.params, jnp.asarray(np.asarray(hidden)), sae.config))
    values = np.unique(z[..., ids[ids >= 0]].max(axis=-1))
    i = len(values) // 2
    return float(values[i - 1] + values[i]) / 2


# Gated and replace: each architecture, each at a layer of its own.
GATED_COVER = [("standard", "gated", 1), ("topk", "gated", -1), ("batchtopk", "replace", 0),
               ("standard", "replace", -2)]


@pytest.mark.parametrize("architecture,mode,layer", GATED_COVER)
def test_gated_modes_match_unlearn(clip3, architecture, mode, layer):
    model, encoder, pixels, base = clip3
    sae = make_sae(architecture, PARITY["hidden_size"], seed=6)
    ids = busiest_features(sae, base.hidden_states[layer])
    threshold = gate_threshold(sae, base.hidden_states[layer], ids)
    extra = dict(threshold=threshold, gamma=-1.0)
    if mode == "replace":
        extra["targets"] = np.linspace(0.1, 0.6, len(ids))
    ours = sauce_jax.unlearn(encoder, sae, ids, layer=layer, mode=mode, **extra)(pixels)
    with torch_hook(sae, ids, mode=mode, **extra).register(model, layer):
        ref = torch_forward(model, pixels)
    assert max_error(ours, ref) <= TOL
    # Not vacuous: some tokens were edited, the others are exactly the input.
    hooked, before = ref.hidden_states[layer].numpy(), base.hidden_states[layer].numpy()
    edited = np.abs(hooked - before).max(axis=-1) > 0  # [B, T]
    assert edited.any() and not edited.all()


@pytest.mark.parametrize("mode", ["gated", "replace"])
def test_gated_modes_per_image(clip3, mode):
    model, encoder, pixels, base = clip3
    sae = make_sae("standard", PARITY["hidden_size"], seed=7)
    busy = busiest_features(sae, base.hidden_states[2])
    ids = np.array([busy[:3], [busy[3], -1, -1]], np.int32)  # [B, k], -1 pads
    extra = dict(gamma=np.array([-0.5, 0.25], np.float32),
                 threshold=np.array([gate_threshold(sae, base.hidden_states[2][:1], ids[0]),
                                     gate_threshold(sae, base.hidden_states[2][1:], ids[1])]))
    if mode == "replace":
        extra["targets"] = np.array([[0.2, 0.4, 0.1], [0.3, 5.0, 5.0]])  # 5.0 at padding: ignored
    ours = sauce_jax.unlearn(encoder, sae, ids, layer=2, mode=mode, **extra)(pixels)
    with torch_hook(sae, ids, mode=mode, **extra).register(model, 2):
        ref = torch_forward(model, pixels)
    assert max_error(ours, ref) <= TOL
    assert relative_error(ref.hidden_states[2].numpy(), base.hidden_states[2]) > 1e-3


def test_feature_sets_give_layer_and_gamma(clip3):
    model, encoder, pixels, base = clip3
    sae = make_sae("standard", PARITY["hidden_size"], seed=4)
    busy = busiest_features(sae, base.hidden_states[2])
    sets = [FeatureSet(concept=name, feature_ids=tuple(int(i) for i in chunk), scores=(1.0,) * len(chunk),
                       layer=2, sae_fingerprint=sae.fingerprint(), gamma=-1.0)
            for name, chunk in (("a", busy[:3]), ("b", busy[2:]))]
    ours = sauce_jax.unlearn(encoder, sae, sets)(pixels)
    with torch_hook(sae, sets).register(model):  # layer 2 and gamma -1 come from the sets
        ref = torch_forward(model, pixels)
    assert max_error(ours, ref) <= TOL
    assert not torch.equal(ref.hidden_states[2], base.hidden_states[2])
    assert torch.equal(ref.hidden_states[1], base.hidden_states[1])
    other = make_sae("standard", PARITY["hidden_size"], seed=5)
    with pytest.raises(ConfigError, match="belongs to SAE"):
        torch_hook(other, sets[0])


def test_remove_restores_outputs_exactly(clip3):
    model, _, pixels, base = clip3
    sae = make_sae("topk", PARITY["hidden_size"])
    hook = torch_hook(sae, busiest_features(sae, base.hidden_states[0]))
    handles = [hook.register(model, 0), hook.register(model, -1)]
    hooked = torch_forward(model, pixels)
    assert not torch.equal(hooked.pooler_output, base.pooler_output)
    for handle in handles:
        handle.remove()
    after = torch_forward(model, pixels)
    for a, b in zip(after.hidden_states, base.hidden_states):
        assert torch.equal(a, b)
    assert torch.equal(after.pooler_output, base.pooler_output)


def test_projection_model_and_clip_model():
    """The hook finds the tower in CLIPVisionModelWithProjection and CLIPModel; at the last
    index it reaches the pooled output and the projection."""
    fields = dict(SMALL, projection_dim=12)
    model = make_clip(fields, seed=1, cls=transformers.CLIPVisionModelWithProjection)
    encoder = sauce_jax.load_encoder(model)
    pixels = random_pixels(fields, seed=1)
    sae = make_sae("standard", fields["hidden_size"])
    ids = busiest_features(sae, torch_forward(model, pixels).hidden_states[-1])
    ours = sauce_jax.unlearn(encoder, sae, ids, layer=-1)(pixels)
    with torch_hook(sae, ids).register(model, -1):
        ref = torch_forward(model, pixels)
    assert max_error(ours, ref) <= TOL
    assert relative_error(ours.image_embeds, ref.image_embeds) <= TOL

    # CLIPModel: the hook lands on its vision half, exactly as registering there directly.
    clip = make_clip_model(SMALL, seed=1)
    assert clip_vision_tower(clip) is clip.vision_model
    base = torch_forward(clip.vision_model, pixels)
    hook = torch_hook(sae, ids, mode="delta")
    outputs = []
    for target in (clip, clip.vision_model):
        with hook.register(target, 0):
            outputs.append(torch_forward(clip.vision_model, pixels))
    assert all(torch.equal(a, b) for a, b in zip(*(o.hidden_states for o in outputs)))
    assert not torch.equal(outputs[0].hidden_states[0], base.hidden_states[0])


def test_hook_keeps_bfloat16():
    sae = make_sae("batchtopk", 32)
    hidden = torch.randn(2, 17, 32)
    ids = np.arange(K, dtype=np.int32)
    for mode in ("reconstruct", "delta", "gated", "replace"):
        hook = torch_hook(sae, ids, mode=mode, targets="zero" if mode == "replace" else None)
        low = hook(hidden.bfloat16())
        assert low.dtype == torch.bfloat16
        assert relative_error(low.float().numpy(), hook(hidden)) < 2e-2


# -- LLaVA -------------------------------------------------------------------------------
def llava_prompt(num_image_tokens: int, image_token: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts, one image each; the second is left-padded by one token."""
    first = [1, 5] + [image_token] * num_image_tokens + [7, 9, 11]
    second = [0, 1, 6] + [image_token] * num_image_tokens + [8, 10]
    mask = torch.ones(2, len(first), dtype=torch.long)
    mask[1, 0] = 0
    return torch.tensor([first, second]), mask


def native_logits(model, input_ids, attention_mask, pixels):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask,
                     pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).logits


@pytest.fixture(scope="module")
def llava():
    model = make_llava(SMALL, seed=3)
    return model, sauce_jax.load_encoder(model), random_pixels(SMALL, seed=3)


@pytest.mark.parametrize("layer,mode,where", [(0, "reconstruct", "all"), (-2, "delta", "patch")])
def test_llava_bridge_matches_native(llava, layer, mode, where):
    model, encoder, pixels = llava
    patches = (SMALL["image_size"] // SMALL["patch_size"]) ** 2
    input_ids, attention_mask = llava_prompt(patches)  # "default" strategy: no CLS feature
    features = llava_image_features(model, encoder, pixels)
    assert tuple(features.shape) == (2, patches, model.config.text_config.hidden_size)
    plain = native_logits(model, input_ids, attention_mask, pixels)
    assert relative_error(logits_with_features(model, input_ids, attention_mask, features).numpy(),
                          plain) <= LLAVA_TOL

    sae = make_sae("standard", SMALL["hidden_size"])
    with torch.no_grad():
        tower_states = model.model.vision_tower(torch.from_numpy(pixels).permute(0, 3, 1, 2),
                                                output_hidden_states=True).hidden_states
    ids = busiest_features(sae, tower_states[layer])
    unlearned = sauce_jax.unlearn(encoder, sae, ids, layer=layer, mode=mode, where=where)
    ours = logits_with_features(model, input_ids, attention_mask,
                                llava_image_features(model, encoder, pixels, unlearned=unlearned))
    with torch_hook(sae, ids, mode=mode, where=where).register(model, layer):
        ref = native_logits(model, input_ids, attention_mask, pixels)
        generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3,
                                   do_sample=False, pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert relative_error(ours.numpy(), ref) <= LLAVA_TOL
    assert relative_error(ref.numpy(), plain) > 1e-3  # the intervention reached the logits
    ours_generated = generate_with_features(
        model, {"input_ids": input_ids, "attention_mask": attention_mask},
        llava_image_features(model, encoder, pixels, unlearned=unlearned), max_new_tokens=3, do_sample=False)
    assert torch.equal(ours_generated, generated)


def test_llava_full_strategy_and_layer_list():
    torch.manual_seed(0)
    text = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=128)
    config = transformers.LlavaConfig(vision_config=dict(SMALL), text_config=text, image_token_index=127,
                                      vision_feature_layer=[0, -1], vision_feature_select_strategy="full")
    model = perturb(transformers.LlavaForConditionalGeneration(config), 0)
    encoder = sauce_jax.load_encoder(model)
    pixels = random_pixels(SMALL, seed=4)
    tokens = (SMALL["image_size"] // SMALL["patch_size"]) ** 2 + 1  # "full" keeps the CLS token
    input_ids, attention_mask = llava_prompt(tokens)
    features = llava_image_features(model, encoder, pixels)
    assert tuple(features.shape) == (2, tokens, 32)
    assert relative_error(logits_with_features(model, input_ids, attention_mask, features).numpy(),
                          native_logits(model, input_ids, attention_mask, pixels)) <= LLAVA_TOL
    sae = make_sae("topk", SMALL["hidden_size"])
    ids = np.arange(K, dtype=np.int32)
    unlearned = sauce_jax.unlearn(encoder, sae, ids, layer=1)
    ours = logits_with_features(model, input_ids, attention_mask,
                                llava_image_features(model, encoder, pixels, unlearned=unlearned))
    with torch_hook(sae, ids).register(model, 1):
        ref = native_logits(model, input_ids, attention_mask, pixels)
    assert relative_error(ours.numpy(), ref) <= LLAVA_TOL


def test_llava_token_count_mismatch(llava):
    model, encoder, pixels = llava
    input_ids, attention_mask = llava_prompt(5)
    with pytest.raises(InputError, match="image tokens"):
        logits_with_features(model, input_ids, attention_mask, llava_image_features(model, encoder, pixels))


# -- bad inputs ------------------------------------------------------------------------------
def test_bad_arguments(clip3):
    model, _, pixels, _ = clip3
    sae = make_sae("standard", PARITY["hidden_size"])
    ids = np.arange(K, dtype=np.int32)
    with pytest.raises(ConfigError, match="'bogus'"):
        torch_hook(sae, ids, mode="bogus")
    with pytest.raises(ConfigError, match="'tokens'"):
        torch_hook(sae, ids, where="tokens")
    with pytest.raises(ConfigError, match="gamma"):
        torch_hook(sae, ids, gamma=float("nan"))
    with pytest.raises(ConfigError, match="needs targets"):
        torch_hook(sae, ids, mode="replace")
    with pytest.raises(ConfigError, match="threshold gates only"):
        torch_hook(sae, ids, mode="delta", threshold=0.5)
    with pytest.raises(InputError, match="outside"):
        torch_hook(sae, [0, sae.config.d_sae])
    with pytest.raises(InputError, match="int array"):
        torch_hook(sae, [0.5, 1.5])
    hook = torch_hook(sae, ids)
    for layer in (4, -5, True):
        with pytest.raises(ConfigError, match="out of range"):
            hook.register(model, layer)
    with pytest.raises(InputError, match="d_in=32"):
        torch_hook(make_sae("standard", 32), ids).register(model, 0)
    with pytest.raises(ConfigError, match="Linear"):
        hook.register(torch.nn.Linear(4, 4))
    vit = transformers.ViTModel(transformers.ViTConfig(
        hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=24,
        patch_size=4))
    with pytest.raises(ConfigError, match="ViTModel"):
        hook.register(vit)
    # Per-image ids for 3 images on a batch of 2: refused when the batch arrives.
    three = torch_hook(sae, np.arange(6, dtype=np.int32).reshape(3, 2))
    with three.register(model, 1), pytest.raises(InputError, match="3 images"):
        torch_forward(model, pixels)
