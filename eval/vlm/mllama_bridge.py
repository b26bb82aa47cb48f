"""Mllama (Llama 3.2 Vision) with our JAX vision tower: vision features from JAX, the rest in PyTorch.

`mllama_cross_attention_states` reproduces what `MllamaModel.forward` computes from
`pixel_values`: the vision tower's last_hidden_state (the global output concatenated with
the intermediate local layers), then the checkpoint's own `multi_modal_projector`, reshaped
to [B * images * tiles, P + 1, D_text], but with the tower replaced by a sauce-jax
`MllamaEncoder`, optionally an unlearned one from `sauce_jax.unlearn`. `logits_with_states`
and `generate_with_states` hand those states to `MllamaForConditionalGeneration` as
`cross_attention_states`, in place of its own vision tower.

Images are rows of the encoder's batch; with several images per prompt, the rows are ordered
(prompt, image), as transformers flattens `pixel_values` [B, images, ...].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sauce_jax.errors import ConfigError, InputError
from sauce_jax.torch_bridge import to_torch

__all__ = ["generate_with_states", "logits_with_states", "mllama_cross_attention_states"]

# What a processor's output may hold that the language model reads (its pixel inputs are replaced).
_TEXT_INPUTS = ("input_ids", "attention_mask", "cross_attention_mask")


def _inner(model: Any) -> Any:
    # transformers 5 keeps the parts on the inner MllamaModel; 4.x on the top model.
    inner = getattr(model, "model", None)
    return inner if isinstance(getattr(inner, "multi_modal_projector", None), torch.nn.Module) else model


def _projector(model: Any) -> torch.nn.Module:
    projector = getattr(_inner(model), "multi_modal_projector", None)
    if not isinstance(projector, torch.nn.Module):
        raise ConfigError(f"{type(model).__name__} has no multi_modal_projector: not an Mllama model")
    return projector


def mllama_cross_attention_states(model: Any, encoder: Any, inputs: Any, *, unlearned: Any = None) -> torch.Tensor:
    """The language model's cross-attention states [B * N, P + 1, D_text], with the vision tower run in JAX.

    Args:
      model: a transformers `MllamaForConditionalGeneration` (or `MllamaModel`); its PyTorch
        `multi_modal_projector` maps the tower's output to the text width.
      encoder: the `MllamaEncoder` loaded from the same checkpoint (`load_encoder(model)`).
      inputs: the encoder's input (`sauce_jax.preprocess(images, encoder)`, or a mapping /
        tuple of pixel_values [B, N, H, W, C], aspect_ratio_ids [B], aspect_ratio_mask [B, N]).
      unlearned: an encoder from `sauce_jax.unlearn(encoder, ...)` to use instead of `encoder`.
    """
    vision = unlearned if unlearned is not None else encoder
    last = vision(inputs).last_hidden_state  # [B, N, P + 1, D * (1 + K)]
    projector = _projector(model)
    weight = next(projector.parameters())
    features = to_torch(last).to(device=weight.device, dtype=weight.dtype)
    if features.shape[-1] != projector.in_features:
        raise InputError(f"the vision tower gives {features.shape[-1]} features per token, the projector takes "
                         f"{projector.in_features}: encoder and model are not from the same checkpoint")
    text_width = projector.out_features
    with torch.no_grad():
        return projector(features).reshape(-1, features.shape[-2], text_width)  # [B * N, P + 1, D_text]


def _text_inputs(inputs: Any) -> dict[str, torch.Tensor]:
    if isinstance(inputs, Mapping):
        if "input_ids" not in inputs:
            raise InputError("the prompt inputs have no 'input_ids'")
        return {k: inputs[k] for k in _TEXT_INPUTS if inputs.get(k) is not None}
    if isinstance(inputs, torch.Tensor):
        return {"input_ids": inputs}
    raise InputError(f"prompt inputs must be input_ids or a processor's output, got {type(inputs).__name__}")


def logits_with_states(model: Any, inputs: Any, cross_attention_states: torch.Tensor) -> torch.Tensor:
    """Mllama's next-token logits [B, S, V] for a prompt whose images are given as cross-attention states.

    `inputs`: input_ids [B, S], or a processor's output (input_ids, attention_mask,
    cross_attention_mask; its pixel_values / aspect ratio entries are ignored).
    """
    with torch.no_grad():
        return model(**_text_inputs(inputs), cross_attention_states=cross_attention_states).logits


def generate_with_states(model: Any, inputs: Any, cross_attention_states: torch.Tensor,
                         **generate_kwargs) -> torch.Tensor:
    """`model.generate` with the images given as cross-attention states instead of pixel values.

    Returns the generated ids [B, S + new], prompt included, as `generate(input_ids=...)` does.
    """
    text = _text_inputs(inputs)
    if "attention_mask" not in text:
        text["attention_mask"] = torch.ones_like(text["input_ids"])
    # As with pixel_values, the states enter at the prefill only: later steps read the
    # cross-attention key/values from the cache (passing them again would extend it).
    original = model.prepare_inputs_for_generation

    def prepare(*args, **kwargs):
        step = original(*args, **kwargs)
        if "is_first_iteration" in kwargs:  # transformers 5 flags the prefill, and only the prefill
            first = bool(kwargs["is_first_iteration"])
        else:  # transformers 4.x: the prefill is the step at cache position 0
            position = kwargs.get("cache_position")
            first = position is not None and int(position[0]) == 0
        prefill = first or not kwargs.get("use_cache", True)
        step["cross_attention_states"] = cross_attention_states if prefill else None
        return step

    model.prepare_inputs_for_generation = prepare  # on this instance, for this call only
    try:
        with torch.no_grad():
            return model.generate(**text, **generate_kwargs)
    finally:
        del model.prepare_inputs_for_generation
