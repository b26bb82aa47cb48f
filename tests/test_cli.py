"""The `sauce-jax` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sauce_jax import cli


def test_help_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "sauce_jax.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "info" in result.stdout and "selfcheck" in result.stdout


@pytest.mark.parametrize("command", ["info", "selfcheck"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: sauce-jax " + command in capsys.readouterr().out


def test_info_describes_a_checkpoint(small_clip_dir, capsys):
    assert cli.main(["info", str(small_clip_dir[0])]) == 0
    out = capsys.readouterr().out
    assert "jax" in out and "devices" in out
    assert "clip_vision_model" in out and "2 blocks, width 32" in out
    assert "safetensors:" in out


def test_info_on_a_bad_directory_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_selfcheck_passes(capsys):
    assert cli.main(["selfcheck"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok") == 2 and "FAIL" not in out


def test_selfcheck_fails_at_an_impossible_tolerance(capsys):
    assert cli.main(["selfcheck", "--tolerance", "1e-30"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_train_select_unlearn_from_the_command_line(small_clip_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    import sauce_jax

    rng = np.random.default_rng(0)
    for name, n in (("train", 12), ("pos", 4), ("neg", 4)):
        (tmp_path / name).mkdir()
        for i in range(n):
            image = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
            if name == "pos":
                image[8:28, 8:28] = (255, 0, 0)
            Image.fromarray(image).save(tmp_path / name / f"{i}.png")
    ckpt = str(small_clip_dir[0])
    assert cli.main(["train-sae", "--encoder", ckpt, "--images", str(tmp_path / "train"), "--out",
                     str(tmp_path / "run"), "--expansion", "2", "--token", "all", "--batch-size", "32",
                     "--epochs", "1", "--lr", "1e-3", "--no-progress"]) == 0
    assert cli.main(["select", "--sae", str(tmp_path / "run/sae"), "--encoder", ckpt, "--positives",
                     str(tmp_path / "pos"), "--negatives", str(tmp_path / "neg"), "--concept", "red", "-k", "3",
                     "--out", str(tmp_path / "red.json"), "--no-progress"]) == 0
    features = sauce_jax.FeatureSet.load(tmp_path / "red.json")
    assert features.k == 3 and features.layer == 1 and features.token == "all"
    assert cli.main(["unlearn", "--encoder", ckpt, "--sae", str(tmp_path / "run/sae"), "--features",
                     str(tmp_path / "red.json"), "--images", str(tmp_path / "pos"), "--mode", "delta",
                     "--out", str(tmp_path / "out.npz")]) == 0
    out = np.load(tmp_path / "out.npz")
    assert out["features"].shape == (4, 17, 32) and len(out["files"]) == 4
    # The written features are the unlearned encoder's.
    encoder = sauce_jax.load_encoder(ckpt)
    sae = sauce_jax.load_sae(tmp_path / "run/sae")
    images = [Image.open(f) for f in out["files"]]
    expected = sauce_jax.unlearn(encoder, sae, features, mode="delta").hidden_state(
        sauce_jax.preprocess(images, encoder), 1)
    np.testing.assert_allclose(out["features"], np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert cli.main(["select", "--sae", str(tmp_path / "run/sae"), "--encoder", ckpt, "--positives",
                     str(tmp_path / "nothing"), "--negatives", str(tmp_path / "neg"), "--concept", "red", "-k",
                     "3", "--out", str(tmp_path / "x.json"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
