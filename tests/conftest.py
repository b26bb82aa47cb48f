"""Shared helpers: tiny random transformers models written to disk, the reference forward."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need the torch extra: pip install 'sauce-jax[torch]'")
transformers = pytest.importorskip("transformers")

# Tiny CLIPVisionConfig variants: width, heads, patch and image size, depth and activation vary.
CLIP_CONFIGS = {
    "w32-h4-p8-i32-l2-quick": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, image_size=32, patch_size=8, hidden_act="quick_gelu"),
    "w48-h3-p4-i24-l3-gelu": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                  num_attention_heads=3, image_size=24, patch_size=4, hidden_act="gelu"),
    "w64-h8-p14-i42-l4-quick": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                    num_attention_heads=8, image_size=42, patch_size=14, hidden_act="quick_gelu"),
    # 30 px with 7 px patches leaves 2 px the strided conv never sees; one input channel.
    "w40-h5-p7-i30-l1-gelu-c1": dict(hidden_size=40, intermediate_size=72, num_hidden_layers=1,
                                     num_attention_heads=5, image_size=30, patch_size=7, hidden_act="gelu",
                                     num_channels=1),
}
SMALL = CLIP_CONFIGS["w32-h4-p8-i32-l2-quick"]


def relative_error(ours, ref) -> float:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref.detach().float().numpy() if hasattr(ref, "detach") else ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def random_pixels(cfg: dict, batch: int = 2, seed: int = 0) -> np.ndarray:
    size, channels = cfg["image_size"], cfg.get("num_channels", 3)
    return np.random.default_rng(seed).standard_normal((batch, size, size, channels)).astype(np.float32)


def reference_outputs(model, pixels: np.ndarray):
    """transformers' forward on NHWC pixels (it takes NCHW)."""
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)


def make_clip(fields: dict, seed: int = 0, cls=None):
    torch.manual_seed(seed)
    cls = cls or transformers.CLIPVisionModel
    return cls(transformers.CLIPVisionConfig(**fields)).eval()


def make_llava(vision: dict, seed: int = 0):
    torch.manual_seed(seed)
    text = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=128)
    cfg = transformers.LlavaConfig(vision_config=dict(vision), text_config=text, image_token_index=127)
    return transformers.LlavaForConditionalGeneration(cfg).eval()


def make_clip_model(vision: dict, seed: int = 0):
    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    return transformers.CLIPModel(transformers.CLIPConfig(vision_config=dict(vision), text_config=text,
                                                          projection_dim=24)).eval()


@pytest.fixture(scope="session")
def small_clip_dir(tmp_path_factory):
    """A saved tiny CLIPVisionModel and the model itself."""
    model = make_clip(SMALL)
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def small_encoder(small_clip_dir):
    import sauce_jax

    return sauce_jax.load_encoder(small_clip_dir[0])
