"""Weight-update unlearning baselines of the paper's Table 2 (GA, GD, KL, PO), in PyTorch, for
any transformers LLaVA.

    data = UnlearnData(forget=..., retain=..., refusal=...)   # tokenized examples over cached tower features
    edited = unlearn(model, data, BaselineConfig(method="KL", lr=3e-4, steps=50))

`edited` is a plain `LlavaForConditionalGeneration` (LoRA merged), the input model untouched.
`.data` encodes examples for any LLaVA; ConceptWorld's forget / retain / refusal sets are made
on its side, by `sauce_jax.eval.conceptworld.baseline_data.build_data`.
"""

from .config import METHODS, BaselineConfig
from .data import UnlearnData, UnlearnSet
from .trainer import Unlearner, unlearn

__all__ = ["METHODS", "BaselineConfig", "UnlearnData", "UnlearnSet", "Unlearner", "unlearn"]
