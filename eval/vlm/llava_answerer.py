"""A local LLaVA-1.5-style checkpoint answering prompts about images, its vision tower in JAX.

`LlavaAnswerer(dir)` loads `LlavaForConditionalGeneration` and its processor with
transformers, and the same checkpoint's vision tower with `sauce_jax.load_encoder`. Image
features come from that JAX tower, clean or unlearned (`sauce_jax.unlearn`), through the
checkpoint's PyTorch projector (`.llava_bridge`); the language model decodes greedily.
Prompts use the processor's chat template when it has one, else LLaVA-1.5's
`USER: <image>\\n{prompt} ASSISTANT:`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from sauce_jax.errors import CheckpointError, ConfigError, InputError

from .checkpoint import checked_checkpoint


class LlavaAnswerer:
    """Greedy answers of a LLaVA checkpoint; `unlearned` swaps in an edited JAX tower."""

    def __init__(self, checkpoint: str | os.PathLike, batch_size: int = 8, dtype: str = "float32",
                 device: str = "cpu"):
        try:
            import torch  # noqa: F401  (checked here: the error names the extra)
            from transformers import AutoProcessor, LlavaForConditionalGeneration
        except ImportError as exc:
            raise ConfigError("a LLaVA checkpoint needs transformers and torch: pip install 'sauce-jax[torch]'") from exc
        from sauce_jax.loading import load_encoder

        directory, torch_dtype = checked_checkpoint(checkpoint, "llava", "LlavaForConditionalGeneration", batch_size, dtype)
        try:
            # The language model and projector run in PyTorch at `dtype` on `device`; the vision
            # tower runs in JAX (float32) wherever JAX runs.
            self.model = LlavaForConditionalGeneration.from_pretrained(directory, dtype=torch_dtype).to(device).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load LLaVA from {str(directory)!r}: {exc}") from exc
        try:
            self.processor = AutoProcessor.from_pretrained(directory)
        except Exception as exc:  # transformers raises many kinds here
            raise ConfigError(f"{str(directory)!r} has no usable processor (tokenizer + image processor): {exc}") from exc
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # batched greedy decoding continues from the right end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.tokenizer = tokenizer
        # The JAX tower comes from the model in memory (the weights are read once), and prepares
        # images as the checkpoint's own image processor does.
        self.encoder = load_encoder(self.model)
        self.encoder.preprocess_config = _processor_preprocessing(self.processor, self.encoder.preprocess_config)
        read = self.model.config.vision_feature_layer
        # The hidden state the language model reads (the earliest, when it reads several): the
        # default SAE layer, so an edit there reaches everything the projector sees.
        self.layer = min(self.encoder.layer_index(i) for i in ([read] if isinstance(read, int) else read))
        self.batch_size = batch_size
        self.image_token = getattr(self.processor, "image_token", None) or "<image>"

    def prompt_text(self, prompt: str) -> str:
        """The full prompt for one image and one user message, with one image placeholder."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return f"USER: {self.image_token}\n{prompt} ASSISTANT:"

    def features(self, images: Sequence[Any], unlearned=None):
        """Projected image features [B, N, D_text] (torch), from the clean or unlearned tower.
        The batch is zero-padded to `batch_size` so the JAX tower compiles once."""
        from sauce_jax.eval.vlm.llava_bridge import llava_image_features
        from sauce_jax.encoder import pad_batch
        from sauce_jax.image_processor import preprocess
        from sauce_jax.images import open_image

        px = preprocess([open_image(i, rgb=True, strict=True) for i in images], self.encoder)  # [B, H, W, C]
        px = pad_batch(px, self.batch_size)
        return llava_image_features(self.model, self.encoder, px, unlearned=unlearned)[:len(images)]

    def generate(self, features, prompts: Sequence[str], max_new_tokens: int, strip: bool = True) -> list[str]:
        """One greedy answer per row: features [B, N, D_text], prompts [B] user messages;
        `strip=False` keeps the decoded text's surrounding whitespace."""
        from sauce_jax.eval.vlm.llava_bridge import generate_with_features

        n_tokens = features.shape[1]
        texts = [self.prompt_text(p).replace(self.image_token, self.image_token * n_tokens) for p in prompts]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=True).to(self.model.device)
        ids = generate_with_features(self.model, inputs, features, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [t.strip() for t in texts] if strip else texts

    def ask(self, images: Sequence[Any], prompts: Sequence[Sequence[str]], *, unlearned=None,
            max_new_tokens: int = 32, strip: bool = True) -> list[list[str]]:
        """Answers [image][prompt]: every prompt of `prompts[i]` about image i (paths, PIL
        images or arrays). Features are computed once per image and reused for its prompts."""
        if len(images) != len(prompts):
            raise InputError(f"{len(images)} images but {len(prompts)} prompt lists")
        import torch

        answers: list[list[str]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start:start + self.batch_size])
            feats = self.features(chunk, unlearned)  # [b, N, D_text]
            pairs = [(i, p) for i, ps in enumerate(prompts[start:start + len(chunk)]) for p in ps]
            flat: list[str] = []
            for s in range(0, len(pairs), self.batch_size):
                rows = pairs[s:s + self.batch_size]
                flat += self.generate(feats[torch.tensor([i for i, _ in rows])], [p for _, p in rows], max_new_tokens,
                                      strip)
            it = iter(flat)
            answers += [[next(it) for _ in ps] for ps in prompts[start:start + len(chunk)]]
        return answers

    def mme_answerer(self, unlearned=None, max_new_tokens: int = 8):
        """An answerer for `sauce_jax.eval.mme.run_mme` (one question per image)."""
        def answer(images, questions):
            return [a[0] for a in self.ask(images, [[q] for q in questions], unlearned=unlearned,
                                           max_new_tokens=max_new_tokens)]
        return answer


def _processor_preprocessing(processor, fallback):
    """The `PreprocessConfig` of the processor's image processor (what `load_encoder` reads from
    a checkpoint directory's preprocessor config), or `fallback` (the tower's defaults) for an
    image processor sauce-jax cannot mirror."""
    from sauce_jax.image_processor import PreprocessConfig

    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return fallback
    try:
        return PreprocessConfig.from_hf(image_processor.to_dict(), origin=f"{type(image_processor).__name__}")
    except ConfigError:
        return fallback
