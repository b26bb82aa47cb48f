"""The labelled-image benchmark's machinery (`sauce_jax.eval.image_benchmark`) and
`sauce-jax experiment fashion` end to end on a tiny random DINOv2 and synthetic idx files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sauce_jax import cli
from sauce_jax.errors import ConfigError
from sauce_jax.eval.image_benchmark import at_resolution, cached_hidden_states, interval

from test_fashion_mnist import write_split


def test_interval_is_a_stratified_bootstrap_of_the_macro_mean():
    assert interval([np.ones(5)]) == {"value": 1.0, "lo": 1.0, "hi": 1.0, "n": 5}
    assert interval([]) == {"value": None, "lo": None, "hi": None, "n": 0}
    # The macro mean weighs classes equally, whatever their sizes; an empty class is left out.
    both = interval([np.ones(10), np.zeros(1000), np.zeros(0)])
    assert both["value"] == 0.5 and both["lo"] == both["hi"] == 0.5 and both["n"] == 1010
    rng = np.random.default_rng(1)
    draws = [interval([rng.random(400) < 0.3], resamples=500, seed=s) for s in range(20)]
    assert sum(d["lo"] <= 0.3 <= d["hi"] for d in draws) >= 16  # a 95% interval covers the truth
    assert all(d["hi"] - d["lo"] < 0.12 for d in draws)


def test_at_resolution_and_the_order_kept_cache(tiny_dinov2, small_encoder, tmp_path, monkeypatch):
    import sauce_jax
    from sauce_jax.image_processor import preprocess

    encoder = at_resolution(sauce_jax.load_encoder(tiny_dinov2), 56)
    assert encoder.config.image_size == 56 and encoder.config.num_tokens == 1 + 4 * 4
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        at_resolution(encoder, 30)
    with pytest.raises(ConfigError, match="DINOv2"):
        at_resolution(small_encoder, 32)
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    got = cached_hidden_states(encoder, images, 1, tmp_path, encode_batch=4, chunk_images=4)  # 3 chunks
    want = np.asarray(encoder.hidden_state(preprocess(list(images), encoder), 1))
    assert got.shape == (10, 17, 32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # every image in its own row, in order
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["source"]["shuffle"] is False
    # A second call reads the cache: the encoder is not run again.
    monkeypatch.setattr(type(encoder), "hidden_state", lambda *a, **k: pytest.fail("encoded twice"))
    np.testing.assert_array_equal(cached_hidden_states(encoder, images, 1, tmp_path, encode_batch=4,
                                                       chunk_images=4), got)


def synthetic_fashion(folder, n_train: int = 60, n_test: int = 30):
    """Idx files of 10 classes told apart by where a bright square sits."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            r, c = divmod(int(label), 5)
            images[i, 2 + 12 * r : 12 + 12 * r, 1 + 5 * c : 6 + 5 * c] = 250
        write_split(folder, split, images, labels)


def test_experiment_fashion_cli_writes_every_figure_and_resumes(tiny_dinov2, tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    synthetic_fashion(data)
    argv = ["experiment", "fashion", "--out", str(out), "--encoder", str(tiny_dinov2), "--data-dir", str(data),
            "--train-images", "60", "--test-images", "30", "--image-size", "28", "--expansion", "2", "--epochs", "1",
            "-k", "4", "--random-draws", "3", "--bootstrap", "50", "--no-progress"]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["train_images"] == 60 and results["test_images"] == 30 and len(results["concepts"]) == 10
    assert results["image_size"] == 28 and results["config"]["mode"] == "delta"
    for r in results["concepts"].values():
        assert r["test_images"] == 3 and len(r["selected"]) == 4
        assert r["ua_random"]["n"] == r["ua"]["n"] == r["ua_no_contrast"]["n"]
        for key in ("recall_before", "ua", "ua_random", "ua_no_contrast", "ira", "ira_no_contrast"):
            v = r[key]
            assert v["value"] is None or 0.0 <= v["lo"] <= v["value"] <= v["hi"] <= 1.0, (key, v)
    assert "UA, no contrast" in capsys.readouterr().out and (out / "figure5.png").stat().st_size > 0
    # Resume: completed classes are read back, not recomputed; a lost class is redone.
    parts = sorted((out / "parts").glob("*.json"))
    assert len(parts) == 10
    stamps = {p.name: p.stat().st_mtime_ns for p in parts}
    parts[-1].unlink()
    (out / "results.json").unlink()
    assert cli.main(argv) == 0
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in parts[:-1]) and parts[-1].is_file()
    again = json.loads((out / "results.json").read_text())
    assert again["concepts"] == results["concepts"] and again["mean"] == results["mean"]
    # Another configuration in the same folder is refused in one line.
    assert cli.main(argv + ["--seed", "7"]) == 2
    assert "holds another run" in capsys.readouterr().err
