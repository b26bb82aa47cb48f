"""Tiny random transformers models and the reference forward, shared by the test packages.

Importable from every test folder (pytest's `pythonpath` holds tests/).
"""

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


def perturb(model, seed):
    """transformers' inits zero many biases and tanh gates (so tile embeddings, LayerScale or a
    conv bias would not count) and set layernorms to 1: randomize every parameter so that each
    one, and its layout, matters."""
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def make_clip(fields: dict, seed: int = 0, cls=None):
    torch.manual_seed(seed)
    cls = cls or transformers.CLIPVisionModel
    return perturb(cls(transformers.CLIPVisionConfig(**fields)), seed)


def make_llava(vision: dict, seed: int = 0):
    torch.manual_seed(seed)
    text = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=128)
    cfg = transformers.LlavaConfig(vision_config=dict(vision), text_config=text, image_token_index=127)
    return perturb(transformers.LlavaForConditionalGeneration(cfg), seed)


def make_clip_model(vision: dict, seed: int = 0):
    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    return perturb(transformers.CLIPModel(transformers.CLIPConfig(vision_config=dict(vision), text_config=text,
                                                                  projection_dim=24)), seed)


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


# Tiny MllamaVisionConfig variants: width, heads, tile and patch size, local/global depth,
# tile count (with its aspect ratios) and intermediate layers vary.
MLLAMA_CONFIGS = {
    "w32-h4-p4-i16-l3g2-t4": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_global_layers=2,
                                  attention_heads=4, image_size=16, patch_size=4, max_num_tiles=4,
                                  intermediate_layers_indices=[0, 2]),
    "w48-h3-p8-i24-l4g1-t2": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_global_layers=1,
                                  attention_heads=3, image_size=24, patch_size=8, max_num_tiles=2,
                                  supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
                                  intermediate_layers_indices=[1, 3]),
    # 30 px with 7 px patches leaves 2 px the strided conv never sees; one tile, one intermediate layer.
    "w40-h5-p7-i30-l2g2-t1": dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_global_layers=2,
                                  attention_heads=5, image_size=30, patch_size=7, max_num_tiles=1,
                                  supported_aspect_ratios=[[1, 1]], intermediate_layers_indices=[1],
                                  hidden_act="gelu_new"),
}
MLLAMA_SMALL = MLLAMA_CONFIGS["w32-h4-p4-i16-l3g2-t4"]


def make_mllama(fields: dict, seed: int = 0):
    torch.manual_seed(seed)
    return perturb(transformers.MllamaVisionModel(transformers.MllamaVisionConfig(**fields)), seed)


def make_mllama_cg(vision: dict, seed: int = 0):
    """A tiny MllamaForConditionalGeneration (two text layers, the second cross-attends)."""
    torch.manual_seed(seed)
    k = len(vision["intermediate_layers_indices"])
    text = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, cross_attention_layers=[1], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg = transformers.MllamaConfig(vision_config=dict(vision, vision_output_dim=vision["hidden_size"] * (1 + k)),
                                    text_config=text, image_token_index=95)
    return perturb(transformers.MllamaForConditionalGeneration(cfg), seed)


SIGLIP_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                    patch_size=8, vision_use_head=True)
DINOV2_SMALL = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, mlp_ratio=2, image_size=32,
                    patch_size=8)


def make_siglip_vision(fields: dict, seed: int = 0):
    torch.manual_seed(seed)
    return perturb(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**fields)), seed)


def make_dinov2_model(fields: dict, seed: int = 0):
    torch.manual_seed(seed)
    return perturb(transformers.Dinov2Model(transformers.Dinov2Config(**fields)), seed)


def mllama_torch_inputs(inputs) -> dict:
    """Our structured Mllama batch (NHWC tiles) as MllamaVisionModel / MllamaForConditionalGeneration
    keyword arguments: one image per prompt, NCHW tiles."""
    return {"pixel_values": torch.from_numpy(np.ascontiguousarray(inputs["pixel_values"])).permute(0, 1, 4, 2, 3)[:, None],
            "aspect_ratio_ids": torch.from_numpy(np.asarray(inputs["aspect_ratio_ids"])).long()[:, None],
            "aspect_ratio_mask": torch.from_numpy(np.asarray(inputs["aspect_ratio_mask"])).long()[:, None]}


def mllama_random_inputs(fields: dict, seed: int = 0):
    """A structured Mllama batch: one image with every tile, one with a single tile (the rest
    padded with zeros and masked, as the processor makes them)."""
    from sauce_jax.mllama_processor import mllama_inputs, supported_aspect_ratios

    n, s = fields["max_num_tiles"], fields["image_size"]
    ratios = fields.get("supported_aspect_ratios") or supported_aspect_ratios(n)
    full = 1 + max(range(len(ratios)), key=lambda i: ratios[i][0] * ratios[i][1])  # the id with most tiles
    ids = np.array([full, 1])
    mask = np.zeros((2, n), np.int64)
    mask[0, : ratios[full - 1][0] * ratios[full - 1][1]] = 1
    mask[1, :1] = 1
    pixels = np.random.default_rng(seed).standard_normal((2, n, s, s, 3)).astype(np.float32)
    pixels *= mask[:, :, None, None, None]
    return mllama_inputs(pixels, ids, mask)


def make_mllama_processor(words):
    """An `MllamaProcessor` for `make_mllama_cg` models: a word-level tokenizer over `words`
    (ids from 3; <pad> 0, <|begin_of_text|> 1, </s> 2, <|image|> 95) and a 16 px, 4-tile image
    processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import MllamaProcessor, PreTrainedTokenizerFast

    image_processor_class = getattr(transformers, "MllamaImageProcessorPil", None) or transformers.MllamaImageProcessor
    vocab = {"<pad>": 0, "<|begin_of_text|>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(words)})
    vocab["<|image|>"] = 95  # make_mllama_cg's image_token_index
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<|begin_of_text|>", eos_token="</s>",
                                        extra_special_tokens=["<|image|>"])
    image_processor = image_processor_class(size={"height": 16, "width": 16}, max_image_tiles=4)
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer)
