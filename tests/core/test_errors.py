"""Every bad input named in the foundation issue raises the right SauceError subclass, naming the culprit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import sauce_jax
from tiny_models import SMALL, random_pixels
from sauce_jax import CheckpointError, ConfigError, InputError, SauceError


@pytest.fixture
def ckpt(small_clip_dir, tmp_path):
    """A private copy of the small checkpoint to break."""
    target = tmp_path / "ckpt"
    shutil.copytree(small_clip_dir[0], target)
    return target


def test_hierarchy():
    for cls in (ConfigError, CheckpointError, InputError):
        assert issubclass(cls, SauceError)


# -- pixel inputs -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pixels, match",
    [
        (np.zeros((2, 32, 32, 4), np.float32), "4 channels"),
        (np.zeros((2, 48, 48, 3), np.float32), "48x48"),
        (np.zeros((32, 32, 3), np.float32), "rank 4"),
        (np.zeros((2, 3, 32, 32), np.float32), "NCHW"),
        (np.zeros((2, 32, 32, 3), np.uint8), "floating point"),
        (np.zeros((0, 32, 32, 3), np.float32), "empty batch"),
        (np.full((1, 32, 32, 3), np.nan, np.float32), "NaN"),
        ([[1.0]], "array"),
    ],
)
def test_bad_pixels(small_encoder, pixels, match):
    with pytest.raises(InputError, match=match):
        small_encoder.hidden_states(pixels)


def test_out_of_range_layer_and_bad_hooks(small_encoder):
    pixels = random_pixels(SMALL)
    with pytest.raises(ConfigError, match="out of range"):
        small_encoder.hidden_state(pixels, SMALL["num_hidden_layers"] + 1)
    with pytest.raises(ConfigError, match="out of range"):
        small_encoder.hidden_states(pixels, upto=-(SMALL["num_hidden_layers"] + 2))
    with pytest.raises(ConfigError, match="hook at index 1"):
        small_encoder.hidden_states(pixels, hooks={1: "not a function"})
    with pytest.raises(ConfigError, match="two hooks"):
        small_encoder.hidden_states(pixels, hooks={-1: lambda h, a: h, SMALL["num_hidden_layers"]: lambda h, a: h})


def test_bad_dtype(ckpt):
    with pytest.raises(ConfigError, match="float16"):
        sauce_jax.load_encoder(ckpt, dtype="float16")


# -- files and directories ----------------------------------------------------------------
def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        sauce_jax.load_encoder(tmp_path / "nope")


def test_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="empty"):
        sauce_jax.load_encoder(tmp_path)


def test_file_instead_of_directory(ckpt):
    with pytest.raises(CheckpointError, match="is a file"):
        sauce_jax.load_encoder(ckpt / "config.json")


def test_hub_id_not_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="openai/clip-vit-large-patch14.*not on disk"):
        sauce_jax.load_encoder("openai/clip-vit-large-patch14")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        sauce_jax.load_encoder(ckpt)


def test_config_not_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*not valid JSON"):
        sauce_jax.load_encoder(ckpt)


def test_no_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        sauce_jax.load_encoder(ckpt)


def test_truncated_safetensors(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        sauce_jax.load_encoder(ckpt)


@pytest.mark.parametrize("garbage", [b"", b"\x01\x02", b"\xff" * 64, b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json}!!!"])
def test_corrupt_safetensors(ckpt, garbage):
    (ckpt / "model.safetensors").write_bytes(garbage)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        sauce_jax.load_encoder(ckpt)


def test_corrupt_pytorch_bin(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"definitely not a zip or a pickle")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        sauce_jax.load_encoder(ckpt)


def test_missing_shard(small_clip_dir, tmp_path):
    _, model = small_clip_dir
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / shard).unlink()
    with pytest.raises(CheckpointError, match=f"shard '{shard}'"):
        sauce_jax.load_encoder(tmp_path)


def _edit_tensors(ckpt, edit):
    tensors = dict(load_file(ckpt / "model.safetensors"))
    edit(tensors)
    save_file(tensors, ckpt / "model.safetensors")


def test_missing_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.pop("encoder.layers.1.mlp.fc2.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'encoder\.layers\.1\.mlp\.fc2\.bias'"):
        sauce_jax.load_encoder(ckpt)


def test_unexpected_tensor(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"encoder.layers.0.extra_gate.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match="encoder.layers.0.extra_gate.weight"):
        sauce_jax.load_encoder(ckpt)


def test_extra_layer_is_unexpected(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"encoder.layers.7.mlp.fc1.bias": np.zeros(64, np.float32)}))
    with pytest.raises(CheckpointError, match="encoder.layers.7.mlp.fc1.bias"):
        sauce_jax.load_encoder(ckpt)


def test_shape_mismatch(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"encoder.layers.0.mlp.fc1.weight": np.zeros((65, 32), np.float32)}))
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.mlp\.fc1\.weight.*\(65, 32\)"):
        sauce_jax.load_encoder(ckpt)


def test_nan_weights(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"post_layernorm.weight": np.full(32, np.nan, np.float32)}))
    with pytest.raises(CheckpointError, match="post_layernorm.weight.*NaN"):
        sauce_jax.load_encoder(ckpt)


# -- configs ------------------------------------------------------------------------------
def _edit_config(ckpt, **changes):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def test_not_a_clip_config(ckpt):
    _edit_config(ckpt, model_type="bert")
    with pytest.raises(ConfigError, match="'bert'"):
        sauce_jax.load_encoder(ckpt)


def test_llava_with_unsupported_tower(ckpt):
    _edit_config(ckpt, model_type="llava", vision_config={"model_type": "dinov2"})
    with pytest.raises(ConfigError, match="dinov2"):
        sauce_jax.load_encoder(ckpt)


def test_llava_with_siglip_tower_but_clip_weights(ckpt):
    """SigLIP towers are supported, so CLIP weights under a SigLIP config are a checkpoint error."""
    _edit_config(ckpt, model_type="llava", vision_config={"model_type": "siglip_vision_model"})
    with pytest.raises(CheckpointError, match="class_embedding"):
        sauce_jax.load_encoder(ckpt)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(hidden_act="mish"), "hidden_act='mish'"),
        (dict(num_attention_heads=5), "not divisible"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(image_size="big"), "image_size"),
        (dict(pruned_heads={"0": [1]}), "pruned_heads"),
    ],
)
def test_unimplemented_or_invalid_config(ckpt, changes, match):
    _edit_config(ckpt, **changes)
    with pytest.raises(ConfigError, match=match):
        sauce_jax.load_encoder(ckpt)


def test_config_disagreeing_with_weights(ckpt):
    _edit_config(ckpt, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"missing tensor 'encoder\.layers\.2\."):
        sauce_jax.load_encoder(ckpt)
