"""ConceptWorld's VLM: a real transformers `LlavaForConditionalGeneration` (CLIP tower, projector,
small Llama), its word-level tokenizer and `LlavaProcessor`, where the trained one ships, and
the PyTorch tower's view of rendered images (`pixels_nchw`, `tower_features`) that training,
answering and the baselines share.

The architecture is LLaVA-1.5's at a small size, so the SAUCE code path (JAX tower, SAE hook,
PyTorch projector and language model) is the one a real LLaVA takes. The language model reads
the tower's last hidden state (`vision_feature_layer=-1`): with four blocks that is the layer
the tower was trained to make every concept readable at, per patch token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sauce_jax.errors import CheckpointError

from .render import IMAGE_SIZE
from .text import EOS, IMAGE_TOKEN, vocabulary

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)  # CLIPImageProcessor's normalisation
SHIPPED = Path(__file__).parent / "model"  # the trained checkpoint inside the package
SPECIALS = ("<pad>", "<s>", EOS, "<unk>", IMAGE_TOKEN)

VISION = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
              "image_size": IMAGE_SIZE, "patch_size": 16, "hidden_act": "quick_gelu", "projection_dim": 128}
TEXT = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 4, "max_position_embeddings": 160, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}


def num_image_tokens() -> int:
    return (VISION["image_size"] // VISION["patch_size"]) ** 2


def make_tokenizer():
    """A word-level `PreTrainedTokenizerFast`: lower-cased, split on whitespace and punctuation,
    a `<s>` in front; `<image>` is a special token so it never splits."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token=EOS, pad_token="<pad>",
                                        unk_token="<unk>", padding_side="left")
    tokenizer.image_token = IMAGE_TOKEN
    return tokenizer


def make_processor(tokenizer=None):
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    from transformers import LlavaProcessor

    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer or make_tokenizer(),
                          patch_size=VISION["patch_size"], vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token=IMAGE_TOKEN)


def make_model(tokenizer, seed: int = 0, text: dict | None = None):
    """A freshly initialised ConceptWorld LLaVA (float32); `text` overrides fields of the
    language model's shape (`TEXT`)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           (("pad", "<pad>"), ("bos", "<s>"), ("eos", EOS), ("image", IMAGE_TOKEN))}
    text = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=ids["pad"], bos_token_id=ids["bos"],
                       eos_token_id=ids["eos"], **{**TEXT, **(text or {})})
    config = LlavaConfig(vision_config=CLIPVisionConfig(**VISION), text_config=text, image_token_index=ids["image"],
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", image_seq_length=num_image_tokens(),
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.bos_token_id = ids["bos"]
    return model.eval()


def save(model, processor, directory: str | Path, *, float16: bool = True) -> Path:
    """`save_pretrained` of model and processor; float16 weights keep the shipped copy small."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if float16:
        model = model.to(torch.float16)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    if float16:
        model.to(torch.float32)
    return directory


def load(directory: str | Path | None = None):
    """(model float32 eval, processor) from `directory`, by default the shipped checkpoint."""
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    directory = Path(directory) if directory is not None else SHIPPED
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"no ConceptWorld model at {directory} (config.json missing); "
                              "train one with `sauce-jax conceptworld train --out DIR`")
    model = LlavaForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    processor = LlavaProcessor.from_pretrained(directory)
    return model, processor


# ----------------------------------------------------------------------- the PyTorch tower

def pixels_nchw(images: np.ndarray):
    """uint8 [N, S, S, 3] -> CLIP-normalised float32 torch [N, 3, S, S] (what CLIPImageProcessor gives)."""
    import torch

    x = (images.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def tower_features(model, images: np.ndarray, batch: int = 256):
    """The language model's view of each image: [N, T, D] float16, layer `vision_feature_layer`, CLS dropped."""
    import torch

    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    device = next(tower.parameters()).device
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            out = tower(pixel_values=pixels_nchw(images[start:start + batch]).to(device), output_hidden_states=True)
            chunks.append(out.hidden_states[layer][:, 1:].to(torch.float16))
    return torch.cat(chunks)
