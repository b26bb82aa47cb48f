"""Our DINOv2 port against transformers' PyTorch models (`Dinov2Model`, `Dinov2WithRegistersModel`):
every hidden state, last_hidden_state and pooler_output, loaded from disk through
`sauce_jax.load_encoder`, at the checkpoint's own size and with resampled positions."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

import sauce_jax
import transformers
from tiny_models import perturb, random_pixels, reference_outputs, relative_error
from parity import BF16_TOL, F32_TOL, assert_bfloat16, edit_config, edit_tensors, save_and_load
from parity import check_outputs as check_vision_outputs
from sauce_jax.ports.dinov2 import bicubic_matrix
from sauce_jax.errors import CheckpointError, ConfigError
from sauce_jax.image_processor import PreprocessConfig

# Tiny configs: plain MLP, SwiGLU (without q/k/v biases), registers; widths, depths, patches vary.
DINOV2_CONFIGS = {
    "mlp-w32-h4-p8-i32-l2": dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, mlp_ratio=2,
                                 image_size=32, patch_size=8),
    "swiglu-w48-h3-p4-i24-l3-noqkvbias": dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3,
                                              mlp_ratio=4, image_size=24, patch_size=4, use_swiglu_ffn=True,
                                              qkv_bias=False),
    "registers-w40-h5-p7-i28-l2": dict(hidden_size=40, num_attention_heads=5, num_hidden_layers=2, mlp_ratio=3,
                                       image_size=28, patch_size=7, num_register_tokens=3),
}
# Another input size per config: one grid larger, one smaller than the checkpoint's.
OTHER_SIZES = {"mlp-w32-h4-p8-i32-l2": (48, 24), "swiglu-w48-h3-p4-i24-l3-noqkvbias": (36, 20),
               "registers-w40-h5-p7-i28-l2": (42, 21)}


def make_dinov2(fields: dict, seed: int = 0, head: bool = False):
    torch.manual_seed(seed)
    if "num_register_tokens" in fields:
        cfg = transformers.Dinov2WithRegistersConfig(**fields)
        cls = transformers.Dinov2WithRegistersForImageClassification if head else transformers.Dinov2WithRegistersModel
    else:
        cfg = transformers.Dinov2Config(**fields)
        cls = transformers.Dinov2ForImageClassification if head else transformers.Dinov2Model
    if head:
        cfg.num_labels = 5
    return perturb(cls(cfg), seed)


def check_outputs(encoder, reference, pixels, tol):
    """Every hidden state, last_hidden_state and pooler_output within `tol`, no image_embeds;
    returns our output."""
    ours, _ = check_vision_outputs(encoder, reference, pixels, tol, no_embeds=True)
    return ours


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(DINOV2_CONFIGS))
def test_dinov2_from_disk_float32(tmp_path, name, seed):
    fields = DINOV2_CONFIGS[name]
    model = make_dinov2(fields, seed)
    encoder = save_and_load(model, tmp_path)
    c = encoder.config
    registers = fields.get("num_register_tokens", 0)
    assert c.model_type == "dinov2" and c.checkpoint_type == ("dinov2_with_registers" if registers else "dinov2")
    assert (c.num_layers, c.hidden_size, c.image_size) == (fields["num_hidden_layers"], fields["hidden_size"],
                                                           fields["image_size"])
    assert c.num_tokens == 1 + registers + (fields["image_size"] // fields["patch_size"]) ** 2
    check_outputs(encoder, model, random_pixels(fields, seed=seed), F32_TOL)


@pytest.mark.parametrize("name", list(DINOV2_CONFIGS))
def test_interpolated_positions_at_other_sizes(tmp_path, name):
    """A saved processor that crops to another size: positions resampled as transformers does
    (bicubic; antialiased for the registers model), up and down."""
    fields = DINOV2_CONFIGS[name]
    model = make_dinov2(fields, seed=2)
    model.save_pretrained(tmp_path)
    for size in OTHER_SIZES[name]:
        transformers.BitImageProcessor(crop_size={"height": size, "width": size}).save_pretrained(tmp_path)
        encoder = sauce_jax.load_encoder(tmp_path)
        assert encoder.config.image_size == size
        pixels = random_pixels(dict(fields, image_size=size), seed=size)
        assert encoder(pixels).hidden_states[0].shape[1] == encoder.config.num_tokens
        check_outputs(encoder, model, pixels, F32_TOL)


@pytest.mark.parametrize("antialias", [False, True])
def test_bicubic_matrix_matches_torch_interpolate(antialias):
    rng = np.random.default_rng(0)
    for n_in, n_out in [(4, 6), (6, 4), (37, 16), (16, 37), (5, 5), (7, 3), (3, 1)]:
        x = rng.standard_normal((n_in, n_in)).astype(np.float32)
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=(n_out, n_out), mode="bicubic",
                                              align_corners=False, antialias=antialias)[0, 0].numpy()
        m = bicubic_matrix(n_in, n_out, antialias=antialias)
        np.testing.assert_allclose(m @ x @ m.T, ref, rtol=0, atol=1e-5, err_msg=f"{n_in}->{n_out}")


@pytest.mark.parametrize("name", ["mlp-w32-h4-p8-i32-l2", "registers-w40-h5-p7-i28-l2"])
def test_image_classification_checkpoint(tmp_path, name):
    """`Dinov2ForImageClassification` stores the model under `dinov2.` beside a classifier we ignore."""
    fields = DINOV2_CONFIGS[name]
    model = make_dinov2(fields, seed=3, head=True)
    model.save_pretrained(tmp_path)
    assert any(k.startswith("classifier.") for k in load_file(tmp_path / "model.safetensors"))
    base = model.dinov2 if "num_register_tokens" not in fields else model.dinov2_with_registers
    check_outputs(sauce_jax.load_encoder(tmp_path), base, random_pixels(fields), F32_TOL)


@pytest.mark.parametrize("name", list(DINOV2_CONFIGS))
def test_in_memory_model_current_names(name):
    """A live transformers 5 model names its tensors q_proj/o_proj/gate_proj/up_proj/down_proj."""
    fields = DINOV2_CONFIGS[name]
    model = make_dinov2(fields, seed=4)
    check_outputs(sauce_jax.load_encoder(model), model, random_pixels(fields), F32_TOL)


def test_dinov2_bfloat16(tmp_path):
    fields = DINOV2_CONFIGS["swiglu-w48-h3-p4-i24-l3-noqkvbias"]
    model = make_dinov2(fields, 5)
    encoder = save_and_load(model, tmp_path, dtype="bfloat16")
    ours = check_outputs(encoder, model, random_pixels(fields, seed=5), BF16_TOL)
    assert_bfloat16(ours.hidden_states + (ours.last_hidden_state,))


def test_identity_hook_and_early_stop(tmp_path):
    fields = DINOV2_CONFIGS["registers-w40-h5-p7-i28-l2"]
    model = make_dinov2(fields, 6)
    model.save_pretrained(tmp_path)
    encoder = sauce_jax.load_encoder(tmp_path)
    pixels = random_pixels(fields)
    plain = encoder(pixels)
    hooked = encoder(pixels, hooks={i: (lambda h, a: h) for i in range(encoder.config.num_layers + 1)})
    for a, b in zip(plain.hidden_states + (plain.last_hidden_state,), hooked.hidden_states + (hooked.last_hidden_state,)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    hs = encoder.hidden_states(pixels, hooks={1: (lambda h, a: h * a, 2.0)})
    ref = reference_outputs(model, pixels).hidden_states
    with torch.no_grad():
        expected = model.encoder.layer[1](2 * ref[1])
    assert relative_error(hs[1], 2 * ref[1]) <= F32_TOL and relative_error(hs[2], expected) <= F32_TOL
    assert relative_error(encoder.hidden_state(pixels, -2), ref[-2]) <= F32_TOL


# -- checkpoint and config errors --------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2")
    make_dinov2(DINOV2_CONFIGS["swiglu-w48-h3-p4-i24-l3-noqkvbias"], 7).save_pretrained(path)
    return path


@pytest.fixture
def ckpt(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.mark.parametrize("name", ["encoder.layer.2.layer_scale2.lambda1", "embeddings.position_embeddings",
                                  "encoder.layer.0.mlp.weights_in.weight", "layernorm.bias"])
def test_missing_tensor_is_named(ckpt, name):
    edit_tensors(ckpt, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"missing tensor '{name}'"):
        sauce_jax.load_encoder(ckpt)


def test_config_disagreeing_with_tensors(ckpt):
    edit_config(ckpt, use_swiglu_ffn=False)
    with pytest.raises(CheckpointError, match=r"'encoder\.layer\.0\.mlp\.weights_in\.bias'"):
        sauce_jax.load_encoder(ckpt)


def test_qkv_bias_in_tensors_but_not_config(ckpt):
    def add_bias(t):
        t["encoder.layer.0.attention.attention.query.bias"] = np.zeros(48, np.float32)

    edit_tensors(ckpt, add_bias)
    with pytest.raises(CheckpointError, match=r"attention\.attention\.query\.bias"):
        sauce_jax.load_encoder(ckpt)


@pytest.mark.parametrize("changes, match", [
    (dict(hidden_act="mish"), "hidden_act='mish'"),
    (dict(num_attention_heads=5), "not divisible"),
    (dict(mlp_ratio=-1), "mlp_ratio"),
    (dict(image_size=[24, 32]), "image_size"),
])
def test_unimplemented_config(ckpt, changes, match):
    edit_config(ckpt, **changes)
    with pytest.raises(ConfigError, match=match):
        sauce_jax.load_encoder(ckpt)


# -- preprocessing -----------------------------------------------------------------------
skdata = pytest.importorskip("skimage.data")
BitImageProcessorPil = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
# What facebook/dinov2-* save in preprocessor_config.json.
DINOV2_PROCESSOR = dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=3)


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "camera", "chelsea"])
def test_matches_bit_image_processor(photo):
    processor = BitImageProcessorPil(**DINOV2_PROCESSOR)
    cfg = PreprocessConfig.from_hf(processor.to_dict())
    assert cfg == PreprocessConfig.dinov2_defaults(224)
    image = Image.fromarray(getattr(skdata, photo)())
    expected = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    got = sauce_jax.preprocess(image, cfg)[0]
    assert got.shape == expected.shape == (224, 224, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_checkpoint_without_processor_uses_dinov2_defaults(ckpt):
    encoder = sauce_jax.load_encoder(ckpt)
    assert encoder.preprocess_config == PreprocessConfig.dinov2_defaults(24)
    assert sauce_jax.preprocess([skdata.coffee()], encoder).shape == (1, 24, 24, 3)
