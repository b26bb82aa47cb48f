"""LLaVA with our JAX vision encoder: image features from JAX, the language model in PyTorch.

`llava_image_features` reproduces transformers' `LlavaModel.get_image_features` (hidden
state(s) at `vision_feature_layer`, CLS dropped for the "default" select strategy, concatenated
over a list of layers, then the checkpoint's own `multi_modal_projector`), but with the vision
tower replaced by a sauce-jax `VisionEncoder`, optionally an unlearned one from
`sauce_jax.unlearn`. `logits_with_features` and `generate_with_features` feed such features
to `LlavaForConditionalGeneration` in place of its own vision tower, the way
`LlavaModel.forward` does: embed the prompt, then scatter the features into the image-token
positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import torch

from sauce_jax.errors import ConfigError, InputError
from sauce_jax.torch_bridge import to_torch

__all__ = ["feature_layers", "generate_with_features", "inputs_embeds_with_features", "llava_image_features",
           "logits_with_features", "project_states"]


def _projector(model: Any) -> torch.nn.Module:
    # transformers >= 4.52 (and 5) keep it on the inner LlavaModel; older versions on the top model.
    for owner in (getattr(model, "model", None), model):
        projector = getattr(owner, "multi_modal_projector", None)
        if isinstance(projector, torch.nn.Module):
            return projector
    raise ConfigError(f"{type(model).__name__} has no multi_modal_projector: not a LLaVA model")


def _image_token_id(model: Any) -> int:
    config = model.config
    token = getattr(config, "image_token_id", None)
    token = getattr(config, "image_token_index", None) if token is None else token
    if token is None:
        raise ConfigError(f"{type(model).__name__}'s config has no image_token_id / image_token_index")
    return int(token)


def llava_image_features(model: Any, encoder: Any, pixel_values_nhwc: Any, *, unlearned: Any = None) -> torch.Tensor:
    """LLaVA's projected image features [B, N, D_text], with the vision tower run in JAX.

    Args:
      model: a transformers `LlavaForConditionalGeneration` (or `LlavaModel`); its config gives
        `vision_feature_layer` (an index or a list) and `vision_feature_select_strategy`, and
        its PyTorch `multi_modal_projector` maps the features to the text width.
      encoder: the `VisionEncoder` loaded from the same checkpoint (`load_encoder(model)`).
      pixel_values_nhwc: preprocessed images [B, H, W, C] (NHWC, as sauce-jax takes them).
      unlearned: an encoder from `sauce_jax.unlearn(encoder, ...)` to use instead of `encoder`.

    N is the number of patches ("default" strategy) or patches + 1 ("full").
    """
    vision = unlearned if unlearned is not None else encoder
    indices = feature_layers(model, vision)
    # One forward up to the deepest requested state: blocks past it never run (LLaVA's -2).
    states = vision.hidden_states(pixel_values_nhwc, upto=max(indices))  # each [B, T, D]
    return project_states(model, [states[i] for i in indices])


def feature_layers(model: Any, encoder: Any) -> list[int]:
    """The hidden-state indices (non-negative, in order) LLaVA reads: `vision_feature_layer`."""
    layers = model.config.vision_feature_layer
    return [encoder.layer_index(layer) for layer in ([layers] if isinstance(layers, int) else layers)]


def project_states(model: Any, states: list[Any]) -> torch.Tensor:
    """LLaVA's projected image features [B, N, D_text] from the tower's hidden states at
    `feature_layers` (each [B, T, D], in that order): the select strategy, then the projector."""
    strategy = model.config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise ConfigError(f"vision_feature_select_strategy {strategy!r} is not 'default' or 'full'")
    selected = [jnp.asarray(h) for h in states]
    if strategy == "default":
        selected = [h[:, 1:] for h in selected]  # drop the CLS token
    features = to_torch(jnp.concatenate(selected, axis=-1))  # [B, N, D * len(layers)]
    projector = _projector(model)
    weight = next(projector.parameters())
    with torch.no_grad():
        return projector(features.to(device=weight.device, dtype=weight.dtype))  # [B, N, D_text]


def inputs_embeds_with_features(model: Any, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
    """The prompt's token embeddings [B, S, D_text] with `image_features` [B, N, D_text]
    scattered, in order, into the image-token positions (as `LlavaModel.forward` does)."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(input_ids)  # [B, S, D_text]
    mask = input_ids == _image_token_id(model)  # [B, S]
    if int(mask.sum()) * embeds.shape[-1] != image_features.numel():
        raise InputError(f"the prompt has {int(mask.sum())} image tokens but there are "
                         f"{image_features.shape[0] * image_features.shape[1]} image features "
                         f"(shape {tuple(image_features.shape)})")
    features = image_features.to(device=embeds.device, dtype=embeds.dtype)
    return embeds.masked_scatter(mask[..., None].expand_as(embeds), features)


def logits_with_features(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                         image_features: torch.Tensor) -> torch.Tensor:
    """LLaVA's next-token logits [B, S, V] for a prompt whose images are given as features."""
    embeds = inputs_embeds_with_features(model, input_ids, image_features)
    with torch.no_grad():
        return model(inputs_embeds=embeds, attention_mask=attention_mask).logits


def generate_with_features(model: Any, inputs: Any, image_features: torch.Tensor, **generate_kwargs) -> torch.Tensor:
    """`model.generate` with the images given as features instead of pixel values.

    Args:
      inputs: the prompt's input_ids [B, S], or a processor's output (a mapping with
        `input_ids` and optionally `attention_mask`; its `pixel_values` are ignored).
      image_features: [B, N, D_text] from `llava_image_features`.
      generate_kwargs: passed to `generate` (max_new_tokens, do_sample, ...).

    Returns the generated ids [B, S + new], prompt included, as `generate(input_ids=...)` does.
    """
    if isinstance(inputs, Mapping):
        input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
    else:
        input_ids, attention_mask = inputs, None
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    embeds = inputs_embeds_with_features(model, input_ids, image_features)
    # Both ids and embeds: generate uses the embeds for the prompt and returns the ids with it.
    with torch.no_grad():
        return model.generate(input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask,
                              **generate_kwargs)
