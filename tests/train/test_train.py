"""SAE training: recovery of planted features, streaming from images, caches, checkpoints,
exact resume, divergence and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sauce_jax
from sauce_jax import ConfigError, InputError
from sauce_jax.sae import SAEConfig
from synthetic import planted, recovered_fraction
from sauce_jax.train import TrainConfig, TrainingDiverged, make_source, train_sae
from sauce_jax.train.activations import CachedSource, EncoderSource, batches
from sauce_jax.tokens import select_tokens

REPO = Path(__file__).resolve().parents[1]


def logged(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("architecture, alpha, lr, epochs, want", [
    ("topk", 0.0, 4e-3, 5, 0.95),
    ("batchtopk", 0.0, 4e-3, 10, 0.9),
    ("standard", 0.3, 4e-3, 40, 0.95),
])
def test_recovers_planted_features(tmp_path, architecture, alpha, lr, epochs, want):
    x, dictionary = planted()
    cfg = SAEConfig(d_in=32, d_sae=128, architecture=architecture, k=None if architecture == "standard" else 3,
                    l1_coefficient=alpha)
    train_cfg = TrainConfig(lr=lr, batch_size=256, epochs=epochs, log_every=50, checkpoint_every=10**6,
                            normalize_decoder=True)
    sae = train_sae(tmp_path, activations=x, sae_config=cfg, train_config=train_cfg, progress=False)
    assert recovered_fraction(sae.params["W_dec"], dictionary) >= want
    log = logged(tmp_path)
    assert log[-1]["explained_variance"] > log[0]["explained_variance"] + 0.1
    assert log[-1]["explained_variance"] > 0.8
    # The run folder holds everything a user needs.
    for name in ("sae/cfg.json", "sae/sae_weights.safetensors", "feature_stats.npz", "feature_stats.png",
                 "summary.json"):
        assert (tmp_path / name).is_file(), name
    stats = np.load(tmp_path / "feature_stats.npz")
    assert stats["fs"].shape == (128,) and stats["rows"] == len(x)
    assert ((stats["fs"] >= 0) & (stats["fs"] <= 1)).all()
    reloaded = sauce_jax.load_sae(tmp_path / "sae")
    np.testing.assert_array_equal(np.asarray(reloaded.params["W_dec"]), np.asarray(sae.params["W_dec"]))


# -- streaming from images -------------------------------------------------------------------
def write_images(folder: Path, n: int, *, corrupt: int = 0, seed: int = 0, classes: int = 2) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / f"class_{i % classes}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i % 7, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    for j in range(corrupt):
        bad = folder / f"class_0/broken_{j}.jpg"
        bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    return paths


@pytest.mark.parametrize("token", ["last", "cls", "mean", "all", "random-3"])
def test_streamed_activations_equal_the_encoder(tmp_path, small_encoder, token):
    paths = write_images(tmp_path / "imgs", 10)
    source = EncoderSource(small_encoder, tmp_path / "imgs", layer=-2, token=token, chunk_images=4, encode_batch=3)
    assert source.num_chunks() == 3
    for chunk in range(3):
        acts = source.chunk(0, chunk)
        order = np.random.default_rng([0, 0]).permutation(10)[chunk * 4 : chunk * 4 + 4]
        images = [Image.open(sorted(paths)[i]) for i in order]
        hidden = small_encoder.hidden_state(sauce_jax.preprocess(images, small_encoder), -2)
        if token == "random-3":
            assert acts.shape == (len(order) * 3, 32)
            # Each streamed row is one of the patch tokens of one of the chunk's images.
            pool = np.asarray(hidden[:, 1:]).reshape(-1, 32)
            dist = np.abs(acts[:, None, :] - pool[None]).max(-1).min(-1)
            assert dist.max() < 1e-4
            continue
        expected = np.asarray(select_tokens(hidden, token))
        # Same rows, shuffled: compare as sorted sets of rows.
        key = lambda a: a[np.lexsort(a.T[::-1])]
        np.testing.assert_allclose(key(acts), key(expected), rtol=1e-5, atol=1e-5)


def test_train_from_images_with_disk_cache_and_corrupt_files(tmp_path, small_encoder, monkeypatch):
    write_images(tmp_path / "imgs", 24, corrupt=2)
    calls = []
    original = EncoderSource.chunk
    monkeypatch.setattr(EncoderSource, "chunk", lambda self, e, c: calls.append((e, c)) or original(self, e, c))
    kwargs = dict(encoder=small_encoder, images=tmp_path / "imgs", layer=-2, token="all", cache="disk",
                  cache_dir=tmp_path / "cache", chunk_images=8, encode_batch=8)
    cfg = TrainConfig(lr=2e-3, batch_size=64, epochs=3, log_every=5, checkpoint_every=10**6)
    sae = train_sae(tmp_path / "run", sae_config=SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4),
                    train_config=cfg, progress=False, **kwargs)
    # Epoch 0 encodes each chunk once; later epochs and the statistics read the cache.
    assert sorted(calls) == [(0, c) for c in range(4)]
    assert sae.metadata["skipped_images"] == 2
    manifest = json.loads((tmp_path / "cache/manifest.json").read_text())
    assert manifest["complete"] and len(manifest["chunks"]) == 4
    log = logged(tmp_path / "run")
    assert log[-1]["explained_variance"] > log[0]["explained_variance"]
    # A second run on the same cache folder never touches the encoder.
    calls.clear()
    train_sae(tmp_path / "run2", sae_config=SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4),
              train_config=cfg, progress=False, **kwargs)
    assert calls == []


def test_cache_made_for_other_settings_is_refused(tmp_path, small_encoder):
    write_images(tmp_path / "imgs", 6)
    CachedSource(EncoderSource(small_encoder, tmp_path / "imgs", token="cls", chunk_images=3), tmp_path / "c").chunk(0, 0)
    with pytest.raises(ConfigError, match="token"):
        CachedSource(EncoderSource(small_encoder, tmp_path / "imgs", token="last", chunk_images=3), tmp_path / "c")


def test_batches_resume_at_any_position():
    x, _ = planted(n=1000, d=8)
    source = make_source(activations=x)
    source.chunk_size = 300  # 4 uneven chunks
    stream = batches(source, 128, (0, 0, 0))
    first = [next(stream) for _ in range(20)]  # crosses chunk and epoch boundaries
    for i in (3, 7, 12):
        resumed = batches(source, 128, first[i][1])
        for j in range(i + 1, 20):
            batch, pos = next(resumed)
            np.testing.assert_array_equal(batch, first[j][0])
            assert pos == first[j][1]


# -- checkpoints and resume ------------------------------------------------------------------
def small_run(tmp, x, steps=60, **overrides):
    cfg = TrainConfig(**{**dict(lr=3e-3, batch_size=128, steps=steps, log_every=10, checkpoint_every=20), **overrides})
    return train_sae(tmp, activations=x, sae_config=SAEConfig(d_in=32, d_sae=96, architecture="topk", k=3),
                     train_config=cfg, progress=False)


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def check_resumed(run_dir: Path, whole_dir: Path, log_before: list[dict], resumed_from: int, total: int):
    """What tells a resume from a silent restart: the log up to the checkpoint is the one the
    interrupted process wrote (its wall-clock `seconds` included), the resumed process says it
    started at the checkpoint, and the log goes on exactly as an uninterrupted run's."""
    log = logged(run_dir)
    kept = [r for r in log_before if r["step"] <= resumed_from]
    assert kept and log[: len(kept)] == kept, "the log before the checkpoint was rewritten: the run restarted"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == resumed_from and summary["steps"] == total
    whole = logged(whole_dir)
    assert [r["step"] for r in log] == [r["step"] for r in whole]
    assert [r["loss"] for r in log] == [r["loss"] for r in whole]


def test_resume_after_interruption_is_bit_identical(tmp_path, monkeypatch):
    x, _ = planted(n=3000)
    whole = small_run(tmp_path / "whole", x)
    import sauce_jax.train.loop as loop

    original = loop.global_batch
    seen = []

    def counting(local, mesh):
        seen.append(1)
        if stop_at and len(seen) == stop_at:
            raise KeyboardInterrupt  # dies after the checkpoint at step 40
        return original(local, mesh)

    stop_at = 47
    monkeypatch.setattr(loop, "global_batch", counting)
    with pytest.raises(KeyboardInterrupt):
        small_run(tmp_path / "cut", x)
    assert checkpoint_steps(tmp_path / "cut") == [20, 40]
    log_before = logged(tmp_path / "cut")
    seen.clear()
    stop_at = None
    resumed = train_sae(tmp_path / "cut", activations=x,
                        sae_config=SAEConfig(d_in=32, d_sae=96, architecture="topk", k=3),
                        train_config=TrainConfig(lr=3e-3, batch_size=128, steps=60, log_every=10, checkpoint_every=20),
                        resume=True, progress=False)
    assert len(seen) == 60 - 40, "the resumed process ran more steps than were left"
    for name in whole.params:
        np.testing.assert_array_equal(np.asarray(resumed.params[name]), np.asarray(whole.params[name]))
    check_resumed(tmp_path / "cut", tmp_path / "whole", log_before, 40, 60)


def test_kill_9_then_resume_is_bit_identical(tmp_path):
    x, _ = planted(n=6000)
    np.save(tmp_path / "acts.npy", x)
    args = [sys.executable, "-m", "sauce_jax.cli", "train-sae", "--activations", str(tmp_path / "acts.npy"),
            "--expansion", "3", "--architecture", "topk", "--k", "3", "--lr", "3e-3", "--batch-size", "64",
            "--steps", "600", "--log-every", "20", "--checkpoint-every", "25", "--no-progress"]
    subprocess.run(args + ["--out", str(tmp_path / "whole")], check=True, capture_output=True)
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(
            s >= 150 for s in checkpoint_steps(tmp_path / "killed")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = checkpoint_steps(tmp_path / "killed")
    assert written and written[-1] >= 150, f"no checkpoint at step >= 150 before the kill: {written}"
    assert not (tmp_path / "killed" / "sae").exists(), "the run finished before it was killed"
    # the killed process may have torn its last log line
    lines = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    log_before = [json.loads(line) for line in lines[:-1]]
    subprocess.run(args + ["--out", str(tmp_path / "killed"), "--resume"], check=True, capture_output=True)
    a = sauce_jax.load_sae(tmp_path / "whole" / "sae")
    b = sauce_jax.load_sae(tmp_path / "killed" / "sae")
    for name in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[name]), np.asarray(b.params[name]))
    # Orbax may still have been finishing the newest checkpoint when the process died: the
    # resume starts from the newest complete one, which is one of those seen before the kill.
    resumed_from = json.loads((tmp_path / "killed" / "summary.json").read_text())["resumed_from_step"]
    assert resumed_from in written and resumed_from >= 150
    check_resumed(tmp_path / "killed", tmp_path / "whole", log_before, resumed_from, 600)


def test_existing_checkpoints_need_resume_and_the_same_config(tmp_path):
    x, _ = planted(n=2000)
    small_run(tmp_path, x, steps=20)
    with pytest.raises(ConfigError, match="resume"):
        small_run(tmp_path, x, steps=20)
    with pytest.raises(ConfigError, match="train_config.lr: 0.003 -> 0.001"):
        train_sae(tmp_path, activations=x, sae_config=SAEConfig(d_in=32, d_sae=96, architecture="topk", k=3),
                  train_config=TrainConfig(lr=1e-3, batch_size=128, steps=20, log_every=10, checkpoint_every=20),
                  resume=True, progress=False)


class PoisonedSource:
    """Clean activations for the first chunks, overflow after them."""

    def __init__(self, x, clean_chunks):
        from sauce_jax.train.activations import ArraySource

        self.inner, self.clean_chunks, self.d_in = ArraySource(x, chunk_size=200), clean_chunks, x.shape[1]

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def chunk(self, epoch, index):
        acts = self.inner.chunk(epoch, index)
        return acts if index < self.clean_chunks else np.full_like(acts, 1e30)


def test_divergence_stops_with_the_last_good_checkpoint(tmp_path):
    x, _ = planted(n=2000)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train_sae(tmp_path, source=PoisonedSource(x, clean_chunks=5), sae_config=SAEConfig(d_in=32, d_sae=64),
                  train_config=TrainConfig(batch_size=100, epochs=1, log_every=1, checkpoint_every=4,
                                           geometric_median_samples=500), progress=False)
    from sauce_jax.train.checkpoint import RunCheckpoints

    # Steps 1-10 saw clean data; the checkpoint at step 8 is intact and finite.
    assert RunCheckpoints(tmp_path / "checkpoints").latest_step() == 8
    assert all(np.isfinite(r["loss"]) for r in logged(tmp_path))


def test_bad_training_input(tmp_path, small_encoder):
    x, _ = planted(n=500)
    with pytest.raises(InputError, match="d_in=16 differs"):
        train_sae(tmp_path / "a", activations=x, sae_config=SAEConfig(d_in=16, d_sae=32), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        train_sae(tmp_path / "b", encoder=small_encoder, images=tmp_path / "empty", progress=False)
    with pytest.raises(InputError, match="does not exist"):
        train_sae(tmp_path / "c", encoder=small_encoder, images=tmp_path / "nope", progress=False)
    with pytest.raises(ConfigError, match="token choice"):
        write_images(tmp_path / "imgs", 2)
        train_sae(tmp_path / "d", encoder=small_encoder, images=tmp_path / "imgs", token="first", progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(InputError, match=r"\[N, d_in\]"):
        train_sae(tmp_path / "e", activations=np.zeros((0, 4), np.float32), progress=False)


def test_worker_processes_give_the_same_activations(tmp_path, small_encoder):
    write_images(tmp_path / "imgs", 9, corrupt=1)
    threads = EncoderSource(small_encoder, tmp_path / "imgs", token="mean", chunk_images=5, encode_batch=4)
    procs = EncoderSource(small_encoder, tmp_path / "imgs", token="mean", chunk_images=5, encode_batch=4, workers=2)
    for chunk in range(2):
        np.testing.assert_array_equal(procs.chunk(1, chunk), threads.chunk(1, chunk))
    assert procs.skipped == threads.skipped and len(procs.skipped) == 1


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of TensorBoard event files, read back with their TFRecord framing."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_events_hold_the_logged_metrics(tmp_path):
    x, _ = planted(n=2000)
    train_sae(tmp_path, activations=x, sae_config=SAEConfig(d_in=32, d_sae=64, architecture="topk", k=3),
              train_config=TrainConfig(batch_size=128, steps=20, log_every=10, checkpoint_every=100),
              progress=False, tensorboard=True)
    mse = read_scalars(tmp_path / "tensorboard")["train/mse"]
    assert [step for step, _ in mse] == [10, 20]
    np.testing.assert_allclose([v for _, v in mse], [r["mse"] for r in logged(tmp_path)], rtol=1e-6)


def test_the_sae_remembers_where_its_activations_came_from(tmp_path, small_encoder):
    write_images(tmp_path / "imgs", 8)
    sae = sauce_jax.train_sae(tmp_path / "run", encoder=small_encoder, images=tmp_path / "imgs", layer=1,
                              token="cls", expansion=2, train_config=sauce_jax.TrainConfig(batch_size=4, steps=3),
                              progress=False)
    saved = sauce_jax.load_sae(tmp_path / "run" / "sae")
    assert saved.metadata["layer"] == sae.metadata["layer"] == 1 and saved.metadata["token"] == "cls"
    features = sauce_jax.select_features(saved, small_encoder, tmp_path / "imgs", tmp_path / "imgs", k=2,
                                         progress=False)
    assert features.layer == 1 and features.token == "cls"


def test_a_configuration_that_cannot_fit_is_refused_before_compiling(tmp_path):
    from sauce_jax.train.sharding import make_mesh, memory_plan

    x, _ = planted(n=500)
    config = SAEConfig(d_in=32, d_sae=64)
    plan = memory_plan(config, 128, make_mesh())
    assert plan.params == 4 * (2 * 32 * 64 + 2 * 64 + 32) and plan.optimizer == 2 * plan.params
    with pytest.raises(ConfigError, match="does not fit"):
        train_sae(tmp_path, activations=x, sae_config=config, train_config=TrainConfig(batch_size=128, steps=2),
                  memory_limit=plan.total - 1, progress=False)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="model_parallel=3"):
        train_sae(tmp_path / "b", activations=x, sae_config=config,
                  train_config=TrainConfig(batch_size=128, steps=2, model_parallel=3), progress=False)


def test_sparse_decoding_trains_the_same_sae(tmp_path):
    x, dictionary = planted(n=3000)
    runs = {}
    for sparse in (False, True):
        runs[sparse] = train_sae(tmp_path / str(sparse), activations=x,
                                 sae_config=SAEConfig(d_in=32, d_sae=96, architecture="topk", k=3),
                                 train_config=TrainConfig(lr=3e-3, batch_size=128, steps=40, sparse_decode=sparse,
                                                          checkpoint_every=100), progress=False)
    for name in runs[False].params:
        np.testing.assert_allclose(runs[True].params[name], runs[False].params[name], rtol=1e-3, atol=1e-5)


def test_run_checkpoints_keep_restore_and_refuse_a_mismatch(tmp_path):
    import jax
    import jax.numpy as jnp

    from sauce_jax.errors import CheckpointError
    from sauce_jax.train.checkpoint import RunCheckpoints

    checkpoints = RunCheckpoints(directory=tmp_path / "ck", keep=1)
    assert checkpoints.directory.is_dir() and checkpoints.latest_step() is None
    state = {"w": jnp.arange(3.0)}
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        checkpoints.restore(jax.eval_shape(lambda: state))
    checkpoints.save(5, state, {"step": 5})
    checkpoints.save(7, {"w": state["w"] + 1}, {"step": 7})
    checkpoints.wait()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.isdigit()) == ["7"]  # keep=1
    restored, record = checkpoints.restore(jax.eval_shape(lambda: state))
    np.testing.assert_array_equal(np.asarray(restored["w"]), [1.0, 2.0, 3.0])
    assert record == {"step": 7}
    with pytest.raises(CheckpointError, match="cannot be restored"):
        checkpoints.restore({"v": jax.ShapeDtypeStruct((3,), jnp.float32)})
    checkpoints.close()


def test_check_resumable_sees_keys_on_either_side():
    from sauce_jax.train.checkpoint import check_resumable

    saved = {"sae_config": {"d_sae": 96}, "train_config": {"lr": 0.003}, "source": {"rows": 10}}
    check_resumable(saved, {**saved})
    with pytest.raises(ConfigError, match=r"train_config.warmup: None -> 5"):  # a field the checkpoint lacks
        check_resumable(saved, {**saved, "train_config": {"lr": 0.003, "warmup": 5}})
    with pytest.raises(ConfigError, match=r"source.rows: 10 -> None"):
        check_resumable(saved, {**saved, "source": {}})
    check_resumable(saved, {**saved, "train_config": {"lr": 0.001}}, allowed=("lr",))


def test_resume_in_an_empty_folder_starts_a_fresh_run(tmp_path):
    x, _ = planted(n=2000)
    fresh = small_run(tmp_path / "fresh", x, steps=20)
    resumed = train_sae(tmp_path / "resumed", activations=x,
                        sae_config=SAEConfig(d_in=32, d_sae=96, architecture="topk", k=3),
                        train_config=TrainConfig(lr=3e-3, batch_size=128, steps=20, log_every=10, checkpoint_every=20),
                        resume=True, progress=False)
    assert resumed.metadata["resumed_from_step"] == 0 and checkpoint_steps(tmp_path / "resumed") == [20]
    for name in fresh.params:
        np.testing.assert_array_equal(np.asarray(resumed.params[name]), np.asarray(fresh.params[name]))


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    x, _ = planted(n=2000)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        train_sae(tmp_path, source=PoisonedSource(x, clean_chunks=2), sae_config=SAEConfig(d_in=32, d_sae=64),
                  train_config=TrainConfig(batch_size=100, epochs=1, log_every=1, checkpoint_every=100,
                                           geometric_median_samples=200), progress=False)
