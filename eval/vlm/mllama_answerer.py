"""A local Mllama (Llama 3.2 Vision) checkpoint answering prompts about images, its vision tower in JAX.

`MllamaAnswerer(dir)` loads `MllamaForConditionalGeneration` and its tokenizer with
transformers, and takes the checkpoint's vision tower into JAX (`sauce_jax.load_encoder` of
the model in memory, preprocessing from the directory's `preprocessor_config.json`). The
tower, clean or unlearned, gives the cross-attention states through the checkpoint's PyTorch
projector (`.mllama_bridge`); the language model decodes greedily. Same `ask` contract as
`LlavaAnswerer`: one image per prompt, the tokenizer's chat template when it has one, else
`<|image|>{prompt}`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sauce_jax.errors import CheckpointError, ConfigError, InputError

IMAGE_TOKEN = "<|image|>"


class MllamaAnswerer:
    """Greedy answers of an Mllama checkpoint; `unlearned` swaps in an edited JAX tower."""

    def __init__(self, checkpoint: str | os.PathLike, dtype: str = "float32", device: str = "cpu"):
        try:
            import torch
            from transformers import AutoTokenizer, MllamaForConditionalGeneration
        except ImportError as exc:
            raise ConfigError("an Mllama checkpoint needs transformers and torch: pip install 'sauce-jax[torch]'") from exc
        from sauce_jax.loading import load_encoder
        from sauce_jax.mllama_processor import MllamaPreprocessConfig
        from sauce_jax.ports.weights import read_json

        directory = Path(checkpoint)
        if not (directory / "config.json").is_file():
            raise CheckpointError(f"{str(directory)!r} is not a checkpoint directory (no config.json)")
        model_type = read_json(directory / "config.json").get("model_type")
        if model_type != "mllama":
            raise ConfigError(f"{str(directory)!r} is a {model_type!r} checkpoint, not an Mllama one")
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        if torch_dtype is None:
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        try:
            self.model = MllamaForConditionalGeneration.from_pretrained(directory, dtype=torch_dtype).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(directory)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load Mllama and its tokenizer from {str(directory)!r}: {exc}") from exc
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # The weights are read once: the JAX tower comes from the model in memory, its
        # preprocessing from the checkpoint's own image processor config when it has one.
        self.encoder = load_encoder(self.model)
        if (directory / "preprocessor_config.json").is_file():
            self.encoder.preprocess_config = MllamaPreprocessConfig.from_hf(read_json(directory / "preprocessor_config.json"))
        self.image_token_id = self.model.config.image_token_index

    def prompt_text(self, prompt: str) -> str:
        """The full prompt for one image and one user message, with one image token."""
        if getattr(self.tokenizer, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return f"{IMAGE_TOKEN}{prompt}"

    def text_inputs(self, prompt: str, tiles_mask: np.ndarray) -> dict:
        """input_ids, attention_mask [1, S] and cross_attention_mask [1, S, 1, tiles]: the tokens
        from the image token on see the image's real tiles (`tiles_mask` [tiles]), as
        `MllamaProcessor` builds it for one image."""
        import torch

        text = self.prompt_text(prompt)
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=not getattr(self.tokenizer, "chat_template", None))
        ids = encoded["input_ids"]  # [1, S]
        where = (ids[0] == self.image_token_id).nonzero()
        if len(where) != 1:
            raise InputError(f"the prompt {text!r} holds {len(where)} image tokens; one is needed")
        cross = torch.zeros((1, ids.shape[1], 1, len(tiles_mask)), dtype=torch.long)
        cross[0, int(where[0]):, 0, :] = torch.from_numpy(np.asarray(tiles_mask, np.int64))
        return {"input_ids": ids, "attention_mask": encoded["attention_mask"], "cross_attention_mask": cross}

    def ask(self, images: Sequence[Any], prompts: Sequence[Sequence[str]], *, unlearned=None,
            max_new_tokens: int = 32, strip: bool = True) -> list[list[str]]:
        """Answers [image][prompt]: every prompt of `prompts[i]` about image i; the image's
        cross-attention states are computed once and reused for its prompts."""
        from sauce_jax.eval.vlm.mllama_bridge import generate_with_states, mllama_cross_attention_states
        from sauce_jax.image_processor import preprocess
        from sauce_jax.images import open_image

        if len(images) != len(prompts):
            raise InputError(f"{len(images)} images but {len(prompts)} prompt lists")
        answers = []
        for image, image_prompts in zip(images, prompts):
            px = preprocess([open_image(image, rgb=True, strict=True)], self.encoder)  # one record
            states = mllama_cross_attention_states(self.model, self.encoder, px, unlearned=unlearned)
            row = []
            for prompt in image_prompts:
                inputs = self.text_inputs(prompt, px["aspect_ratio_mask"][0])
                ids = generate_with_states(self.model, inputs, states, max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=self.tokenizer.pad_token_id)
                text = self.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
                row.append(text.strip() if strip else text)
            answers.append(row)
        return answers
