"""Where every array of a training run lives: a 2-D mesh (`data` x `model`), one rule table
from parameter name to PartitionSpec, and a memory plan checked before anything compiles.

Activations are split over `data`; the SAE's feature axis (d_sae) is split over `model`, and
so are the Adam moments and the per-feature counters, so a million-feature dictionary is
spread over the devices instead of replicated on each. With `model` = 1 this is plain data
parallelism. XLA's partitioner inserts the collectives (gradient reductions over `data`,
the global top-k of TopK/BatchTopK across `model` shards).
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sauce_jax.errors import ConfigError
from sauce_jax.sae import SAEConfig

# Parameter name -> how it is split. The same rule covers the Adam moments of that parameter.
PARAM_RULES = {
    "W_enc": P(None, "model"),  # [d_in, d_sae]
    "b_enc": P("model"),  # [d_sae]
    "W_dec": P("model", None),  # [d_sae, d_in]
    "b_dec": P(),  # [d_in]
    "threshold": P("model"),  # [d_sae]
}
STATE_RULES = {"since_fired": P("model")}  # TrainState fields outside params
BATCH = P("data", None)  # activations [N, d_in]


def make_mesh(model_parallel: int = 1) -> Mesh:
    """`data` x `model` over every device of every process; `data` = devices / model_parallel."""
    devices = jax.device_count()
    if model_parallel < 1 or devices % model_parallel:
        raise ConfigError(f"model_parallel={model_parallel} does not divide the {devices} devices")
    return jax.make_mesh((devices // model_parallel, model_parallel), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _spec_for(path) -> P:
    for entry in reversed(path):
        name = getattr(entry, "key", None) or getattr(entry, "name", None)
        if name in PARAM_RULES:
            return PARAM_RULES[name]
        if name in STATE_RULES:
            return STATE_RULES[name]
    return P()


def state_shardings(state, mesh: Mesh):
    """A NamedSharding for every leaf of a TrainState (params, Adam moments, counters)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, _spec_for(path) if len(leaf.shape) else P()), state)


def shard_state(state, mesh: Mesh):
    return jax.device_put(state, state_shardings(state, mesh))


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one training configuration on one mesh."""

    params: int
    optimizer: int
    activations: int
    devices: tuple[int, int]  # (data, model)

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.activations

    def describe(self) -> str:
        gib = lambda b: f"{b / 2**30:.3f} GiB"
        return (f"per device on a {self.devices[0]} x {self.devices[1]} (data x model) mesh: params "
                f"{gib(self.params)}, Adam {gib(self.optimizer)}, activations {gib(self.activations)}, "
                f"total {gib(self.total)}")


def memory_plan(config: SAEConfig, batch_size: int, mesh: Mesh, *, sparse: bool = False) -> MemoryPlan:
    """Float32 params and Adam moments split over `model`; per-step activations: the batch split
    over `data`, its [n, d_sae / model] pre-activations, latents and their gradients (about four
    such arrays live at once), or k per token for the sparse decode."""
    data, model = mesh.shape["data"], mesh.shape["model"]
    param_count = 2 * config.d_in * config.d_sae + 2 * config.d_sae + config.d_in
    params = 4 * param_count // model
    rows = -(-batch_size // data)
    wide = 4 * rows * (config.d_sae // model) * 4
    if sparse and config.k:
        wide = wide // 2 + 4 * rows * config.k * config.d_in * 2  # pre stays dense; decode is k rows
    return MemoryPlan(params=params, optimizer=2 * params, activations=wide + 4 * rows * config.d_in * 4,
                      devices=(data, model))


def combined_plan(plans: list[MemoryPlan]) -> MemoryPlan:
    """Several SAEs trained side by side on one mesh: each keeps its params and Adam moments,
    while the step workspace is reused (their steps run one after another)."""
    return MemoryPlan(params=sum(p.params for p in plans), optimizer=sum(p.optimizer for p in plans),
                      activations=max(p.activations for p in plans), devices=plans[0].devices)


def device_memory_bytes() -> int | None:
    """What one device can hold, where the backend says (GPU/TPU); None on CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def check_fits(plan: MemoryPlan, limit: int | None) -> None:
    if limit is not None and plan.total > limit:
        raise ConfigError(f"this configuration does not fit: {plan.describe()}, but a device holds "
                          f"{limit / 2**30:.3f} GiB; raise model_parallel, lower batch_size, or use sparse decoding")
