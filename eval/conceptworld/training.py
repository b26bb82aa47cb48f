"""Training the ConceptWorld VLM: a staged, seeded, resumable recipe that fits 2 CPU cores.

Stage 1 trains the CLIP tower alone on dense labels: every patch token of the last hidden
state predicts the concepts of what covers it (the item's shape or emotion, color and
material; the scene on background), and the class token predicts the whole image's concepts.
Dense targets are what make a small ViT learn shapes and expressions in minutes rather than
hours, and they leave each concept readable per token, which is where SAUCE's SAE looks.
`tower_labels="image"` keeps only the class token's image-level labels, for a tower that is not
built for SAUCE (`towers.py`); `language_init` starts stage 2 from another model's projector
and language model, so that a new tower can be fitted with fewer language steps.
Stage 2 freezes the tower, caches its features once, and trains the projector and the
language model on single-turn examples (descriptions, balanced yes/no questions in both
languages, perception questions); it learns to describe first. Stage 3 continues on mostly
yes/no questions at half the learning rate, because binding a question's word to the image
is what a small language model learns last: yes/no accuracy stays at chance for the first few
thousand language steps and climbs only after that (3,000 steps in all left it at 50-57%;
14,000 reach 96-100%). Every stage checkpoints atomically and resumes where it stopped; a
finished stage is never rerun. About 70 minutes on 2 CPU cores, 8 on one GPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from sauce_jax.errors import ConfigError

from . import text as T
from . import vlm
from .render import render_with_masks
from .vlm import pixels_nchw, tower_features
from .world import CONCEPTS, generic_stream

INDEX = {c: i for i, c in enumerate(CONCEPTS)}
TOWER_LABELS = ("tokens", "image")  # what stage 1 supervises (`RecipeConfig.tower_labels`)


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """The staged recipe; defaults produce the shipped model."""

    seed: int = 0
    images: int = 16000  # rendered training images (both stages)
    val_images: int = 400
    tower_steps: int = 2000
    tower_batch: int = 64
    tower_lr: float = 1e-3
    lm_steps: int = 10000
    lm_batch: int = 32
    lm_lr: float = 1e-3
    focus_steps: int = 4000  # stage 3: mostly yes/no questions, half the learning rate
    checkpoint_every: int = 250
    workers: int = 2  # rendering processes
    # "tokens": stage 1 supervises every patch token and the class token (the shipped model);
    # "image": the class token's image-level labels only, so no concept is ever taught per token
    # at the layer the LLaVA (and SAUCE's SAE) reads.
    tower_labels: str = "tokens"
    # A ConceptWorld model folder ("shipped": the one in the package) whose projector and
    # language model start stage 2 (its tower is not used); "" starts them from scratch.
    language_init: str = ""

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if name in ("seed", "tower_labels", "language_init"):
                continue
            if not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"conceptworld recipe {name}={value!r} must be > 0")
        if self.tower_labels not in TOWER_LABELS:
            raise ConfigError(f"conceptworld recipe tower_labels={self.tower_labels!r} must be one of {TOWER_LABELS}")


# ----------------------------------------------------------------------------------- data

def _render_labels(spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, coverage = render_with_masks(spec)  # [S, S, 3], [n_items, S, S]
    patch = vlm.VISION["patch_size"]
    grid = image.shape[0] // patch
    per_token = coverage.reshape(len(spec.items), grid, patch, grid, patch).mean(axis=(2, 4)).reshape(len(spec.items), -1)
    tokens = np.zeros((grid * grid, len(CONCEPTS)), np.uint8)  # [T, C]
    for item, cover in zip(spec.items, per_token):
        for concept in item.concepts:
            tokens[cover > 0.25, INDEX[concept]] = 1
    tokens[per_token.sum(0) < 0.75, INDEX[spec.scene]] = 1  # background shows
    whole = np.zeros(len(CONCEPTS), np.uint8)
    whole[[INDEX[c] for c in spec.concepts]] = 1
    return image, tokens, whole


def render_dataset(specs, workers: int = 2) -> dict[str, np.ndarray]:
    """Images [N, S, S, 3] uint8 with dense token labels [N, T, C] and image labels [N, C]."""
    if workers > 1 and len(specs) > 64:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_render_labels, specs, chunksize=64))
    else:
        rows = [_render_labels(s) for s in specs]
    images, tokens, whole = (np.stack(part) for part in zip(*rows))
    return {"images": images, "tokens": tokens, "labels": whole, "n_items": np.array([len(s.items) for s in specs])}


def cached_dataset(path: Path, specs, workers: int) -> dict[str, np.ndarray]:
    """`render_dataset(specs)`, rendered once and kept at `path` (.npz, written atomically)."""
    if path.is_file():
        with np.load(path) as data:
            return dict(data)
    data = render_dataset(specs, workers)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return data


# ------------------------------------------------------------------------------ checkpoints

def save_checkpoint(path: Path, payload: dict) -> None:
    """`torch.save(payload)` to `path`, atomically."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def _load(path: Path, device: str | None = None) -> dict | None:
    import torch

    return torch.load(path, weights_only=False, map_location=device) if path.is_file() else None


def make_optimizer(params, lr: float, steps: int):
    """AdamW with 200 warm-up steps and a cosine decay to 5% of `lr`."""
    import torch

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * max(0.05, 0.5 * (1 + np.cos(np.pi * s / steps))))
    return opt, sched


def optimizer_step(loss, params, opt, sched) -> None:
    """One optimizer step on `loss`, gradients clipped to norm 1."""
    import torch

    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def resume_checkpoint(ckpt: Path, modules: dict, opt, sched) -> int:
    """Restore modules, optimizer and schedule from `ckpt`; the step to continue from (0: none)."""
    state = _load(ckpt)
    if state is None:
        return 0
    for key, module in modules.items():
        module.load_state_dict(state[key])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    return state["step"]


# ---------------------------------------------------------------------------------- stage 1

def _tower_heads(width: int):
    import torch

    return torch.nn.ModuleDict({"norm": torch.nn.LayerNorm(width), "tokens": torch.nn.Linear(width, len(CONCEPTS)),
                                "image": torch.nn.Linear(width, len(CONCEPTS))})


def train_tower(model, data: dict, config: RecipeConfig, ckpt: Path, log) -> None:
    import torch

    tower = model.model.vision_tower
    device = next(tower.parameters()).device
    heads = _tower_heads(tower.config.hidden_size).to(device)
    params = list(tower.parameters()) + list(heads.parameters())
    opt, sched = make_optimizer(params, config.tower_lr, config.tower_steps)
    start = resume_checkpoint(ckpt, {"tower": tower, "heads": heads}, opt, sched)
    if start:
        log(f"tower: resumed at step {start}")
    tower.train()
    n = len(data["images"])
    bce = torch.nn.BCEWithLogitsLoss()
    t0 = time.time()
    for step in range(start, config.tower_steps):
        rng = np.random.default_rng([config.seed, 1, step])
        idx = rng.integers(n, size=config.tower_batch)
        flip = rng.random() < 0.5  # mirror the whole batch: labels per token mirror with it
        images, tokens = data["images"][idx], data["tokens"][idx]
        if flip:
            images = images[:, :, ::-1]
            g = int(np.sqrt(tokens.shape[1]))
            tokens = tokens.reshape(len(idx), g, g, -1)[:, :, ::-1].reshape(tokens.shape)
        out = tower(pixel_values=pixels_nchw(images).to(device), output_hidden_states=True)
        hidden = heads["norm"](out.hidden_states[-1])  # [B, 1 + T, D]
        loss = bce(heads["image"](hidden[:, 0]), torch.from_numpy(data["labels"][idx]).float().to(device))
        if config.tower_labels == "tokens":
            loss = loss + bce(heads["tokens"](hidden[:, 1:]), torch.from_numpy(tokens).float().to(device))
        optimizer_step(loss, params, opt, sched)
        if (step + 1) % 50 == 0:
            log(f"tower step {step + 1}/{config.tower_steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.tower_steps:
            save_checkpoint(ckpt, {"tower": tower.state_dict(), "heads": heads.state_dict(),
                                   "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step + 1})
    tower.eval()


# ---------------------------------------------------------------------------------- stage 2

def encode_example(tokenizer, example: T.Example) -> tuple[list[int], int]:
    """Token ids of prompt + answer + EOS with the image tokens expanded, and where the answer starts."""
    prompt_text = T.prompt(example.prompt).replace(T.IMAGE_TOKEN, T.IMAGE_TOKEN * vlm.num_image_tokens())
    prompt_ids = tokenizer(prompt_text)["input_ids"]
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids + [tokenizer.convert_tokens_to_ids(T.EOS)], len(prompt_ids)


def example_batch(tokenizer, examples: list[T.Example]):
    """Right-padded ids, labels (-100 outside each answer) and attention mask [B, S] of `examples`."""
    import torch

    rows = [encode_example(tokenizer, e) for e in examples]
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.convert_tokens_to_ids("<pad>")
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (row, answer_at) in enumerate(rows):  # right-padded for training
        ids[r, : len(row)] = torch.tensor(row)
        labels[r, answer_at : len(row)] = torch.tensor(row[answer_at:])
        mask[r, : len(row)] = 1
    return ids, labels, mask


def embed_with_features(model, ids, features):
    """Token embeddings with the projected image features in the image-token positions (with grad)."""

    embeds = model.get_input_embeddings()(ids)  # [B, S, D]
    projected = model.model.multi_modal_projector(features.float())  # [B, T, D]
    mask = (ids == model.config.image_token_id)[..., None].expand_as(embeds)
    return embeds.masked_scatter(mask, projected.to(embeds.dtype)) if projected.numel() else embeds


def train_language(model, tokenizer, specs, features, config: RecipeConfig, ckpt: Path, log, *, steps: int,
                   lr: float, mix: tuple[float, float], stage: int = 2) -> None:
    """Projector + language model on cached tower features; `mix` = (share of descriptions,
    share of yes/no questions), the rest perception questions."""
    import torch

    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for name, p in model.named_parameters() if not name.startswith("model.vision_tower")]
    opt, sched = make_optimizer(params, lr, steps)
    start = resume_checkpoint(ckpt, {"model": model}, opt, sched)
    if start:
        log(f"stage {stage}: resumed at step {start}")
    model.train()
    device = features.device
    t0 = time.time()
    for step in range(start, steps):
        rng = np.random.default_rng([config.seed, stage, step])
        idx = rng.integers(len(specs), size=config.lm_batch)
        examples = [T.random_example(specs[i], rng, *mix) for i in idx]
        ids, labels, mask = (t.to(device) for t in example_batch(tokenizer, examples))
        loss = model(inputs_embeds=embed_with_features(model, ids, features[torch.from_numpy(idx).to(device)]),
                     attention_mask=mask, labels=labels).loss
        optimizer_step(loss, params, opt, sched)
        if (step + 1) % 50 == 0:
            log(f"stage {stage} step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(),
                                   "sched": sched.state_dict(), "step": step + 1})
    model.eval()


def train_language_stages(model, tokenizer, specs, images: np.ndarray, config: RecipeConfig, out: Path, log,
                          device: str) -> None:
    """Stages 2 and 3 on the frozen tower's cached features (`out/language.pt`, `out/focus.pt`);
    a finished stage is loaded, not rerun, and features are cached only if a stage must run."""
    stages = [("language.pt", config.lm_steps, config.lm_lr, (0.2, 0.7), 2),
              ("focus.pt", config.focus_steps, config.lm_lr / 2, (0.1, 0.85), 3)]
    features = None
    for name, steps, lr, mix, stage in stages:
        state = _load(out / name, device)
        if state is not None and state["step"] >= steps:
            model.load_state_dict(state["model"])
            continue
        if features is None:
            log("caching tower features")
            features = tower_features(model, images)
        train_language(model, tokenizer, specs, features, config, out / name, log, steps=steps, lr=lr, mix=mix,
                       stage=stage)


# ------------------------------------------------------------------------------------ driver

def init_language(model, model_dir) -> None:
    """Copy the projector and language model of the ConceptWorld model at `model_dir` into
    `model`, keeping `model`'s tower: a warm start for stage 2 on another tower's features."""
    source, _ = vlm.load(None if model_dir == "shipped" else model_dir)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("model.vision_tower")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("model.vision_tower") for k in missing):
        raise ConfigError(f"the model at {model_dir} does not match this recipe's architecture")


def train(out_dir: str | Path, config: RecipeConfig | None = None, *, threads: int | None = None,
          device: str = "cpu", log=print) -> Path:
    """Run (or resume) the whole recipe; the trained checkpoint is written to `out_dir/model`.

    `threads`: PyTorch's intra-op threads. On a machine shared with other jobs, 1 is often
    faster than oversubscribed cores (threads waiting at barriers for a descheduled peer).
    `device`: where PyTorch trains ("cuda" on a GPU); checkpoints are written for any device.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    config = config or RecipeConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "recipe.json"

    def results_of(fields: dict) -> dict:  # how many rendering processes never changes the result
        fields = {**dataclasses.asdict(RecipeConfig()), **fields}  # a field added later reads as its default
        return {k: v for k, v in fields.items() if k != "workers"}

    if recipe.is_file() and results_of(json.loads(recipe.read_text())) != results_of(dataclasses.asdict(config)):
        raise ConfigError(f"{out} holds a run with another recipe ({recipe}); use a new folder")
    recipe.write_text(json.dumps(dataclasses.asdict(config), indent=1))
    t0 = time.time()
    specs = generic_stream(config.images, seed=config.seed, stream="vlm-train")
    log(f"rendering {config.images} training images")
    data = cached_dataset(out / "train_images.npz", specs, config.workers)
    tokenizer = vlm.make_tokenizer()
    processor = vlm.make_processor(tokenizer)
    model = vlm.make_model(tokenizer, seed=config.seed).to(device)
    torch.manual_seed(config.seed)
    if (out / "language.pt").is_file():  # stage 2's checkpoints hold the whole model, trained tower included
        model.load_state_dict(_load(out / "language.pt", device)["model"])
    else:
        train_tower(model, data, config, out / "tower.pt", log)
        if config.language_init:
            init_language(model, config.language_init)
    train_language_stages(model, tokenizer, specs, data["images"], config, out, log, device)
    from .evaluate import clean_accuracy

    val_specs = generic_stream(config.val_images, seed=config.seed, stream="vlm-val")
    summary = clean_accuracy(model, tokenizer, val_specs)
    summary["train_seconds"] = round(time.time() - t0, 1)
    summary["recipe"] = dataclasses.asdict(config)
    log(json.dumps(summary, indent=1))
    target = vlm.save(model.cpu(), processor, out / "model")
    (target / "training.json").write_text(json.dumps(summary, indent=1))
    return target

