"""Running a baseline: a trainable copy of the LLaVA (full or LoRA), steps on cached features,
and the unlearned model back as a plain transformers model."""

from __future__ import annotations

import copy

from sauce_jax.errors import ConfigError

from .config import BaselineConfig
from .data import UnlearnData, rng_indices
from .losses import nll, objective

_STREAMS = {"forget": 1, "retain": 2, "refusal": 3}


def _is_tower(name: str) -> bool:
    return "vision_tower" in name or "vision_model" in name


class Unlearner:
    """A baseline run that can be advanced in stages: `train_to(30)`, look at `model()`, then
    `train_to(100)` continues the same run (constant learning rate, batches drawn per step), so
    a grid over step counts costs one run. The input model is never modified."""

    def __init__(self, model, data: UnlearnData, config: BaselineConfig):
        import torch

        self.config, self.data, self.reference = config, data, model
        for name in ("retain", "refusal") if config.method == "PO" else ("retain",) if config.uses_retain else ():
            if getattr(data, name) is None or len(getattr(data, name)) == 0:
                raise ConfigError(f"baseline {config.method} needs a non-empty {name} set")
        torch.manual_seed(config.seed)
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.wrapped = None
        if config.lora:
            from .lora import add_adapters

            self.wrapped = add_adapters(self.model, config)  # adapters only require grad
        else:
            for name, p in self.model.named_parameters():
                if not _is_tower(name) and ("multi_modal_projector" not in name or config.train_projector):
                    p.requires_grad_(True)
        if config.lora and config.train_projector:
            for name, p in self.model.named_parameters():
                if "multi_modal_projector" in name and "lora_" not in name:
                    p.requires_grad_(True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("nothing to train: no parameter outside the vision tower requires grad")
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.log: list[dict] = []

    def _batches(self) -> dict:
        out = {}
        names = ["refusal", "retain"] if self.config.method == "PO" else \
            ["forget", "retain"] if self.config.uses_retain else ["forget"]
        for name in names:
            data = getattr(self.data, name)
            index = rng_indices(self.config.seed, self.step, _STREAMS[name], len(data),
                                min(self.config.batch_size, len(data)))
            out[name] = data.batch(index.tolist(), self.data.pad_id)
        return out

    def train_to(self, steps: int) -> Unlearner:
        """Advance the run to `steps` optimizer steps in all (never backwards)."""
        import torch

        if steps < self.step:
            raise ConfigError(f"the run is at step {self.step}; it cannot go back to {steps}")
        self.model.train()
        for _ in range(self.step, steps):
            loss, parts = objective(self.config.method, self.model, self.reference, self._batches(), self.config)
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
            self.optimizer.step()
            self.step += 1
            self.log.append({"step": self.step, **parts})
        self.model.eval()
        return self

    def model_now(self):
        """The unlearned model at the current step, as a plain transformers model in eval mode
        (for LoRA a merged copy; for full fine-tuning the trained model itself: `train_to`
        changes it further)."""
        if self.wrapped is not None:
            from .lora import merged_copy

            return merged_copy(self.wrapped).eval()
        return self.model.eval()

    def losses(self, batch_size: int = 64) -> dict[str, float]:
        """Mean answer NLL of the current model on each whole set (and of the original, `*_before`)."""
        return set_losses(self.model, self.data, batch_size)


def set_losses(model, data: UnlearnData, batch_size: int = 64) -> dict[str, float]:
    """Mean answer-token NLL of `model` on the forget, retain and refusal sets (examples weigh by tokens
    within a batch, batches equally: a measurement, not a training loss)."""
    import torch

    out = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for name in ("forget", "retain", "refusal"):
            data_set = getattr(data, name)
            if data_set is None or len(data_set) == 0:
                continue
            values = [nll(model, batch).item() for batch in data_set.batches(batch_size, data.pad_id)]
            out[name] = float(sum(values) / len(values))
    model.train(was_training)
    return out


def unlearn(model, data: UnlearnData, config: BaselineConfig):
    """Run `config.method` for `config.steps` steps on a copy of `model`; the unlearned model
    (plain transformers, eval mode; `model` itself is untouched)."""
    return Unlearner(model, data, config).train_to(config.steps).model_now()
