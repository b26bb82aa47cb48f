"""LoRA adapters (peft) on a LLaVA's language model, and merging them back into plain weights."""

from __future__ import annotations

import copy

from sauce_jax.errors import ConfigError

# The linear layers of Llama/Vicuna/Mistral-style language models (LLaVA-1.5's is Vicuna).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_adapters(model, config):
    """Inject LoRA adapters (rank `config.lora_rank`) into the language model's linear layers of
    `model`, in place; returns the peft wrapper (needed to merge). Only adapters train."""
    try:
        import peft
    except ImportError as exc:  # the extra is optional: full fine-tuning needs no peft
        raise ConfigError("lora=True needs peft: pip install 'sauce-jax[lora]'") from exc
    # A regex, so the vision tower's own q_proj/k_proj/v_proj stay untouched.
    pattern = r".*language_model.*\.(" + "|".join(TARGETS) + r")$"
    lora = peft.LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=pattern, bias="none")
    wrapped = peft.get_peft_model(model, lora)
    if not any("lora_" in name for name, _ in model.named_parameters()):
        raise ConfigError(f"no language-model layer matched LoRA targets {TARGETS}")
    return wrapped


def merged_copy(wrapped):
    """A plain transformers model with the adapters merged into its weights (the wrapper keeps training)."""
    return copy.deepcopy(wrapped).merge_and_unload()
