"""The registry of encoder families: every port the loader knows, in the order it asks them.

A family whose `matches` narrows a checkpoint type another family shares comes first (SigLIP
before CLIP: both read "llava", SigLIP only when the LLaVA's tower is a SigLIP one).
"""

from __future__ import annotations

from sauce_jax.ports import clip, dinov2, mllama, siglip
from sauce_jax.ports.family import EncoderFamily

FAMILIES: tuple[EncoderFamily, ...] = (siglip.FAMILY, clip.FAMILY, mllama.FAMILY, dinov2.FAMILY)


def supported_checkpoint_types() -> tuple[str, ...]:
    """Every checkpoint model_type some family reads, each once."""
    return tuple(dict.fromkeys(t for family in FAMILIES for t in family.checkpoint_types))
