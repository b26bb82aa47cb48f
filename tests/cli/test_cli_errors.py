"""Bad input on the command line: exit code 2, one line on stderr naming the culprit, no traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sauce_jax import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_clip_dir):
    """A tiny SAE of the small CLIP, its FeatureSet, images, and broken versions of each."""
    import sauce_jax

    root = tmp_path_factory.mktemp("bad_cli")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    (root / "empty").mkdir()
    (root / "not_images").mkdir()
    (root / "not_images" / "a.png").write_bytes(b"not a png at all")
    acts = rng.standard_normal((512, 32)).astype(np.float32)
    np.save(root / "acts.npy", acts)
    np.save(root / "acts_1d.npy", acts[:, 0])
    np.save(root / "acts_nan.npy", np.where(rng.random(acts.shape) < 0.01, np.nan, acts))
    (root / "acts_truncated.npy").write_bytes((root / "acts.npy").read_bytes()[:1000])
    (root / "acts_garbage.npy").write_bytes(b"\x00garbage" * 50)
    config = sauce_jax.TrainConfig(steps=2, batch_size=64, geometric_median_samples=64)
    sae = sauce_jax.train_sae(root / "run", activations=acts, train_config=config, expansion=2, progress=False)
    features = sauce_jax.FeatureSet(concept="red", feature_ids=(1, 2), scores=(0.5, 0.4), layer=-2,
                                    sae_fingerprint=sae.fingerprint())
    features.save(root / "red.json")
    (root / "broken.json").write_text("{not json")
    (root / "lacking.json").write_text(json.dumps({"concept": "red"}))
    return {"root": root, "ckpt": small_clip_dir[0], "sae": root / "run" / "sae"}


def _train(f, *extra):
    return ["train-sae", "--out", str(f["root"] / "out_train"), "--no-progress", *extra]


def _unlearn(f, features="red.json", images="images", *extra):
    return ["unlearn", "--encoder", str(f["ckpt"]), "--sae", str(f["sae"]), "--features",
            str(f["root"] / features), "--images", str(f["root"] / images), "--out", str(f["root"] / "out.npz"),
            *extra]


def _select(f, positives="images", negatives="images", *extra):
    return ["select", "--sae", str(f["sae"]), "--encoder", str(f["ckpt"]), "--positives", str(f["root"] / positives),
            "--negatives", str(f["root"] / negatives), "--concept", "red", "--out", str(f["root"] / "sel.json"),
            "--no-progress", *extra]


# (argument builder, a word of the expected message naming the culprit)
CASES = {
    "info-missing-dir": (lambda f: ["info", str(f["root"] / "nowhere")], "does not exist"),
    "info-empty-dir": (lambda f: ["info", str(f["root"] / "empty")], "empty"),
    "train-missing-activations": (lambda f: _train(f, "--activations", str(f["root"] / "none.npy")), "none.npy"),
    "train-garbage-activations": (lambda f: _train(f, "--activations", str(f["root"] / "acts_garbage.npy")),
                                  "acts_garbage.npy"),
    "train-truncated-activations": (lambda f: _train(f, "--activations", str(f["root"] / "acts_truncated.npy")),
                                    "acts_truncated.npy"),
    "train-1d-activations": (lambda f: _train(f, "--activations", str(f["root"] / "acts_1d.npy")), "shape"),
    "train-nan-activations": (lambda f: _train(f, "--activations", str(f["root"] / "acts_nan.npy")), "NaN"),
    "train-no-source": (lambda f: _train(f), "activations"),
    "train-zero-batch": (lambda f: _train(f, "--activations", str(f["root"] / "acts.npy"), "--batch-size", "0"),
                         "batch_size"),
    "train-negative-lr": (lambda f: _train(f, "--activations", str(f["root"] / "acts.npy"), "--lr", "-1"), "lr"),
    "train-zero-expansion": (lambda f: _train(f, "--activations", str(f["root"] / "acts.npy"), "--expansion",
                                              "0"), "d_sae"),
    "train-topk-without-k": (lambda f: _train(f, "--activations", str(f["root"] / "acts.npy"), "--architecture",
                                              "topk"), "k"),
    "train-empty-image-folder": (lambda f: _train(f, "--encoder", str(f["ckpt"]), "--images",
                                                  str(f["root"] / "empty")), "empty"),
    "select-missing-sae": (lambda f: ["select", "--sae", str(f["root"] / "nosae"), "--encoder", str(f["ckpt"]),
                                      "--positives", str(f["root"] / "images"), "--negatives",
                                      str(f["root"] / "images"), "--concept", "red", "-k", "2", "--out",
                                      str(f["root"] / "s.json"), "--no-progress"], "nosae"),
    "select-empty-positives": (lambda f: _select(f, "empty", "images", "-k", "2"), "empty"),
    "select-k-too-large": (lambda f: _select(f, "images", "images", "-k", "100000"), "k"),
    "select-k-zero": (lambda f: _select(f, "images", "images", "-k", "0"), "k"),
    "unlearn-missing-features": (lambda f: _unlearn(f, "nothing.json"), "nothing.json"),
    "unlearn-broken-features": (lambda f: _unlearn(f, "broken.json"), "broken.json"),
    "unlearn-features-lacking-keys": (lambda f: _unlearn(f, "lacking.json"), "lacking.json"),
    "unlearn-empty-image-folder": (lambda f: _unlearn(f, "red.json", "empty"), "empty"),
    "unlearn-unreadable-images": (lambda f: _unlearn(f, "red.json", "not_images"), "not_images"),
    "unlearn-nan-gamma": (lambda f: _unlearn(f, "red.json", "images", "--gamma", "nan"), "gamma"),
    "unlearn-layer-out-of-range": (lambda f: _unlearn(f, "red.json", "images", "--layer", "40"), "40"),
    "unlearn-zero-batch": (lambda f: _unlearn(f, "red.json", "images", "--batch-size", "0"), "batch"),
    "unlearn-replace-without-targets": (lambda f: _unlearn(f, "red.json", "images", "--mode", "replace"),
                                        "--targets-from"),
    "unlearn-targets-from-unreadable": (lambda f: _unlearn(f, "red.json", "images", "--mode", "replace",
                                                           "--targets-from", str(f["root"] / "not_images")),
                                        "not_images"),
    "unlearn-targets-from-with-delta": (lambda f: _unlearn(f, "red.json", "images", "--mode", "delta",
                                                           "--targets-from", str(f["root"] / "images")), "replace"),
    "unlearn-threshold-with-reconstruct": (lambda f: _unlearn(f, "red.json", "images", "--threshold", "0.5"),
                                           "threshold"),
    "unlearn-nan-threshold": (lambda f: _unlearn(f, "red.json", "images", "--mode", "gated", "--threshold", "nan"),
                              "threshold"),
    "unlearn-prompt-without-llava": (lambda f: _unlearn(f, "red.json", "images", "--prompt", "what is this"),
                                     "LLaVA"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_code_2(files, name, capsys):
    build, culprit = CASES[name]
    code = cli.main(build(files))  # an unexpected exception would escape here, traceback and all
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("sauce-jax "), err
    assert "Traceback" not in err
    assert culprit.lower() in lines[0].lower(), lines[0]
