"""Forget, retain and refusal sets: tokenized (prompt, answer) examples over cached tower features.

The vision tower stays frozen in every baseline, so each image goes through it once: a set holds
the tower's output at `vision_feature_layer` ([M, T, D_vision], before the projector, which may
train), and each example points at its image's row. Sequences are LLaVA's: the prompt's
`<image>` placeholder expanded to T image tokens, the answer, EOS; the loss reads the answer only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from sauce_jax.errors import ConfigError, InputError

LLAVA_15_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"  # LLaVA-1.5's single-turn prompt


@dataclasses.dataclass
class UnlearnSet:
    """Examples over cached image features.

    Attributes:
      features: [M, T, D_vision] tower features (pre-projector), one row per image.
      image: per example, its row of `features`.
      ids: per example, token ids of prompt + answer (+ EOS), image tokens expanded.
      answer_at: per example, the index in `ids` where the answer starts.
    """

    features: Any
    image: list[int]
    ids: list[list[int]]
    answer_at: list[int]

    def __post_init__(self):
        if not (len(self.image) == len(self.ids) == len(self.answer_at)):
            raise InputError(f"image ({len(self.image)}), ids ({len(self.ids)}) and answer_at "
                             f"({len(self.answer_at)}) must have one entry per example")
        if self.image and not 0 <= min(self.image) <= max(self.image) < len(self.features):
            raise InputError(f"image indices must lie in [0, {len(self.features)})")
        for row, at in zip(self.ids, self.answer_at):
            if not 0 < at < len(row):
                raise InputError(f"answer_at={at} leaves no prompt or no answer in a sequence of {len(row)} tokens")

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: Sequence[int], pad_id: int):
        """(ids [B, S], labels [B, S] with -100 outside the answers, attention mask [B, S],
        features [B, T, D]) for examples `index`, right-padded as in training."""
        import torch

        rows = [self.ids[i] for i in index]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(index):
            row, at = self.ids[i], self.answer_at[i]
            ids[r, :len(row)] = torch.tensor(row)
            labels[r, at:len(row)] = torch.tensor(row[at:])
            mask[r, :len(row)] = 1
        return ids, labels, mask, self.features[[self.image[i] for i in index]]

    def batches(self, batch_size: int, pad_id: int):
        """Every example once, in order (for measuring losses on the whole set)."""
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))), pad_id)


@dataclasses.dataclass
class UnlearnData:
    """What a baseline trains on: the forget set (the concept's images, prompts, the clean model's
    correct answers), the retain set (other concepts of the same domain) and, for PO, the forget
    prompts with the refusal as the answer."""

    forget: UnlearnSet
    retain: UnlearnSet | None = None
    refusal: UnlearnSet | None = None
    pad_id: int = 0

    def __post_init__(self):
        if len(self.forget) == 0:
            raise InputError("the forget set is empty")


def encode_llava(tokenizer, prompt: str, answer: str, image_tokens: int, *, template: str = LLAVA_15_TEMPLATE,
                 image_token: str = "<image>") -> tuple[list[int], int]:
    """Ids of `template` (with `{prompt}`, and `image_token` repeated `image_tokens` times) +
    answer + EOS, and where the answer starts: any LLaVA checkpoint's tokenizer."""
    if "{prompt}" not in template or image_token not in template:
        raise ConfigError(f"template {template!r} must hold '{{prompt}}' and {image_token!r}")
    text = template.format(prompt=prompt).replace(image_token, image_token * image_tokens)
    prompt_ids = tokenizer(text)["input_ids"]
    answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos_token_id")
    return list(prompt_ids) + list(answer_ids) + [tokenizer.eos_token_id], len(prompt_ids)


def make_set(features, examples: Sequence[tuple[int, list[int], int]]) -> UnlearnSet:
    """An `UnlearnSet` from (image row, ids, answer_at) triples."""
    return UnlearnSet(features, [e[0] for e in examples], [list(e[1]) for e in examples], [e[2] for e in examples])


def tower_features(model, pixel_values, batch_size: int = 32):
    """[N, T, D_vision] float32: the frozen PyTorch tower's hidden state at `vision_feature_layer`
    (CLS dropped for the "default" strategy; a list of layers is concatenated), before the
    projector, for NCHW `pixel_values` as the checkpoint's processor makes them."""
    import torch

    config = model.config
    layers = config.vision_feature_layer
    layers = [layers] if isinstance(layers, int) else list(layers)
    tower = model.model.vision_tower if hasattr(model, "model") and hasattr(model.model, "vision_tower") \
        else model.vision_tower
    weight = next(tower.parameters())
    chunks = []
    with torch.no_grad():
        for start in range(0, len(pixel_values), batch_size):
            px = pixel_values[start:start + batch_size].to(device=weight.device, dtype=weight.dtype)
            states = tower(pixel_values=px, output_hidden_states=True).hidden_states
            selected = [states[i] for i in layers]
            if config.vision_feature_select_strategy == "default":
                selected = [h[:, 1:] for h in selected]
            chunks.append(torch.cat(selected, dim=-1).float())
    return torch.cat(chunks)


def llava_set(model, processor, images, examples: Sequence[tuple[int, str, str]], *,
              template: str = LLAVA_15_TEMPLATE, batch_size: int = 32) -> UnlearnSet:
    """An `UnlearnSet` for any transformers LLaVA: `images` (PIL or uint8 HWC arrays) through the
    checkpoint's own image processor and frozen tower once, and `examples` as (image index,
    prompt, answer) encoded with `template` (LLaVA-1.5's by default; pass the checkpoint's own)."""
    pixel_values = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    features = tower_features(model, pixel_values, batch_size)
    image_token = getattr(processor, "image_token", "<image>")
    rows = [(i, *encode_llava(processor.tokenizer, prompt, answer, features.shape[1], template=template,
                              image_token=image_token)) for i, prompt, answer in examples]
    return make_set(features, rows)


def check_vocabulary(tokenizer, text: str, what: str = "answer") -> None:
    """A `ConfigError` when `text` holds words the tokenizer maps to its unknown token (a word-level
    vocabulary such as ConceptWorld's cannot say "I don't know.")."""
    unk = tokenizer.unk_token_id
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if unk is not None and unk in ids:
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
        raise ConfigError(f"{what} {text!r} has words outside the tokenizer's vocabulary "
                          f"(tokens {tokens}); choose words the model knows")


def rng_indices(seed: int, step: int, stream: int, n: int, size: int) -> np.ndarray:
    """A batch of `size` example indices out of `n`, drawn from (seed, step, stream) alone, so a run
    continued from step s draws what a run started at 0 draws at step s."""
    return np.random.default_rng([seed, stream, step]).integers(n, size=size)
