"""Sibling ConceptWorld VLMs for the transfer experiment (the paper's Table 4).

The paper applies an SAE trained on LLaVA-1.5-7B's vision tower, with its feature sets,
unchanged to two other models:
- **LLaVA-1.5-13B**: the same frozen CLIP tower, another (larger) language model trained from
  scratch on it. Here: `language_sibling`, the shipped tower with a wider and deeper Llama
  (`SIBLING_TEXT`), its projector and language model trained by the recipe's stages 2 and 3
  under another seed.
- **LLaVA-1.6**: a tower that differs, because 1.6 continued training with the tower unfrozen.
  Here: `tower_sibling`, the shipped model trained further end to end (tower, projector and
  language model together) under another seed, so its tower's activations drift while the
  model keeps answering.

Both are seeded and resumable (every stage checkpoints atomically, a finished stage is
skipped); each writes its model with `training.json` (clean accuracy, recipe, seconds).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from sauce_jax.errors import ConfigError

from . import text as T
from . import vlm
from .training import (
    RecipeConfig,
    cached_dataset,
    embed_with_features,
    example_batch,
    make_optimizer,
    optimizer_step,
    resume_checkpoint,
    save_checkpoint,
    train_language_stages,
)
from .vlm import pixels_nchw
from .world import generic_stream

SIBLING_TEXT = {"hidden_size": 192, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 6,
                "num_key_value_heads": 6}  # the "13B": wider and deeper than `vlm.TEXT`


@dataclasses.dataclass(frozen=True)
class SiblingConfig:
    """How the two siblings are trained. `language` is the recipe for the new language model
    (its `seed`, image count and language stages; its tower fields are unused: the tower is the
    shipped one); the `tower_*` fields set the end-to-end continuation of the tower sibling."""

    # Fewer language steps than the shipped recipe's 14,000: about 3 minutes on one GPU (hours on
    # 2 CPU cores). Descriptions and perception are learnt by then, yes/no only in part.
    language: RecipeConfig = dataclasses.field(
        default_factory=lambda: RecipeConfig(seed=1, images=8000, lm_steps=5000, focus_steps=1500))
    text: tuple[tuple[str, int], ...] = tuple(SIBLING_TEXT.items())
    tower_seed: int = 2
    tower_images: int = 4000
    tower_steps: int = 1000
    tower_lr: float = 1e-4
    tower_batch: int = 32
    val_images: int = 400  # clean accuracy of each sibling, in its training.json

    def __post_init__(self):
        for name in ("tower_images", "tower_steps", "tower_batch", "val_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sibling {name}={getattr(self, name)} must be >= 1")
        if not self.tower_lr > 0:
            raise ConfigError(f"sibling tower_lr={self.tower_lr} must be > 0")


def _finish(model, processor, out: Path, summary: dict) -> Path:
    target = vlm.save(model.cpu(), processor, out / "model")
    (target / "training.json").write_text(json.dumps(summary, indent=1))
    return target


def check_recipe(out: Path, fields: dict) -> None:
    """Record `fields` as `out/recipe.json`, refusing a folder that holds a sibling of another recipe."""
    path = out / "recipe.json"
    fields = json.loads(json.dumps(fields))
    if path.is_file() and json.loads(path.read_text()) != fields:
        raise ConfigError(f"{out} holds a sibling trained with another recipe ({path}); use a new folder")
    path.write_text(json.dumps(fields, indent=1))


def language_sibling(out_dir: str | Path, config: SiblingConfig | None = None, *, base_dir=None, device: str = "cpu",
                     log=print) -> Path:
    """The shipped (or `base_dir`'s) tower, frozen, under a new projector and a new, larger
    language model trained by the recipe's language stages. Returns the model folder."""
    import torch

    config = config or SiblingConfig()
    out = Path(out_dir)
    if (out / "model" / "training.json").is_file():
        return out / "model"
    out.mkdir(parents=True, exist_ok=True)
    recipe = config.language
    fields = {"language": dataclasses.asdict(recipe), "text": dict(config.text)}
    fields["language"].pop("workers")  # how many rendering processes never changes the result
    check_recipe(out, fields)
    t0 = time.time()
    base, processor = vlm.load(base_dir)
    specs = generic_stream(recipe.images, seed=recipe.seed, stream="vlm-train")
    log(f"rendering {recipe.images} training images")
    data = cached_dataset(out / "train_images.npz", specs, recipe.workers)
    model = vlm.make_model(processor.tokenizer, seed=recipe.seed, text=dict(config.text))
    model.model.vision_tower.load_state_dict(base.model.vision_tower.state_dict())
    model = model.to(device)
    torch.manual_seed(recipe.seed)
    train_language_stages(model, processor.tokenizer, specs, data["images"], recipe, out, log, device)
    return _finish(model, processor, out, _summary(model, processor, recipe.seed, config.val_images, t0, fields))


def train_end_to_end(model, tokenizer, specs, images: np.ndarray, ckpt: Path, log, *, seed: int, steps: int,
                     lr: float, batch: int, mix: tuple[float, float] = (0.1, 0.85)) -> None:
    """Tower, projector and language model together on the recipe's examples, the tower's
    features computed with gradients (LLaVA-1.6's unfrozen tower)."""

    params = list(model.parameters())
    opt, sched = make_optimizer(params, lr, steps)
    start = resume_checkpoint(ckpt, {"model": model}, opt, sched)
    if start:
        log(f"end to end: resumed at step {start}")
    model.train()
    device = next(model.parameters()).device
    layer = model.config.vision_feature_layer
    t0 = time.time()
    for step in range(start, steps):
        rng = np.random.default_rng([seed, 4, step])
        idx = rng.integers(len(specs), size=batch)
        examples = [T.random_example(specs[i], rng, *mix) for i in idx]
        ids, labels, mask = (t.to(device) for t in example_batch(tokenizer, examples))
        hidden = model.model.vision_tower(pixel_values=pixels_nchw(images[idx]).to(device),
                                          output_hidden_states=True).hidden_states[layer][:, 1:]  # [B, T, D]
        loss = model(inputs_embeds=embed_with_features(model, ids, hidden), attention_mask=mask, labels=labels).loss
        optimizer_step(loss, params, opt, sched)
        if (step + 1) % 50 == 0:
            log(f"end to end step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % 250 == 0 or step + 1 == steps:
            save_checkpoint(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(),
                                   "sched": sched.state_dict(), "step": step + 1})
    model.eval()


def tower_sibling(out_dir: str | Path, config: SiblingConfig | None = None, *, base_dir=None, device: str = "cpu",
                  workers: int = 2, log=print) -> Path:
    """The shipped (or `base_dir`'s) model trained further end to end, tower unfrozen."""
    config = config or SiblingConfig()
    out = Path(out_dir)
    if (out / "model" / "training.json").is_file():
        return out / "model"
    out.mkdir(parents=True, exist_ok=True)
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k.startswith("tower_")}
    check_recipe(out, fields)
    t0 = time.time()
    model, processor = vlm.load(base_dir)
    model = model.to(device)
    specs = generic_stream(config.tower_images, seed=config.tower_seed, stream="vlm-train")
    log(f"rendering {config.tower_images} training images")
    data = cached_dataset(out / "train_images.npz", specs, workers)
    train_end_to_end(model, processor.tokenizer, specs, data["images"], out / "end_to_end.pt", log,
                     seed=config.tower_seed, steps=config.tower_steps, lr=config.tower_lr, batch=config.tower_batch)
    return _finish(model, processor, out, _summary(model, processor, config.tower_seed, config.val_images, t0,
                                                   fields))


def _summary(model, processor, seed: int, n: int, t0: float, recipe: dict) -> dict:
    from .evaluate import clean_accuracy

    summary = clean_accuracy(model.cpu(), processor.tokenizer, generic_stream(n, seed=seed, stream="vlm-val"))
    summary["train_seconds"] = round(time.time() - t0, 1)
    summary["recipe"] = recipe
    return summary
