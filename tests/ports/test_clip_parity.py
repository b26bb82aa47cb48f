"""Our CLIP port against transformers' PyTorch model, every hidden state, loaded from disk."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import sauce_jax
from tiny_models import (CLIP_CONFIGS, SMALL, make_clip, make_clip_model, make_llava, random_pixels,
                      reference_outputs, relative_error)
from parity import BF16_TOL, F32_TOL, assert_bfloat16, check_outputs, relayout, save_and_load
import transformers


def assert_all_hidden_states_close(encoder, reference, pixels, tol):
    """CLIP's parity: every hidden state (the head outputs are checked where a test needs them)."""
    return check_outputs(encoder, reference, pixels, tol, last=False, pooler=False)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(CLIP_CONFIGS))
def test_clip_vision_model_from_disk_float32(tmp_path, name, seed):
    fields = CLIP_CONFIGS[name]
    model = make_clip(fields, seed)
    encoder = save_and_load(model, tmp_path)
    assert encoder.config.num_layers == fields["num_hidden_layers"]
    assert encoder.config.hidden_size == fields["hidden_size"]
    ours, ref = assert_all_hidden_states_close(encoder, model, random_pixels(fields, seed=seed), F32_TOL)
    assert relative_error(ours.last_hidden_state, ref.last_hidden_state) <= F32_TOL
    assert relative_error(ours.pooler_output, ref.pooler_output) <= F32_TOL
    assert ours.image_embeds is None


@pytest.mark.parametrize("name", list(CLIP_CONFIGS))
def test_clip_vision_model_bfloat16(tmp_path, name):
    fields = CLIP_CONFIGS[name]
    model = make_clip(fields, 3)
    encoder = save_and_load(model, tmp_path, dtype="bfloat16")
    # Against the float32 reference: bfloat16 rounding is the only difference allowed.
    ours, _ = assert_all_hidden_states_close(encoder, model, random_pixels(fields, seed=3), BF16_TOL)
    assert_bfloat16(ours.hidden_states)


def test_projection_model(tmp_path):
    fields = dict(SMALL, projection_dim=12)
    model = make_clip(fields, cls=transformers.CLIPVisionModelWithProjection)
    model.save_pretrained(tmp_path)
    encoder = sauce_jax.load_encoder(tmp_path)
    assert encoder.config.projection_dim == 12
    pixels = random_pixels(fields)
    ours = encoder(pixels)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
    assert max(relative_error(a, b) for a, b in zip(ours.hidden_states, ref.hidden_states)) <= F32_TOL
    assert relative_error(ours.image_embeds, ref.image_embeds) <= F32_TOL


def test_clip_model_vision_half(tmp_path):
    model = make_clip_model(CLIP_CONFIGS["w48-h3-p4-i24-l3-gelu"], seed=1)
    model.save_pretrained(tmp_path)
    encoder = sauce_jax.load_encoder(tmp_path)
    pixels = random_pixels(CLIP_CONFIGS["w48-h3-p4-i24-l3-gelu"])
    assert_all_hidden_states_close(encoder, model.vision_model, pixels, F32_TOL)
    with torch.no_grad():
        ref_embeds = model.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).pooler_output
    assert relative_error(encoder(pixels).image_embeds, ref_embeds) <= F32_TOL


def _layout_4_52(name):
    """transformers 4.52+ (and early 5.x): everything but lm_head under `model.`."""
    if name.startswith("vision_tower."):
        return "model.vision_tower.vision_model." + name.removeprefix("vision_tower.")
    if name.startswith("language_model.model."):
        return "model.language_model." + name.removeprefix("language_model.model.")
    if name == "language_model.lm_head.weight":
        return "lm_head.weight"
    return "model." + name


# LLaVA tensor layouts: as this transformers saves it, transformers 4.x (< 4.52), and 4.52+.
LLAVA_LAYOUTS = {
    "saved": lambda name: name,
    "4.x": lambda name: ("vision_tower.vision_model." + name.removeprefix("vision_tower.")
                         if name.startswith("vision_tower.") else name),
    "4.52+": _layout_4_52,
}


@pytest.mark.parametrize("layout", list(LLAVA_LAYOUTS))
def test_llava_vision_tower(tmp_path, layout):
    fields = CLIP_CONFIGS["w64-h8-p14-i42-l4-quick"]
    model = make_llava(fields, seed=2)
    model.save_pretrained(tmp_path)
    relayout(tmp_path, LLAVA_LAYOUTS[layout])
    encoder = sauce_jax.load_encoder(tmp_path)
    assert encoder.config.checkpoint_type == "llava"
    assert encoder.config.feature_layer == -2
    assert_all_hidden_states_close(encoder, model.model.vision_tower, random_pixels(fields), F32_TOL)


def test_llava_feature_layer_matches_transformers(tmp_path):
    """LLaVA's own image features (layer -2, CLS dropped) equal our hidden state -2 without the CLS."""
    fields = CLIP_CONFIGS["w64-h8-p14-i42-l4-quick"]
    model = make_llava(fields, seed=4)
    model.save_pretrained(tmp_path)
    encoder = sauce_jax.load_encoder(tmp_path)
    pixels = random_pixels(fields)
    with torch.no_grad():
        out = model.model.vision_tower(torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
    ours = encoder.hidden_state(pixels, encoder.config.feature_layer)
    assert relative_error(ours[:, 1:], out.hidden_states[-2][:, 1:]) <= F32_TOL


def test_sharded_safetensors(tmp_path):
    fields = CLIP_CONFIGS["w64-h8-p14-i42-l4-quick"]
    model = make_clip(fields, 5)
    model.save_pretrained(tmp_path, max_shard_size="60KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "model.safetensors").exists()
    assert_all_hidden_states_close(sauce_jax.load_encoder(tmp_path), model, random_pixels(fields), F32_TOL)


def test_pytorch_bin_weights_only(tmp_path):
    model = make_clip(SMALL, 6)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert_all_hidden_states_close(sauce_jax.load_encoder(tmp_path), model, random_pixels(SMALL), F32_TOL)


@pytest.mark.parametrize("kind", ["clip_vision", "llava"])
def test_in_memory_model(kind):
    fields = SMALL
    model = make_clip(fields, 7) if kind == "clip_vision" else make_llava(fields, 7)
    reference = model if kind == "clip_vision" else model.model.vision_tower
    assert_all_hidden_states_close(sauce_jax.load_encoder(model), reference, random_pixels(fields), F32_TOL)


def test_safetensors_directory_loads_without_torch(small_clip_dir):
    path, model = small_clip_dir
    pixels = random_pixels(SMALL)
    np.save(path.parent / "pixels.npy", pixels)
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import numpy as np, sauce_jax\n"
        f"enc = sauce_jax.load_encoder({str(path)!r})\n"
        f"hs = enc.hidden_states(np.load({str(path.parent / 'pixels.npy')!r}))\n"
        f"np.save({str(path.parent / 'ours.npy')!r}, np.asarray(hs[-1]))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    ref = reference_outputs(model, pixels)
    assert relative_error(np.load(path.parent / "ours.npy"), ref.hidden_states[-1]) <= F32_TOL


@pytest.mark.parametrize("attention", ["einsum", "xla", "dot_product"])
def test_every_attention_implementation_matches(small_clip_dir, attention):
    path, model = small_clip_dir
    encoder = sauce_jax.load_encoder(path, attention=attention)
    assert_all_hidden_states_close(encoder, model, random_pixels(SMALL), F32_TOL)


def test_unknown_attention_implementation(small_clip_dir):
    with pytest.raises(sauce_jax.ConfigError, match="flash"):
        sauce_jax.load_encoder(small_clip_dir[0], attention="flash")


def test_llava_list_of_feature_layers_is_kept(tmp_path):
    model = make_llava(SMALL)
    model.config.vision_feature_layer = [0, -1]
    model.save_pretrained(tmp_path)
    assert sauce_jax.load_encoder(tmp_path).config.feature_layer == (0, -1)
