"""`sauce-jax unlearn --mode gated|replace`: the written hidden states are `unlearn`'s, with
the targets computed from `--targets-from`'s images."""

from __future__ import annotations

import jax
import numpy as np
from PIL import Image

import sauce_jax
from sauce_jax import cli
from sauce_jax.scoring import image_activations, replacement_targets


def test_unlearn_gated_and_replace(small_clip_dir, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("images", "neg"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    ckpt = str(small_clip_dir[0])
    encoder = sauce_jax.load_encoder(ckpt)
    config = sauce_jax.SAEConfig(d_in=encoder.config.hidden_size, d_sae=64)
    params = sauce_jax.sae.init_params(jax.random.key(0), config)
    params["b_enc"] = params["b_enc"] + 0.05
    sae = sauce_jax.SAE(params, config)
    sauce_jax.save_sae(sae, tmp_path / "sae")
    sae = sauce_jax.load_sae(tmp_path / "sae")
    fs = sauce_jax.FeatureSet("red", (3, 7, 11), (1.0, 0.5, 0.25), layer=1, sae_fingerprint=sae.fingerprint(),
                              gamma=-1.0)
    fs.save(tmp_path / "red.json")
    images = [Image.open(tmp_path / "images" / f"{i}.png") for i in range(3)]
    pixels = sauce_jax.preprocess(images, encoder)
    z_neg = image_activations(sae, encoder, tmp_path / "neg", layer=1, token="all", progress=False)
    targets = replacement_targets(z_neg, np.array(fs.feature_ids))
    for mode, extra in (("gated", {}), ("replace", {"targets": targets})):
        argv = ["unlearn", "--encoder", ckpt, "--sae", str(tmp_path / "sae"), "--features", str(tmp_path / "red.json"),
                "--images", str(tmp_path / "images"), "--mode", mode, "--threshold", "0.05",
                "--out", str(tmp_path / f"{mode}.npz")]
        if mode == "replace":
            argv += ["--targets-from", str(tmp_path / "neg")]
        assert cli.main(argv) == 0
        out = np.load(tmp_path / f"{mode}.npz")
        assert [str(f).rsplit("/", 1)[-1] for f in out["files"]] == ["0.png", "1.png", "2.png"]
        expected = sauce_jax.unlearn(encoder, sae, fs, mode=mode, threshold=0.05, **extra).hidden_state(pixels, 1)
        np.testing.assert_allclose(out["features"], np.asarray(expected), rtol=1e-5, atol=1e-5)
        assert not np.allclose(out["features"], np.asarray(encoder.hidden_state(pixels, 1)), atol=1e-4)


def test_export_replace_with_targets_from(small_clip_dir, tmp_path, capsys):
    """`export --mode replace --targets-from DIR` stores the folder's mean activations as the
    exported model's targets; without --targets-from it is a one-line error."""
    import transformers

    rng = np.random.default_rng(1)
    (tmp_path / "neg").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "neg" / f"{i}.png")
    ckpt = str(small_clip_dir[0])
    encoder = sauce_jax.load_encoder(ckpt)
    config = sauce_jax.SAEConfig(d_in=encoder.config.hidden_size, d_sae=64)
    sae = sauce_jax.SAE(sauce_jax.sae.init_params(jax.random.key(2), config), config)
    sauce_jax.save_sae(sae, tmp_path / "sae")
    sae = sauce_jax.load_sae(tmp_path / "sae")
    fs = sauce_jax.FeatureSet("red", (5, 2), (1.0, 0.5), layer=1, sae_fingerprint=sae.fingerprint())
    fs.save(tmp_path / "red.json")
    argv = ["export", "--checkpoint", ckpt, "--sae", str(tmp_path / "sae"), "--features", str(tmp_path / "red.json"),
            "--mode", "replace", "--threshold", "0.1"]
    assert cli.main(argv + ["--out", str(tmp_path / "none")]) == 2
    assert "--targets-from" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert cli.main(argv + ["--targets-from", str(tmp_path / "neg"), "--out", str(tmp_path / "out")]) == 0
    model = transformers.AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True)
    z_neg = image_activations(sae, encoder, tmp_path / "neg", layer=1, token="all", progress=False)
    np.testing.assert_allclose(model.sauce.targets.numpy(), replacement_targets(z_neg, np.array([5, 2])), rtol=1e-6)
    assert float(model.sauce.gate_threshold) == np.float32(0.1)
