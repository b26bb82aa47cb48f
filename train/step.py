"""The SAE train step: pure, jitted, data-parallel over a `jax.make_mesh` mesh."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sauce_jax import sae as sae_lib
from sauce_jax.sae import SAEConfig
from sauce_jax.train.config import TrainConfig
from sauce_jax.train.sharding import BATCH, state_shardings

TRAINABLE = ("W_enc", "b_enc", "W_dec", "b_dec")


class TrainState(NamedTuple):
    """Everything a step changes. A pytree: checkpointed whole, replicated over the mesh."""

    params: dict  # SAE params (float32 master weights), `threshold` included for batchtopk
    opt_state: optax.OptState  # Adam moments of the TRAINABLE params
    step: jax.Array  # int32 scalar: steps taken
    since_fired: jax.Array  # int32 [d_sae]: steps since each latent last fired


def learning_rate_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.lr_warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    final = cfg.lr * cfg.lr_final_fraction
    if cfg.lr_decay == "linear":
        after = optax.linear_schedule(cfg.lr, final, decay_steps)
    elif cfg.lr_decay == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.lr_final_fraction)
    else:
        after = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    return optax.adam(learning_rate_schedule(cfg, total_steps), b1=cfg.adam_b1, b2=cfg.adam_b2)


def init_state(params: dict, optimizer: optax.GradientTransformation, sae_config: SAEConfig) -> TrainState:
    trainable = {k: params[k] for k in TRAINABLE}
    return TrainState(params=params, opt_state=optimizer.init(trainable), step=jnp.zeros((), jnp.int32),
                      since_fired=jnp.zeros((sae_config.d_sae,), jnp.int32))


def train_step(state: TrainState, batch: jax.Array, *, sae_config: SAEConfig, cfg: TrainConfig,
               optimizer: optax.GradientTransformation, auxk: bool | None = None,
               dead_columns: int | None = None) -> tuple[TrainState, dict]:
    """One Adam step on a batch of activations [N, d_in]; returns the new state and metrics.

    `auxk`: whether the step computes the AuxK term at all. None decides on the device (a
    `lax.cond` on whether some latent is dead, `sae.loss_and_grad`); False skips it, which is
    exact only while no latent is dead (its term is 0 then); True always computes it (0 when
    none is dead). `jit_train_step` picks False or True on the host, see `AuxKSwitch`, and
    `dead_columns`, a bound on how many latents are dead (`sae.loss`)."""
    compute_dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    step = state.step
    alpha = sae_config.l1_coefficient
    if cfg.l1_warmup_steps:
        alpha = alpha * jnp.minimum(1.0, (step + 1) / cfg.l1_warmup_steps)
    dead = state.since_fired >= cfg.dead_after_steps
    sparse = cfg.sparse(sae_config)
    frozen = {k: v for k, v in state.params.items() if k not in TRAINABLE}

    def loss_fn(trainable, dead):
        out = sae_lib.loss({**trainable, **frozen}, batch, sae_config, l1_coefficient=alpha, dead=dead,
                           compute_dtype=compute_dtype, sparse=sparse,
                           recall_target=1.0 if cfg.topk_recall is None else cfg.topk_recall,
                           dead_columns=dead_columns)
        return out.loss, out

    trainable = {k: state.params[k] for k in TRAINABLE}
    # AuxK only on steps where some latent is dead; the others skip its work entirely.
    if auxk is None:
        (_, out), grads = sae_lib.loss_and_grad(loss_fn, trainable, dead, sae_config)
    else:
        (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, dead if auxk else None)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    if cfg.normalize_decoder:
        trainable = sae_lib.normalize_decoder(trainable)
    params = {**trainable, **frozen}
    if sae_config.has_threshold:
        # The inference threshold tracks the smallest activation BatchTopK kept (first step: as is).
        decay = jnp.where(step == 0, 0.0, cfg.threshold_decay)
        params["threshold"] = decay * frozen["threshold"] + (1 - decay) * out.kth_value
    since_fired = jnp.where(out.fired, 0, state.since_fired + 1)
    metrics = {
        "loss": out.loss, "mse": out.mse, "l1": out.l1, "l0": out.l0, "auxk": out.auxk,
        "explained_variance": out.explained_variance,
        "dead_fraction": jnp.mean(since_fired >= cfg.dead_after_steps),
        "grad_norm": jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))),
    }
    return TrainState(params, opt_state, step + 1, since_fired), metrics


def jit_train_step(mesh: Mesh, state: TrainState, *, sae_config: SAEConfig, cfg: TrainConfig,
                   optimizer: optax.GradientTransformation):
    """The step under jit: state laid out by `sauce_jax.train.sharding`'s rules (feature axis over
    `model`), batch split over `data`, state buffers donated. A TopK / BatchTopK SAE skips the
    AuxK work while no latent is dead: on CPU through `AuxKSwitch` (a compiled step without
    AuxK and one per bound on the dead latents' columns, chosen on the host), elsewhere through
    a `lax.cond` in the step."""
    shardings = state_shardings(state, mesh)

    def compiled(auxk, flag, dead_columns=None):
        def fn(state, batch):
            new, metrics = train_step(state, batch, sae_config=sae_config, cfg=cfg, optimizer=optimizer, auxk=auxk,
                                      dead_columns=dead_columns)
            if flag:  # how many latents are dead in the state the next step consumes
                metrics[AuxKSwitch.FLAG] = jnp.sum(new.since_fired >= cfg.dead_after_steps)
            return new, metrics

        return jax.jit(fn, in_shardings=(shardings, NamedSharding(mesh, BATCH)),
                       out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)

    if not sae_config.uses_auxk or jax.default_backend() != "cpu":
        return compiled(None, False)
    dead_now = jax.jit(lambda since_fired: jnp.sum(since_fired >= cfg.dead_after_steps),
                       out_shardings=NamedSharding(mesh, P()))
    return AuxKSwitch(lambda columns: compiled(True, True, columns), compiled(False, True), dead_now,
                      sae_config.d_sae, sae_config.resolved_aux_k)


class AuxKSwitch:
    """Calls the step without AuxK while the state it consumes has no dead latent (AuxK's term
    and gradient are 0 then), and otherwise a step whose AuxK picks its latents among the
    columns of the dead ones only (`sae._dead_top`): the fewest of aux_k, 2 aux_k, 4 aux_k, ...,
    d_sae columns that hold them, each compiled once. The choice is a function of the state
    alone and every choice gives the same step, so resumed runs stay bit-identical: each step
    returns how many latents its new state has dead, read before the next call; the first call
    asks the state itself. This waits for each step before dispatching the next, which costs
    nothing on CPU, where it is used: there a `lax.cond` in the step ran the cheap branch up to
    2x slower than the same code outside one (the sparse decode most)."""

    FLAG = "dead_next"

    def __init__(self, with_auxk, without_auxk, dead_now, d_sae: int, aux_k: int):
        self.with_auxk, self.without_auxk, self.dead_now = with_auxk, without_auxk, dead_now
        self.d_sae, self.aux_k = d_sae, aux_k
        self.steps: dict[int, object] = {}  # columns -> the step with AuxK over that many
        self.dead = None  # the last step's count of dead latents, or None before the first call

    def columns(self, dead: int) -> int:
        """The columns AuxK looks at when `dead` latents are dead: aux_k times a power of two,
        at least `dead`, at most d_sae."""
        columns = self.aux_k
        while columns < dead:
            columns *= 2
        return min(columns, self.d_sae)

    def __call__(self, state: TrainState, batch):
        dead = int(self.dead_now(state.since_fired) if self.dead is None else self.dead)
        if dead:
            columns = self.columns(dead)
            if columns not in self.steps:
                self.steps[columns] = self.with_auxk(columns)
            step = self.steps[columns]
        else:
            step = self.without_auxk
        state, metrics = step(state, batch)
        self.dead = metrics.pop(self.FLAG)
        return state, metrics


def global_batch(local, mesh: Mesh) -> jax.Array:
    """This process's rows [n_local, d] -> one array [n_local * processes, d] split over `data`."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, BATCH), local)
