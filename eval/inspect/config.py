"""`InspectConfig`: how much a feature site shows (jax-free: the command line reads its defaults)."""

from __future__ import annotations

import dataclasses

from sauce_jax.errors import ConfigError
from sauce_jax.modes import PAPER_MODES as MODES

DEFAULT_PROMPT = "Describe all the objects in this image."


@dataclasses.dataclass(frozen=True)
class InspectConfig:
    """How much the site shows."""

    n_top: int = 8  # top-activating images (and false alarms) per feature
    n_before_after: int = 4  # images per FeatureSet in the before/after view
    batch_size: int = 32
    mode: str = "reconstruct"  # the intervention of the before/after view (eq. 6)
    prompt: str = DEFAULT_PROMPT  # asked of a LLaVA or Mllama checkpoint, clean and unlearned
    max_new_tokens: int = 24
    answers: bool = True  # with a LLaVA or Mllama checkpoint, show its answers (needs torch)

    def __post_init__(self):
        for name in ("n_top", "n_before_after", "batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"inspect {name}={value!r} must be an integer >= 1")
        if self.mode not in MODES:
            raise ConfigError(f"inspect mode {self.mode!r} is not one of {MODES}")
