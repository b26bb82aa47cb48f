"""Orbax checkpoints of a training run: the TrainState pytree plus a JSON record of the data
position, the configs and the step. Saves are asynchronous and awaited before exit; Orbax
writes each step to a temporary folder and renames it when complete, so a `kill -9` at any
moment leaves the previous complete checkpoint restorable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from sauce_jax.errors import CheckpointError, ConfigError


class RunCheckpoints:
    def __init__(self, directory: str | Path, *, keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "record"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, record: dict[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        record=ocp.args.JsonSave(record)))

    def restore(self, abstract_state, step: int | None = None):
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {str(self.directory)!r}")
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
        except Exception as exc:
            raise CheckpointError(f"checkpoint {step} in {str(self.directory)!r} cannot be restored: {exc}") from exc
        return out.state, out.record

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def check_resumable(saved: dict, current: dict, allowed: tuple[str, ...] = ()) -> None:
    """Refuse to resume when the run's configuration changed in a way that changes results."""
    differing = []
    for section in ("sae_config", "train_config", "source"):
        old, new = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(old) | set(new)):
            if key not in allowed and old.get(key) != new.get(key):
                differing.append(f"{section}.{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if differing:
        raise ConfigError("cannot resume: the configuration changed since the checkpoint: " + "; ".join(differing))

