"""`train_sae`: activations -> a trained SAE on disk, checkpointed, resumable, logged."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sauce_jax import sae as sae_lib
from sauce_jax.errors import ConfigError, InputError, SauceError
from sauce_jax.sae import SAE, SAEConfig
from sauce_jax.statistics import core_metrics, plot_feature_statistics, sae_eval_record, write_sae_eval
from sauce_jax.train.activations import ArraySource, CachedSource, EncoderSource, SharedPass, batches
from sauce_jax.train.checkpoint import RunCheckpoints, check_resumable
from sauce_jax.train.config import TrainConfig
from sauce_jax.train.metrics import JsonlLog, TensorBoardLog
from sauce_jax.train.sharding import check_fits, combined_plan, device_memory_bytes, make_mesh, memory_plan, shard_state, state_shardings
from sauce_jax.train.step import global_batch, init_state, jit_train_step, make_optimizer


SAE_EVAL_FILENAME = "sae_eval.json"


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


class _Run:
    """One SAE's training run in its folder: set up (fresh or resumed), stepped, finished.

    `train_sae` drives one; `train_saes` drives several in lockstep over shared activations.
    """

    def __init__(self, out_dir: str | Path, *, source, sae_config: SAEConfig, cfg: TrainConfig, mesh, resume: bool,
                 progress: bool, metadata: dict[str, Any] | None, tensorboard: bool, bar: bool = True):
        self.source, self.sae_config, self.cfg, self.mesh = source, sae_config, cfg, mesh
        self.progress, self.metadata = progress, metadata
        self.total_steps = cfg.steps or max(1, math.floor(cfg.epochs * source.tokens_per_epoch() * jax.process_count()
                                                          / cfg.batch_size))
        self.out_dir = out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.record_base = {"sae_config": dataclasses.asdict(sae_config), "train_config": dataclasses.asdict(cfg),
                            "source": source.describe(), "total_steps": self.total_steps}
        optimizer = make_optimizer(cfg, self.total_steps)
        self.checkpoints = RunCheckpoints(out_dir / "checkpoints", keep=cfg.keep_checkpoints)
        self.board = None
        self.bar = None
        try:
            self._start(optimizer, resume)
            self.board = TensorBoardLog(out_dir / "tensorboard") if tensorboard and jax.process_index() == 0 else None
            self.step_fn = jit_train_step(mesh, self.state, sae_config=sae_config, cfg=cfg, optimizer=optimizer)
            self.stream = batches(source, cfg.batch_size // jax.process_count(), self.position)
            self.last_saved = self.start_step
            self.step = self.start_step
            self.bar = tqdm(total=self.total_steps, initial=self.start_step, unit="step", desc="train-sae",
                            disable=not (bar and progress) or jax.process_index() != 0)
            self.started = time.perf_counter()
        except BaseException:
            self.close()
            raise

    def _start(self, optimizer, resume: bool) -> None:
        sae_config, mesh, cfg = self.sae_config, self.mesh, self.cfg
        latest = self.checkpoints.latest_step()
        if latest is not None and not resume:
            raise ConfigError(f"{str(self.out_dir)!r} already holds checkpoints (latest step {latest}); "
                              "pass resume=True (--resume) to continue, or choose a new folder")
        self.resumed = resume and latest is not None
        if self.resumed:
            # Shapes only (nothing is allocated), laid out on this run's mesh, whatever mesh wrote
            # the checkpoint: Orbax restores each shard where the new layout wants it.
            shapes = jax.eval_shape(lambda: init_state(sae_lib.init_params(jax.random.key(0), sae_config), optimizer,
                                                       sae_config))
            abstract = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                                 sharding=sharding),
                                    shapes, state_shardings(shapes, mesh))
            self.state, record = self.checkpoints.restore(abstract)
            check_resumable(record, self.record_base, allowed=TrainConfig.RESUMABLE_CHANGES)
            self.position = tuple(record["position"])
            self.start_step = int(record["step"])
        else:
            sample = _sample_for_median(self.source, cfg.geometric_median_samples)
            params = sae_lib.init_params(jax.random.key(cfg.seed), sae_config, sample,
                                         decoder_norm=cfg.decoder_init_norm)
            if jax.process_count() > 1:  # each process sampled its own shard: start from process 0's
                from jax.experimental import multihost_utils

                params = multihost_utils.broadcast_one_to_all(params)
            self.state = shard_state(init_state(params, optimizer, sae_config), mesh)
            self.position, self.start_step = (0, 0, 0), 0
        self.log = JsonlLog(self.out_dir / "log.jsonl", resume_step=self.start_step if self.resumed else None)

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def _kept(self) -> str:
        if self.checkpoints.latest_step() is None and self.last_saved == 0:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint (step {self.last_saved}) is kept in {str(self.out_dir / 'checkpoints')!r}"

    def _save(self, step: int) -> None:
        finite = all(bool(jnp.all(jnp.isfinite(v))) for v in self.state.params.values())
        if not finite:
            raise TrainingDiverged(f"SAE params became NaN/Inf before step {step}; {self._kept()}")
        self.checkpoints.save(step, self.state, {**self.record_base, "step": step, "position": list(self.position)})
        self.last_saved = step

    def advance(self) -> None:
        """One train step: the next batch, the update, and the log line or checkpoint it is due.
        After the last step, the final checkpoint."""
        cfg = self.cfg
        local, self.position = next(self.stream)
        self.state, metrics = self.step_fn(self.state, global_batch(local, self.mesh))
        self.step = done = self.step + 1
        if done % cfg.log_every == 0 or done == self.total_steps:
            values = {name: float(v) for name, v in jax.device_get(metrics).items()}
            if not math.isfinite(values["loss"]):
                raise TrainingDiverged(f"loss is {values['loss']} at step {done}; {self._kept()}")
            values.update(step=done, seconds=round(time.perf_counter() - self.started, 3))
            if jax.process_index() == 0:
                self.log.write(values)
            if self.board is not None:
                self.board.write(values)
            self.bar.set_postfix(mse=f"{values['mse']:.4g}", ev=f"{values['explained_variance']:.3f}",
                                 l0=f"{values['l0']:.1f}", dead=f"{values['dead_fraction']:.2f}")
        if done % cfg.checkpoint_every == 0 and done != self.total_steps:
            self._save(done)
        self.bar.update(1)
        if done == self.total_steps and self.last_saved != done:
            self._save(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.checkpoints.close()
        if self.board is not None:
            self.board.close()

    def finish(self) -> SAE:
        """The trained SAE, with its outputs written to the run folder (process 0)."""
        # Measured from the live arrays: how much of each parameter one device holds.
        shards = {name: list(value.addressable_shards[0].data.shape) for name, value in self.state.params.items()}
        params = jax.device_get(self.state.params)
        skipped = len(getattr(self.source, "skipped", ()))
        described = self.source.describe()
        # Where the activations came from, so selection later hooks the same layer and tokens.
        origin = {key: described[key] for key in ("encoder", "layer", "token") if key in described}
        sae = SAE(params=params, config=self.sae_config,
                  metadata={**origin, **(self.metadata or {}), "source": described, "steps": self.total_steps,
                            "skipped_images": skipped, "mesh": dict(self.mesh.shape), "param_shard_shapes": shards,
                            # 0 for a fresh run; a resumed one ran only total_steps - resumed_from_step
                            "resumed_from_step": self.start_step,
                            "training_tokens": self.total_steps * self.cfg.batch_size})
        if jax.process_index() == 0:
            _write_outputs(self.out_dir, sae, self.source)
        return sae


def _check_setting(sae_config: SAEConfig, source, cfg: TrainConfig, mesh) -> None:
    if sae_config.d_in != source.d_in:
        raise InputError(f"SAE d_in={sae_config.d_in} differs from the activation width {source.d_in}")
    if cfg.batch_size % mesh.shape["data"]:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the {mesh.shape['data']} data-parallel "
                          "devices")
    if sae_config.d_sae % mesh.shape["model"]:
        raise ConfigError(f"d_sae={sae_config.d_sae} is not divisible by model_parallel={mesh.shape['model']}")


def train_sae(out_dir: str | Path, *, source=None, sae_config: SAEConfig | None = None, expansion: int = 64,
              architecture: str = "standard", k: int | None = None, train_config: TrainConfig = TrainConfig(),
              resume: bool = False, progress: bool = True, metadata: dict[str, Any] | None = None,
              tensorboard: bool = False, memory_limit: int | None = None,
              on_step: Callable[[int, Any], None] | None = None, **source_kwargs) -> SAE:
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
      on_step: called as `on_step(step, params)` after every optimizer step (params on device;
        `jax.device_get` what you keep), e.g. to snapshot the SAE at several budgets of one run.
    """
    cfg = train_config
    source = source or make_source(seed=cfg.seed, **source_kwargs)
    if sae_config is None:
        sae_config = SAEConfig(d_in=source.d_in, d_sae=expansion * source.d_in, architecture=architecture, k=k)
    mesh = make_mesh(cfg.model_parallel)
    _check_setting(sae_config, source, cfg, mesh)
    plan = memory_plan(sae_config, cfg.batch_size, mesh, sparse=cfg.sparse(sae_config))
    if progress and jax.process_index() == 0:
        print(f"memory plan: {plan.describe()}")
    check_fits(plan, memory_limit if memory_limit is not None else device_memory_bytes())
    run = _Run(out_dir, source=source, sae_config=sae_config, cfg=cfg, mesh=mesh, resume=resume, progress=progress,
               metadata=metadata, tensorboard=tensorboard)
    try:
        while not run.done:
            run.advance()
            if on_step is not None:
                on_step(run.step, run.state.params)
    finally:
        run.close()
    return run.finish()


@dataclasses.dataclass(frozen=True)
class Setting:
    """One SAE of a `train_saes` sweep: the hidden state it reads and its shape."""

    layer: Any  # a hidden-state index, as the encoder takes it (-2, or ("global", 7) for Mllama)
    sae_config: SAEConfig
    name: str  # its run folder under the sweep's folder


def sweep_settings(d_in: int, layers, expansions, ks, *, architecture: str = "standard", **sae_fields) -> list[Setting]:
    """Every (layer, expansion, k) combination, named `layer{L}_x{E}` (+ `_k{K}` with a k;
    an Mllama key ("global", 7) names `layerglobal7`)."""
    settings = []
    for layer in dict.fromkeys(layers):
        label = "".join(str(part) for part in layer) if isinstance(layer, tuple) else layer
        for expansion in dict.fromkeys(expansions):
            for k in dict.fromkeys(ks or [None]):
                name = f"layer{label}_x{expansion}" + (f"_k{k}" if k is not None else "")
                config = SAEConfig(d_in=d_in, d_sae=expansion * d_in, architecture=architecture, k=k, **sae_fields)
                settings.append(Setting(layer, config, name))
    return settings


def train_saes(out_dir: str | Path, settings: list[Setting], *, encoder, images, token: str = "last",
               cache: str = "memory", cache_dir=None, cache_dtype: str = "float32", chunk_images: int = 1024,
               encode_batch: int = 64, num_threads: int = 8, workers: int = 0,
               train_config: TrainConfig = TrainConfig(), resume: bool = False, progress: bool = True,
               metadata: dict[str, Any] | None = None, tensorboard: bool = False,
               memory_limit: int | None = None) -> dict[str, SAE]:
    """Train one SAE per setting from a single pass of `images` through `encoder`.

    Each chunk of images runs through the tower once, keeping every requested hidden state
    (`EncoderSource.chunks`); every setting then takes its train step on its own layer's
    batch, in lockstep. Each setting has its own run folder `out_dir/<setting.name>` with
    exactly what `train_sae` writes there (checkpoints, log, `sae/`, statistics), and the same
    results: a setting trained here equals `train_sae` with the same layer, SAE and
    `train_config` (seeds included). `resume` continues each setting from its own latest
    checkpoint. With `cache="disk"`, each layer's activations go to `cache_dir/layer{index}`.

    A setting whose loss diverges stops (its last good checkpoint kept) while the others go
    on; `TrainingDiverged` naming it is raised once they are done. Returns {name: SAE}.
    """
    if not settings:
        raise ConfigError("train_saes needs at least one setting")
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ConfigError(f"train_saes: setting names must differ, got {names}")
    cfg = train_config
    index, count = jax.process_index(), jax.process_count()
    inner = EncoderSource(encoder, images, layer=settings[0].layer, token=token, chunk_images=chunk_images,
                          encode_batch=encode_batch, seed=cfg.seed, num_threads=num_threads, workers=workers,
                          process_index=index, process_count=count)
    shared = SharedPass(inner, [s.layer for s in settings])
    sources = {}  # one source per layer, shared by the settings on it
    for layer in shared.layers:
        view = shared.view(layer)
        if cache == "none":
            sources[layer] = view
        elif cache in ("memory", "disk"):
            if cache == "disk" and cache_dir is None:
                raise ConfigError("cache='disk' needs cache_dir")
            directory = Path(cache_dir) / f"layer{layer}" if cache == "disk" else None
            sources[layer] = CachedSource(view, directory, dtype=cache_dtype)
        else:
            raise ConfigError(f"cache {cache!r} is not one of 'none', 'memory', 'disk'")
    mesh = make_mesh(cfg.model_parallel)
    plans = []
    for setting in settings:
        _check_setting(setting.sae_config, inner, cfg, mesh)
        plans.append(memory_plan(setting.sae_config, cfg.batch_size, mesh, sparse=cfg.sparse(setting.sae_config)))
    plan = combined_plan(plans)
    if progress and index == 0:
        print(f"memory plan ({len(settings)} SAEs): {plan.describe()}")
    check_fits(plan, memory_limit if memory_limit is not None else device_memory_bytes())

    runs: dict[str, _Run] = {}
    diverged: dict[str, TrainingDiverged] = {}
    try:
        for setting in settings:
            runs[setting.name] = _Run(Path(out_dir) / setting.name, source=sources[encoder.layer_index(setting.layer)],
                                      sae_config=setting.sae_config, cfg=cfg, mesh=mesh, resume=resume,
                                      progress=progress, metadata=metadata, tensorboard=tensorboard, bar=False)
        total = sum(run.total_steps for run in runs.values())
        with tqdm(total=total, initial=sum(run.step for run in runs.values()), unit="step",
                  desc=f"train-sae x{len(runs)}", disable=not progress or index != 0) as bar:
            # lockstep: the runs that are furthest behind step first (resumed runs may differ)
            while live := [name for name, run in runs.items() if not run.done and name not in diverged]:
                low = min(runs[name].step for name in live)
                for name in live:
                    if runs[name].step == low:
                        try:
                            runs[name].advance()
                        except TrainingDiverged as exc:
                            diverged[name] = exc
                        bar.update(1)
    finally:
        for run in runs.values():
            run.close()
    trained = {name: run.finish() for name, run in runs.items() if name not in diverged}
    if diverged:
        raise TrainingDiverged("; ".join(f"{name}: {exc}" for name, exc in diverged.items()) +
                               f" (the other settings finished: {sorted(trained)})")
    return trained


def _write_outputs(out_dir: Path, sae: SAE, source) -> None:
    """The trained SAE and its report, from one pass over the training activations: `sae/`
    (SAELens format; cfg.json's metadata gains the final `l0`, `num_dead_features` and
    `training_tokens` as SAELens 6 records them, and `sparsity.safetensors` the log10 feature
    density), `feature_stats.npz` / `.png` (eq. 7-8, Figure 4), `sae_eval.json` (SAEBench's
    `core` keys) and `summary.json`."""
    from sauce_jax.sae_io import save_sae, save_sparsity

    metrics = core_metrics(sae.params, sae.config, (source.chunk(0, i) for i in range(source.num_chunks())))
    fs, fmav, rows = metrics["fs"], metrics["fmav"], metrics["tokens"]
    np.savez(out_dir / "feature_stats.npz", fs=fs, fmav=fmav, rows=rows)
    plot_feature_statistics(fs, fmav, out_dir / "feature_stats.png")
    dead = int((fs == 0).sum())
    sae.metadata.update(dead_features=dead, statistics_rows=int(rows), l0=float(metrics["l0"]), num_dead_features=dead)
    save_sae(sae, out_dir / "sae")
    save_sparsity(fs, out_dir / "sae")
    write_sae_eval(out_dir / SAE_EVAL_FILENAME,
                   sae_eval_record(sae, metrics, activations="the run's training activations (epoch 0, every chunk)"))
    (out_dir / "summary.json").write_text(json.dumps(sae.metadata, indent=1, default=str))
