"""`EncoderFamily`: what one port tells the loader about the checkpoints it reads.

Each port module (clip, siglip, dinov2, mllama) declares one `FAMILY`; `sauce_jax.ports.registry.FAMILIES`
lists them, and `sauce_jax.loading.load_encoder` walks that tuple. Adding a plain ViT model
is one port module with its `FAMILY` plus one registry entry; the core does not change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sauce_jax.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class EncoderFamily:
    """One port's entry in the registry of encoder families."""

    model_type: str  # the port's own model_type, reported as `EncoderConfig.model_type`
    checkpoint_types: tuple[str, ...]  # checkpoint model_types whose vision tower this port reads
    # load(checkpoint_type, hf_config, tensors, *, dtype, attention_impl, origin) -> (model, prefix, ignored)
    load: Callable[..., tuple[Any, str, list[str]]]
    # (model config, input side) -> the preprocessing fields to use when the checkpoint saved no
    # image processor (`PreprocessConfig` fields, or `MllamaPreprocessConfig` ones for "mllama")
    preprocess_defaults: Callable[[Any, int], dict[str, Any]]
    # (model config, input side) -> T, the tokens of every hidden state
    num_tokens: Callable[[Any, int], int]
    # narrows `checkpoint_types` when two families share one (a LLaVA checkpoint's tower); None: any
    matches: Callable[[Mapping[str, Any]], bool] | None = None
    # True when the model resamples its positions to the grid its preprocessing makes (DINOv2):
    # the input side then comes from the preprocessing, not from the config's image_size
    input_size_from_preprocessing: bool = False
    # which core encoder runs the model: "vit" (`VisionEncoder`, one [B, H, W, C] image per row)
    # or "mllama" (`MllamaEncoder`, tiled structured batches)
    runner: str = "vit"

    def reads(self, hf_config: Mapping[str, Any]) -> bool:
        """Whether this family loads a checkpoint with this `config.json`."""
        if hf_config.get("model_type") not in self.checkpoint_types:
            return False
        return self.matches is None or bool(self.matches(hf_config))


def vision_prefix(tensors: Mapping[str, Any], prefixes: Sequence[str], anchor: str, what: str, origin: str) -> str:
    """The (longest) prefix under which a checkpoint stores its vision model: one of `prefixes`
    for which `prefix + anchor` is a tensor name. `what` names the model in the error."""
    found = [p for p in prefixes if p + anchor in tensors]
    if not found:
        raise CheckpointError(
            f"{origin}: no {what}: no tensor named '[prefix]{anchor}' for any known prefix {list(prefixes)}"
        )
    return max(found, key=len)
