"""The baselines' one config: method, optimisation, LoRA; every bad value is a `ConfigError`."""

from __future__ import annotations

import dataclasses

from sauce_jax.errors import ConfigError

# GA: ascent on the forget NLL. GD: GA + descent on the retain NLL. KL: GA + KL(original || current)
# on the retain set's answer tokens. PO: descent on refusal answers to the forget prompts + retain NLL.
METHODS = ("GA", "GD", "KL", "PO")


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """One weight-update unlearning run.

    Attributes:
      method: one of `METHODS`.
      lr: AdamW learning rate, held constant (no schedule), so a run to 100 steps passes through
        exactly the model a run to 50 steps ends at: a grid over step counts costs one run.
      steps: optimizer steps.
      batch_size: examples per set per step (GD/KL/PO draw one forget and one retain batch).
      retain_weight: weight of the retain NLL (GD, PO).
      kl_weight: weight of the KL term (KL).
      max_grad_norm: gradients are clipped to this norm (GA's loss has no floor; clipping keeps
        a step from blowing the weights up at once).
      weight_decay: AdamW's.
      train_projector: also update the multimodal projector (the vision tower stays frozen).
      lora: train LoRA adapters on the language model's linear layers (peft) instead of every
        weight; merged into the returned model. For large checkpoints.
      lora_rank, lora_alpha, lora_dropout: the adapters' settings.
      seed: seeds the batch order and the adapters' initialisation.
      refusal: PO's target answer to every forget prompt.
    """

    method: str = "GA"
    lr: float = 1e-4
    steps: int = 50
    batch_size: int = 16
    retain_weight: float = 1.0
    kl_weight: float = 1.0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    train_projector: bool = True
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    seed: int = 0
    refusal: str = "I don't know."

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"baseline method={self.method!r} is not one of {METHODS}")
        positive = {"lr": self.lr, "max_grad_norm": self.max_grad_norm, "lora_alpha": self.lora_alpha}
        for name, value in positive.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"baseline {name}={value!r} must be a number > 0")
        for name in ("steps", "batch_size", "lora_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"baseline {name}={value!r} must be an integer >= 1")
        for name in ("retain_weight", "kl_weight", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"baseline {name}={value!r} must be a number >= 0")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"baseline lora_dropout={self.lora_dropout!r} must be in [0, 1)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"baseline seed={self.seed!r} must be an integer")
        if not isinstance(self.refusal, str) or not self.refusal.strip():
            raise ConfigError(f"baseline refusal={self.refusal!r} must be a non-empty answer")

    @property
    def uses_retain(self) -> bool:
        return self.method in ("GD", "KL", "PO")
