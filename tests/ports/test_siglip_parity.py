"""Our SigLIP port against transformers' PyTorch model: every hidden state, last_hidden_state
and pooler_output, loaded from disk through `sauce_jax.load_encoder`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sauce_jax
import transformers
from tiny_models import perturb, random_pixels, reference_outputs, relative_error
from parity import BF16_TOL, F32_TOL, assert_bfloat16, edit_config, edit_tensors, relayout, save_and_load
from parity import check_outputs as check_vision_outputs
from sauce_jax.errors import CheckpointError, ConfigError
from sauce_jax.image_processor import PreprocessConfig

# Tiny SiglipVisionConfig variants: width, heads, patch and image size, depth, head vary.
SIGLIP_CONFIGS = {
    "w32-h4-p8-i32-l2-head": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, image_size=32, patch_size=8, vision_use_head=True),
    "w48-h3-p4-i24-l3-nohead": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                    num_attention_heads=3, image_size=24, patch_size=4, vision_use_head=False),
    # 30 px with 7 px patches leaves 2 px the strided conv never sees; one input channel.
    "w40-h5-p7-i30-l1-head-c1": dict(hidden_size=40, intermediate_size=72, num_hidden_layers=1,
                                     num_attention_heads=5, image_size=30, patch_size=7, num_channels=1,
                                     vision_use_head=True),
}
SMALL = SIGLIP_CONFIGS["w32-h4-p8-i32-l2-head"]


def make_siglip(fields: dict, seed: int = 0):
    torch.manual_seed(seed)
    return perturb(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**fields)), seed)


def make_siglip_model(vision: dict, seed: int = 0):
    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                vocab_size=64, max_position_embeddings=16)
    cfg = transformers.SiglipConfig(vision_config=dict(vision), text_config=text)
    return perturb(transformers.SiglipModel(cfg), seed)


def make_llava_siglip(vision: dict, seed: int = 0):
    torch.manual_seed(seed)
    text = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=128)
    cfg = transformers.LlavaConfig(vision_config=dict(vision, model_type="siglip_vision_model"),
                                   text_config=text, image_token_index=127)
    return perturb(transformers.LlavaForConditionalGeneration(cfg), seed)


def check_outputs(encoder, reference, pixels, tol, *, use_head):
    """Every hidden state, last_hidden_state and pooler_output (None without a head) within
    `tol`, no image_embeds; returns our output."""
    ours, _ = check_vision_outputs(encoder, reference, pixels, tol, pooler=True if use_head else None, no_embeds=True)
    return ours


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(SIGLIP_CONFIGS))
def test_siglip_vision_model_from_disk_float32(tmp_path, name, seed):
    fields = SIGLIP_CONFIGS[name]
    model = make_siglip(fields, seed)
    encoder = save_and_load(model, tmp_path)
    c = encoder.config
    assert (c.model_type, c.checkpoint_type) == ("siglip_vision_model", "siglip_vision_model")
    assert c.num_layers == fields["num_hidden_layers"] and c.hidden_size == fields["hidden_size"]
    assert c.num_tokens == (fields["image_size"] // fields["patch_size"]) ** 2  # patches only, no class token
    assert c.projection_dim is None
    check_outputs(encoder, model, random_pixels(fields, seed=seed), F32_TOL, use_head=fields["vision_use_head"])


@pytest.mark.parametrize("name", list(SIGLIP_CONFIGS))
def test_siglip_vision_model_bfloat16(tmp_path, name):
    fields = SIGLIP_CONFIGS[name]
    model = make_siglip(fields, 3)
    encoder = save_and_load(model, tmp_path, dtype="bfloat16")
    # Against the float32 reference: bfloat16 rounding is the only difference allowed.
    ours = check_outputs(encoder, model, random_pixels(fields, seed=3), BF16_TOL, use_head=fields["vision_use_head"])
    assert_bfloat16(ours.hidden_states + (ours.last_hidden_state,))


def test_siglip_model_vision_half(tmp_path):
    fields = SIGLIP_CONFIGS["w48-h3-p4-i24-l3-nohead"]
    model = make_siglip_model(dict(fields, vision_use_head=True), seed=1)
    model.save_pretrained(tmp_path)
    encoder = sauce_jax.load_encoder(tmp_path)
    assert (encoder.config.model_type, encoder.config.checkpoint_type) == ("siglip_vision_model", "siglip")
    pixels = random_pixels(fields)
    check_outputs(encoder, model.vision_model, pixels, F32_TOL, use_head=True)
    with torch.no_grad():  # SigLIP's image features are the pooler output itself
        image_embeds = model.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    image_embeds = getattr(image_embeds, "pooler_output", image_embeds)
    assert relative_error(encoder(pixels).pooler_output, image_embeds) <= F32_TOL


def _layout_4x(name):  # transformers 4.x: SiglipVisionModel wraps a `vision_model`
    for old in ("model.vision_tower.", "vision_tower."):
        if name.startswith(old):
            return old + "vision_model." + name.removeprefix(old)
    return name


@pytest.mark.parametrize("layout", ["saved", "4.x"])
def test_llava_with_siglip_tower(tmp_path, layout):
    fields = SIGLIP_CONFIGS["w32-h4-p8-i32-l2-head"]
    model = make_llava_siglip(fields, seed=2)
    model.save_pretrained(tmp_path)
    if layout == "4.x":
        relayout(tmp_path, _layout_4x)
    encoder = sauce_jax.load_encoder(tmp_path)
    assert (encoder.config.model_type, encoder.config.checkpoint_type) == ("siglip_vision_model", "llava")
    assert encoder.config.feature_layer == -2
    check_outputs(encoder, model.model.vision_tower, random_pixels(fields), F32_TOL, use_head=True)


def test_in_memory_siglip_model():
    model = make_siglip(SMALL, 4)
    check_outputs(sauce_jax.load_encoder(model), model, random_pixels(SMALL), F32_TOL, use_head=True)


# -- hooks and early stop ----------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = make_siglip(SMALL, 5)
    path = tmp_path_factory.mktemp("siglip")
    model.save_pretrained(path)
    return path, model, sauce_jax.load_encoder(path)


def test_identity_hook_is_bit_identical(small):
    _, _, encoder = small
    pixels = random_pixels(SMALL)
    plain = encoder(pixels)
    hooked = encoder(pixels, hooks={i: (lambda h, a: h) for i in range(encoder.config.num_layers + 1)})
    for a, b in zip(plain.hidden_states + (plain.last_hidden_state, plain.pooler_output),
                    hooked.hidden_states + (hooked.last_hidden_state, hooked.pooler_output)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_hook_rewrites_what_the_next_block_reads(small):
    _, model, encoder = small
    pixels = random_pixels(SMALL)
    hs = encoder.hidden_states(pixels, hooks={1: (lambda h, a: h * a, 2.0)})
    ref = reference_outputs(model, pixels).hidden_states
    assert relative_error(hs[0], ref[0]) <= F32_TOL
    assert relative_error(hs[1], 2 * ref[1]) <= F32_TOL
    with torch.no_grad():
        expected = model.encoder.layers[1](2 * ref[1], None)
    assert relative_error(hs[2], expected) <= F32_TOL


def test_early_stop_never_runs_later_blocks(small):
    _, model, encoder = small
    pixels = random_pixels(SMALL)
    traced = []

    def spy(h, a):  # called while tracing only if the forward reaches index 2
        traced.append(True)
        return h

    h1 = encoder.hidden_state(pixels, 1, hooks={2: spy})
    assert not traced
    assert relative_error(h1, reference_outputs(model, pixels).hidden_states[1]) <= F32_TOL
    assert len(encoder.hidden_states(pixels, upto=-2)) == encoder.config.num_layers


# -- checkpoint and config errors --------------------------------------------------------
@pytest.fixture
def ckpt(small, tmp_path):
    import shutil

    shutil.copytree(small[0], tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.mark.parametrize("name", ["encoder.layers.1.mlp.fc2.bias", "head.attention.in_proj_bias",
                                  "embeddings.patch_embedding.bias"])
def test_missing_tensor_is_named(ckpt, name):
    edit_tensors(ckpt, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"missing tensor '{name}'"):
        sauce_jax.load_encoder(ckpt)


def test_wrong_shape_is_named(ckpt):
    def cut(t):
        t["head.attention.in_proj_weight"] = t["head.attention.in_proj_weight"][:-1]

    edit_tensors(ckpt, cut)
    with pytest.raises(CheckpointError, match=r"'head\.attention\.in_proj_weight' has shape"):
        sauce_jax.load_encoder(ckpt)


def test_nan_tensor_is_named(ckpt):
    def poison(t):
        t["post_layernorm.weight"] = t["post_layernorm.weight"].copy()
        t["post_layernorm.weight"][0] = np.nan

    edit_tensors(ckpt, poison)
    with pytest.raises(CheckpointError, match=r"'post_layernorm\.weight' contains NaN"):
        sauce_jax.load_encoder(ckpt)


def test_head_tensors_without_vision_use_head(ckpt):
    edit_config(ckpt, vision_use_head=False)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'head\."):
        sauce_jax.load_encoder(ckpt)


@pytest.mark.parametrize("changes, match", [
    (dict(hidden_act="mish"), "hidden_act='mish'"),
    (dict(num_attention_heads=5), "not divisible"),
    (dict(image_size=[32, 48]), "image_size"),
])
def test_unimplemented_config(ckpt, changes, match):
    edit_config(ckpt, **changes)
    with pytest.raises(ConfigError, match=match):
        sauce_jax.load_encoder(ckpt)


# -- preprocessing -----------------------------------------------------------------------
skdata = pytest.importorskip("skimage.data")
SiglipImageProcessorPil = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor

PROCESSORS = {
    "default-224": dict(),
    "bilinear-64x48": dict(size={"height": 64, "width": 48}, resample=2),
}


def _reference_pixels(processor, image):
    return processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


@pytest.mark.parametrize("proc", list(PROCESSORS))
@pytest.mark.parametrize("photo", ["astronaut", "coffee", "camera"])
def test_matches_siglip_image_processor(photo, proc):
    processor = SiglipImageProcessorPil(**PROCESSORS[proc])
    cfg = PreprocessConfig.from_hf(processor.to_dict())
    assert cfg.crop_hw is None
    array = getattr(skdata, photo)()
    image = Image.fromarray(array)
    expected = _reference_pixels(processor, image)
    got = sauce_jax.preprocess(image, cfg)[0]
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_siglip_checkpoint_preprocessing(ckpt):
    image = skdata.chelsea()
    # Without a saved processor: SigLIP's defaults at the model's image size.
    default = SiglipImageProcessorPil(size={"height": SMALL["image_size"], "width": SMALL["image_size"]})
    np.testing.assert_allclose(sauce_jax.preprocess([image], sauce_jax.load_encoder(ckpt))[0],
                               _reference_pixels(default, image), rtol=0, atol=1e-5)
    # With one saved beside the weights: its own settings.
    saved = SiglipImageProcessorPil(size={"height": 32, "width": 32}, resample=2,
                                    image_mean=[0.1, 0.2, 0.3], image_std=[0.9, 0.8, 0.7])
    saved.save_pretrained(ckpt)
    np.testing.assert_allclose(sauce_jax.preprocess([image], sauce_jax.load_encoder(ckpt))[0],
                               _reference_pixels(saved, image), rtol=0, atol=1e-5)
