"""A local Mllama (Llama 3.2 Vision) checkpoint answering prompts about images, its vision tower in JAX.

`MllamaAnswerer(dir)` loads `MllamaForConditionalGeneration` and its processor with
transformers, and the vision tower from the loaded model with `sauce_jax.load_encoder`. The
images' cross-attention states come from that JAX tower, clean or unlearned
(`sauce_jax.unlearn`), through the checkpoint's PyTorch projector (`.mllama_bridge`); the
processor only tokenizes the prompts (one image each, its tiles seen from the image token on,
as the processor's own cross-attention mask has it) and the language model decodes greedily.
Prompts use the processor's chat template when it has one, else `<|image|>{prompt}`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from sauce_jax.errors import CheckpointError, ConfigError, InputError

from .checkpoint import checked_checkpoint


class MllamaAnswerer:
    """Greedy answers of an Mllama checkpoint; `unlearned` swaps in an edited JAX tower."""

    def __init__(self, checkpoint: str | os.PathLike, batch_size: int = 8, dtype: str = "float32",
                 device: str = "cpu"):
        try:
            import torch  # noqa: F401  (checked here: the error names the extra)
            from transformers import AutoProcessor, MllamaForConditionalGeneration
        except ImportError as exc:
            raise ConfigError("an Mllama checkpoint needs transformers and torch: pip install 'sauce-jax[torch]'") from exc
        from sauce_jax.loading import load_encoder
        from sauce_jax.mllama_processor import MllamaPreprocessConfig

        directory, torch_dtype = checked_checkpoint(checkpoint, "mllama", "MllamaForConditionalGeneration", batch_size, dtype)
        try:
            self.model = MllamaForConditionalGeneration.from_pretrained(directory, dtype=torch_dtype).to(device).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load Mllama from {str(directory)!r}: {exc}") from exc
        try:
            self.processor = AutoProcessor.from_pretrained(directory)
        except Exception as exc:  # transformers raises many kinds here
            raise ConfigError(f"{str(directory)!r} has no usable processor (tokenizer + image processor): {exc}") from exc
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched greedy decoding continues from the right end
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # The JAX tower comes from the model in memory (the weights are read once) and tiles
        # images as the checkpoint's own image processor does.
        self.encoder = load_encoder(self.model)
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is not None:
            self.encoder.preprocess_config = MllamaPreprocessConfig.from_hf(
                image_processor.to_dict(), origin=type(image_processor).__name__)
        self.image_token = getattr(self.processor, "image_token", None) or "<|image|>"
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.batch_size = batch_size

    def prompt_text(self, prompt: str) -> str:
        """The full prompt for one image and one user message, with one image token."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return f"{self.image_token}{prompt}"

    def text_inputs(self, prompts: Sequence[str], aspect_ratio_mask: Any) -> dict:
        """The tokenized prompts [B, S] (as the processor tokenizes them) and their
        cross-attention mask [B, S, 1, tiles]: every token from the image token on sees the
        image's tiles (`aspect_ratio_mask` [B, tiles]), as the processor builds it."""
        import numpy as np
        import torch

        # The processor refuses text with an image token but no images: tokenize as it does.
        texts = [_with_bos(self.prompt_text(p), self.tokenizer.bos_token, self.image_token) for p in prompts]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True)
        ids = inputs["input_ids"]
        is_image = ids == self.image_token_id
        if not bool(is_image.any(dim=1).all()):
            raise InputError(f"a prompt has no image token {self.image_token!r} after tokenization")
        seen = torch.cumsum(is_image.long(), dim=1) > 0  # [B, S]: at or after the first image token
        tiles = torch.from_numpy(np.asarray(aspect_ratio_mask)).long()  # [B, N]
        cross = (seen[:, :, None].long() * tiles[:, None, :])[:, :, None, :]  # [B, S, 1, N]
        return {"input_ids": ids, "attention_mask": inputs["attention_mask"], "cross_attention_mask": cross}

    def ask(self, images: Sequence[Any], prompts: Sequence[Sequence[str]], *, unlearned=None,
            max_new_tokens: int = 32, strip: bool = True) -> list[list[str]]:
        """Answers [image][prompt]: every prompt of `prompts[i]` about image i (paths, PIL images
        or arrays). The tower runs once per image; the batch is zero-padded to `batch_size` so
        it compiles once."""
        if len(images) != len(prompts):
            raise InputError(f"{len(images)} images but {len(prompts)} prompt lists")
        import torch

        from sauce_jax.encoder import pad_batch
        from sauce_jax.eval.vlm.mllama_bridge import generate_with_states, mllama_cross_attention_states
        from sauce_jax.image_processor import preprocess
        from sauce_jax.images import open_image

        answers: list[list[str]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start:start + self.batch_size])
            inputs = preprocess([open_image(i, rgb=True, strict=True) for i in chunk], self.encoder)  # [b] records
            states = mllama_cross_attention_states(self.model, self.encoder, pad_batch(inputs, self.batch_size),
                                                   unlearned=unlearned)  # [B * N, P + 1, D_text]
            per_image = states.reshape(self.batch_size, -1, *states.shape[1:])[:len(chunk)]  # [b, N, P + 1, D_text]
            pairs = [(i, p) for i, ps in enumerate(prompts[start:start + len(chunk)]) for p in ps]
            flat: list[str] = []
            for s in range(0, len(pairs), self.batch_size):
                rows = torch.tensor([i for i, _ in pairs[s:s + self.batch_size]])
                text = self.text_inputs([p for _, p in pairs[s:s + self.batch_size]],
                                        inputs["aspect_ratio_mask"][rows.numpy()])
                ids = generate_with_states(self.model, text, per_image[rows].flatten(0, 1),
                                           max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=self.tokenizer.pad_token_id)
                texts = self.tokenizer.batch_decode(ids[:, text["input_ids"].shape[1]:], skip_special_tokens=True)
                flat += [t.strip() for t in texts] if strip else texts
            it = iter(flat)
            answers += [[next(it) for _ in ps] for ps in prompts[start:start + len(chunk)]]
        return answers


def _with_bos(prompt: str, bos: str | None, image_token: str) -> str:
    """The prompt as MllamaProcessor gives it to its tokenizer: the begin-of-text token after
    the leading image tokens, unless the prompt holds one already."""
    if not bos or bos in prompt:
        return prompt
    rest, leading = prompt, 0
    while rest.startswith(image_token):
        rest, leading = rest[len(image_token):], leading + 1
    return f"{image_token * leading}{bos}{rest}"
