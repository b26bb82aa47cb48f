"""`train_sae`: activations -> a trained SAE on disk, checkpointed, resumable, logged."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sauce_jax import sae as sae_lib
from sauce_jax.errors import ConfigError, InputError, SauceError
from sauce_jax.sae import SAE, SAEConfig
from sauce_jax.statistics import feature_statistics, plot_feature_statistics
from sauce_jax.train.activations import ArraySource, CachedSource, EncoderSource, batches
from sauce_jax.train.checkpoint import RunCheckpoints, check_resumable
from sauce_jax.train.config import TrainConfig
from sauce_jax.train.metrics import JsonlLog, TensorBoardLog
from sauce_jax.train.sharding import check_fits, device_memory_bytes, make_mesh, memory_plan, shard_state, state_shardings
from sauce_jax.train.step import global_batch, init_state, jit_train_step, make_optimizer


class TrainingDiverged(SauceError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def make_source(*, activations=None, encoder=None, images=None, layer=-2, token="last", cache="memory",
                cache_dir=None, cache_dtype="float32", chunk_images=1024, encode_batch=64, seed=0, num_threads=8,
                workers=0):
    """The activation source `train_sae` reads: an array, or images through an encoder (cached)."""
    index, count = jax.process_index(), jax.process_count()
    if activations is not None:
        return ArraySource(activations, seed=seed, process_index=index, process_count=count)
    if encoder is None or images is None:
        raise ConfigError("train_sae needs `activations`, or an `encoder` and `images`")
    inner = EncoderSource(encoder, images, layer=layer, token=token, chunk_images=chunk_images,
                          encode_batch=encode_batch, seed=seed, num_threads=num_threads,
                          workers=workers, process_index=index, process_count=count)
    if cache == "none":
        return inner
    if cache == "memory":
        return CachedSource(inner, dtype=cache_dtype)
    if cache == "disk":
        if cache_dir is None:
            raise ConfigError("cache='disk' needs cache_dir")
        return CachedSource(inner, cache_dir, dtype=cache_dtype)
    raise ConfigError(f"cache {cache!r} is not one of 'none', 'memory', 'disk'")


def _sample_for_median(source, n: int) -> np.ndarray:
    rows, got, index = [], 0, 0
    while got < n and index < source.num_chunks():
        chunk = source.chunk(0, index)[: n - got]
        rows.append(chunk)
        got += len(chunk)
        index += 1
    sample = np.concatenate(rows) if rows else np.zeros((0, source.d_in), np.float32)
    if len(sample) == 0:
        raise InputError("no activations to initialise the SAE from: every image is unreadable")
    return sample


def train_sae(out_dir: str | Path, *, source=None, sae_config: SAEConfig | None = None, expansion: int = 64,
              architecture: str = "standard", k: int | None = None, train_config: TrainConfig = TrainConfig(),
              resume: bool = False, progress: bool = True, metadata: dict[str, Any] | None = None,
              tensorboard: bool = False, memory_limit: int | None = None, **source_kwargs) -> SAE:
    """Train an SAE and write it, its checkpoints, logs and feature statistics to `out_dir`.

    Args:
      out_dir: run folder: `checkpoints/`, `log.jsonl`, `sae/` (SAELens format),
        `feature_stats.npz` and `feature_stats.png` (paper Figure 4).
      source: an activation source; or pass `make_source` keyword arguments (`activations=`,
        or `encoder=` + `images=` with `layer`, `token`, `cache`, ...).
      sae_config: the SAE; by default `expansion` x d_in features of `architecture` (k for
        topk/batchtopk). Its d_in must equal the activations' width.
      train_config: optimizer, schedule, batch, steps/epochs, checkpoint and log intervals.
      resume: continue from the latest checkpoint in `out_dir` (the configuration must match).
      tensorboard: also write the logged metrics as TensorBoard events to `out_dir/tensorboard`.
      memory_limit: bytes one device may use (default: what the device reports; none on CPU);
        a configuration whose memory plan exceeds it is refused before anything compiles.
    """
    cfg = train_config
    source = source or make_source(seed=cfg.seed, **source_kwargs)
    if sae_config is None:
        sae_config = SAEConfig(d_in=source.d_in, d_sae=expansion * source.d_in, architecture=architecture, k=k)
    if sae_config.d_in != source.d_in:
        raise InputError(f"SAE d_in={sae_config.d_in} differs from the activation width {source.d_in}")
    mesh = make_mesh(cfg.model_parallel)
    if cfg.batch_size % mesh.shape["data"]:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the {mesh.shape['data']} data-parallel "
                          "devices")
    if sae_config.d_sae % mesh.shape["model"]:
        raise ConfigError(f"d_sae={sae_config.d_sae} is not divisible by model_parallel={mesh.shape['model']}")
    plan = memory_plan(sae_config, cfg.batch_size, mesh, sparse=cfg.sparse_decode)
    if progress and jax.process_index() == 0:
        print(f"memory plan: {plan.describe()}")
    check_fits(plan, memory_limit if memory_limit is not None else device_memory_bytes())
    local_batch = cfg.batch_size // jax.process_count()
    total_steps = cfg.steps or max(1, math.floor(cfg.epochs * source.tokens_per_epoch() * jax.process_count()
                                                 / cfg.batch_size))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_base = {"sae_config": dataclasses.asdict(sae_config), "train_config": dataclasses.asdict(cfg),
                   "source": source.describe(), "total_steps": total_steps}
    optimizer = make_optimizer(cfg, total_steps)
    checkpoints = RunCheckpoints(out_dir / "checkpoints", keep=cfg.keep_checkpoints)
    latest = checkpoints.latest_step()
    if latest is not None and not resume:
        raise ConfigError(f"{str(out_dir)!r} already holds checkpoints (latest step {latest}); "
                          "pass resume=True (--resume) to continue, or choose a new folder")

    if resume and latest is not None:
        # Shapes only (nothing is allocated), laid out on this run's mesh, whatever mesh wrote
        # the checkpoint: Orbax restores each shard where the new layout wants it.
        shapes = jax.eval_shape(lambda: init_state(sae_lib.init_params(jax.random.key(0), sae_config), optimizer,
                                                   sae_config))
        abstract = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                                shapes, state_shardings(shapes, mesh))
        state, record = checkpoints.restore(abstract)
        check_resumable(record, record_base, allowed=TrainConfig.RESUMABLE_CHANGES)
        position = tuple(record["position"])
        start_step = int(record["step"])
    else:
        sample = _sample_for_median(source, cfg.geometric_median_samples)
        params = sae_lib.init_params(jax.random.key(cfg.seed), sae_config, sample)
        if jax.process_count() > 1:  # each process sampled its own shard: start from process 0's
            from jax.experimental import multihost_utils

            params = multihost_utils.broadcast_one_to_all(params)
        state = shard_state(init_state(params, optimizer, sae_config), mesh)
        position, start_step = (0, 0, 0), 0
    log = JsonlLog(out_dir / "log.jsonl", resume_step=start_step if resume and latest is not None else None)
    board = TensorBoardLog(out_dir / "tensorboard") if tensorboard and jax.process_index() == 0 else None

    step_fn = jit_train_step(mesh, state, sae_config=sae_config, cfg=cfg, optimizer=optimizer)
    stream = batches(source, local_batch, position)
    last_saved = start_step
    bar = tqdm(total=total_steps, initial=start_step, disable=not progress or jax.process_index() != 0,
               desc="train-sae", unit="step")
    started = time.perf_counter()

    def kept() -> str:
        if checkpoints.latest_step() is None and last_saved == 0:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint (step {last_saved}) is kept in {str(out_dir / 'checkpoints')!r}"

    def save(step, state, position):
        nonlocal last_saved
        finite = all(bool(jnp.all(jnp.isfinite(v))) for v in state.params.values())
        if not finite:
            raise TrainingDiverged(f"SAE params became NaN/Inf before step {step}; {kept()}")
        checkpoints.save(step, state, {**record_base, "step": step, "position": list(position)})
        last_saved = step

    try:
        for step in range(start_step, total_steps):
            local, position = next(stream)
            state, metrics = step_fn(state, global_batch(local, mesh))
            done = step + 1
            if done % cfg.log_every == 0 or done == total_steps:
                values = {name: float(v) for name, v in jax.device_get(metrics).items()}
                if not math.isfinite(values["loss"]):
                    raise TrainingDiverged(f"loss is {values['loss']} at step {done}; {kept()}")
                values.update(step=done, seconds=round(time.perf_counter() - started, 3))
                if jax.process_index() == 0:
                    log.write(values)
                if board is not None:
                    board.write(values)
                bar.set_postfix(mse=f"{values['mse']:.4g}", ev=f"{values['explained_variance']:.3f}",
                                l0=f"{values['l0']:.1f}", dead=f"{values['dead_fraction']:.2f}")
            if done % cfg.checkpoint_every == 0 and done != total_steps:
                save(done, state, position)
            bar.update(1)
        if last_saved != total_steps:
            save(total_steps, state, position)
    finally:
        bar.close()
        checkpoints.close()
        if board is not None:
            board.close()

    # Measured from the live arrays: how much of each parameter one device holds.
    shards = {name: list(value.addressable_shards[0].data.shape) for name, value in state.params.items()}
    params = jax.device_get(state.params)
    skipped = len(getattr(source, "skipped", ()))
    described = source.describe()
    # Where the activations came from, so selection later hooks the same layer and tokens.
    origin = {key: described[key] for key in ("encoder", "layer", "token") if key in described}
    sae = SAE(params=params, config=sae_config,
              metadata={**origin, **(metadata or {}), "source": described, "steps": total_steps,
                        "skipped_images": skipped, "mesh": dict(mesh.shape), "param_shard_shapes": shards,
                        # 0 for a fresh run; a resumed one ran only total_steps - resumed_from_step
                        "resumed_from_step": start_step})
    if jax.process_index() == 0:
        _write_outputs(out_dir, sae, source)
    return sae


def _write_outputs(out_dir: Path, sae: SAE, source) -> None:
    from sauce_jax.sae_io import save_sae

    fs, fmav, rows = feature_statistics(sae.params, sae.config,
                                        (source.chunk(0, i) for i in range(source.num_chunks())))
    np.savez(out_dir / "feature_stats.npz", fs=fs, fmav=fmav, rows=rows)
    plot_feature_statistics(fs, fmav, out_dir / "feature_stats.png")
    sae.metadata.update(dead_features=int((fs == 0).sum()), statistics_rows=int(rows))
    save_sae(sae, out_dir / "sae")
    (out_dir / "summary.json").write_text(json.dumps(sae.metadata, indent=1, default=str))
