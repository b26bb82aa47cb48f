"""Several SAEs from one pass of the images (`train_saes`, `train-sae --layer A B ...`): each
setting equals its own single run, the images go through the tower once, and every setting
resumes from its own checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sauce_jax
from sauce_jax.cli import main
from sauce_jax.train import TrainConfig, sweep_settings, train_sae, train_saes
from sauce_jax.train.activations import EncoderSource

LAYERS = (-1, -2)
TRAIN = TrainConfig(lr=3e-3, batch_size=64, epochs=2, log_every=5, checkpoint_every=10)
SOURCE = dict(token="all", chunk_images=8, encode_batch=8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture
def encoder_passes(monkeypatch) -> list[tuple[int, ...]]:
    """The layers of every chunk the encoder computed, in order."""
    calls = []
    original = EncoderSource.chunks

    def counting(self, epoch, index, layers):
        calls.append(tuple(layers))
        return original(self, epoch, index, layers)

    monkeypatch.setattr(EncoderSource, "chunks", counting)
    return calls


def settings(encoder):
    """Two sizes on one layer (they share its activations) and another k on a second layer."""
    d_in = encoder.config.hidden_size
    return (sweep_settings(d_in, [-1], [2, 4], [3], architecture="topk")
            + sweep_settings(d_in, [-2], [2], [2], architecture="topk"))


def test_sweep_settings_name_every_combination():
    names = [s.name for s in sweep_settings(8, [-2, -4], [2, 4], [3, 5], architecture="topk")]
    assert names == [f"layer{l}_x{e}_k{k}" for l in (-2, -4) for e in (2, 4) for k in (3, 5)]
    assert sweep_settings(8, [("global", 7)], [2], [3], architecture="topk")[0].name == "layerglobal7_x2_k3"
    standard = sweep_settings(8, [3, 3], [2], None)
    assert [(s.name, s.sae_config.d_sae, s.sae_config.k) for s in standard] == [("layer3_x2", 16, None)]


def params_of(run_dir: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in sauce_jax.load_sae(run_dir / "sae").params.items()}


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory, small_encoder, images) -> Path:
    """Each setting trained alone, as `train-sae` with one layer does it."""
    root = tmp_path_factory.mktemp("single")
    for setting in settings(small_encoder):
        train_sae(root / setting.name, encoder=small_encoder, images=images, layer=setting.layer,
                  sae_config=setting.sae_config, train_config=TRAIN, progress=False, **SOURCE)
    return root


def assert_equal_to_single(run_root: Path, single_root: Path, names) -> None:
    for name in names:
        ours, alone = params_of(run_root / name), params_of(single_root / name)
        for key in alone:
            np.testing.assert_array_equal(ours[key], alone[key], err_msg=f"{name}: {key}")
        assert losses(run_root / name) == losses(single_root / name), name


def test_one_pass_trains_every_setting_as_its_single_run(tmp_path, small_encoder, images, single_runs,
                                                         encoder_passes):
    chosen = settings(small_encoder)
    assert [s.name for s in chosen] == ["layer-1_x2_k3", "layer-1_x4_k3", "layer-2_x2_k2"]
    trained = train_saes(tmp_path, chosen, encoder=small_encoder, images=images, train_config=TRAIN,
                         progress=False, **SOURCE)
    # 24 images in chunks of 8: three encoder passes for the three SAEs, each keeping both layers
    assert encoder_passes == [tuple(small_encoder.layer_index(l) for l in LAYERS)] * 3
    assert_equal_to_single(tmp_path, single_runs, trained)
    for setting in chosen:
        sae = trained[setting.name]
        assert sae.config == setting.sae_config
        assert sae.metadata["layer"] == small_encoder.layer_index(setting.layer)
        assert (tmp_path / setting.name / "feature_stats.npz").is_file()


def test_each_setting_resumes_from_its_own_checkpoint(tmp_path, small_encoder, images, single_runs, monkeypatch):
    import sauce_jax.train.loop as loop

    original, seen = loop.global_batch, []

    def interrupting(local, mesh):
        seen.append(1)
        if len(seen) == 3 * 11 + 2:  # every setting has checkpoint 10; the first has finished step 12
            raise KeyboardInterrupt
        return original(local, mesh)

    monkeypatch.setattr(loop, "global_batch", interrupting)
    chosen = settings(small_encoder)
    with pytest.raises(KeyboardInterrupt):
        train_saes(tmp_path, chosen, encoder=small_encoder, images=images, train_config=TRAIN, progress=False,
                   **SOURCE)
    monkeypatch.setattr(loop, "global_batch", original)
    # one setting lost its checkpoints: it starts over while the others continue from step 10
    shutil.rmtree(tmp_path / chosen[1].name / "checkpoints")
    with pytest.raises(sauce_jax.ConfigError, match="resume"):
        train_saes(tmp_path, chosen, encoder=small_encoder, images=images, train_config=TRAIN, progress=False,
                   **SOURCE)
    train_saes(tmp_path, chosen, encoder=small_encoder, images=images, train_config=TRAIN, progress=False,
               resume=True, **SOURCE)
    resumed = {s.name: json.loads((tmp_path / s.name / "summary.json").read_text())["resumed_from_step"]
               for s in chosen}
    assert resumed == {chosen[0].name: 12, chosen[1].name: 0, chosen[2].name: 10}
    assert_equal_to_single(tmp_path, single_runs, resumed)


def test_train_sae_command_sweeps_layers_and_sizes(tmp_path, small_clip_dir, images, capsys, monkeypatch):
    """The command builds the settings and hands them to train_saes (trained for real above)."""
    import sauce_jax.train as train

    handed = {}

    def fake_train_saes(out, chosen, **kwargs):
        handed.update(out=out, names=[s.name for s in chosen], ks=[s.sae_config.k for s in chosen], **kwargs)
        return {}

    monkeypatch.setattr(train, "train_saes", fake_train_saes)
    base = ["train-sae", "--encoder", str(small_clip_dir[0]), "--images", str(images), "--token", "all",
            "--architecture", "topk", "--steps", "3", "--no-progress", "--out", str(tmp_path)]
    assert main(base + ["--layer", "-1", "-2", "--expansion", "2", "--k", "2", "3", "--resume"]) == 0
    assert handed["names"] == ["layer-1_x2_k2", "layer-1_x2_k3", "layer-2_x2_k2", "layer-2_x2_k3"]
    assert handed["ks"] == [2, 3, 2, 3] and handed["resume"] and handed["train_config"].steps == 3
    assert handed["token"] == "all" and "layer" not in handed
    np.save(tmp_path / "acts.npy", np.zeros((8, 32), np.float32))
    assert main(["train-sae", "--activations", str(tmp_path / "acts.npy"), "--layer", "-1", "-2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "need --encoder and --images" in capsys.readouterr().err


def test_a_diverging_setting_stops_alone(tmp_path, small_encoder, images, monkeypatch):
    import sauce_jax.train.loop as loop

    chosen = settings(small_encoder)[:2]
    original = loop._Run.advance

    def advance(self):
        if self.out_dir.name == chosen[0].name and self.step == 2:
            raise loop.TrainingDiverged("loss is nan at step 3")
        original(self)

    monkeypatch.setattr(loop._Run, "advance", advance)
    cfg = TrainConfig(lr=3e-3, batch_size=64, steps=4, log_every=1, checkpoint_every=2)
    with pytest.raises(loop.TrainingDiverged, match=r"layer-1_x2_k3: loss is nan.*finished: \['layer-1_x4_k3'\]"):
        train_saes(tmp_path, chosen, encoder=small_encoder, images=images, train_config=cfg, progress=False,
                   **SOURCE)
    assert (tmp_path / chosen[1].name / "sae" / "cfg.json").is_file()  # the other setting finished
    assert not (tmp_path / chosen[0].name / "sae").exists()
    assert sorted(p.name for p in (tmp_path / chosen[0].name / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
