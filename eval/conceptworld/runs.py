"""Run folders of the demo and the ConceptWorld experiments: resumable parts, run-folder checks
and outputs (the experiments' common options are in `sauce_jax.cli.common`).

Every experiment writes into one run folder: `config.json` (a rerun with another config is
refused), `parts/*.json` (each finished unit of work, written atomically; a rerun skips it),
`results.json`, `report.md` and its figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sauce_jax.errors import ConfigError


def cached(path: str | Path, compute: Callable[[], Any]) -> Any:
    """`compute()`'s JSON-able result, stored at `path` the first time (atomically: the file is
    complete or absent) and read back on every later call: how a long run resumes."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=_jsonable))
    os.replace(tmp, path)
    return json.loads(path.read_text())


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# Config fields added after run folders were written, with the default that computes what the
# folder computed without them: a folder whose config.json lacks one matches a config holding
# that default (so an older run still resumes), and only that default.
ADDED_FIELDS = {"sae_steps": None, "objective": "compensatory", "sae_only_row": True}


def same_config(theirs, mine) -> bool:
    """Is `mine` (a config as JSON) the config `theirs` was written with? Fields of
    `ADDED_FIELDS` that `theirs` lacks count as equal when `mine` holds their default."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        keys = set(theirs) | {k for k in mine if not (k not in theirs and k in ADDED_FIELDS
                                                     and mine[k] == ADDED_FIELDS[k])}
        return all(k in theirs and k in mine and same_config(theirs[k], mine[k]) for k in keys)
    return theirs == mine


def check_same_run(out: str | Path, name: str, config) -> None:
    """Refuse a run folder that holds this experiment under another config (or another experiment)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    mine = {"experiment": name, "config": json.loads(json.dumps(dataclasses.asdict(config), default=str))}
    if path.is_file() and not same_config(json.loads(path.read_text()), mine):
        raise ConfigError(f"{out} holds another run ({path}: not `{name}` with this config); use a new folder")
    path.write_text(json.dumps(mine, indent=1))


def write_outputs(out: str | Path, results: dict, report: str) -> None:
    """results.json and report.md of a finished experiment."""
    out = Path(out)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_jsonable))
    (out / "report.md").write_text(report)


def say(progress: bool, message: str) -> None:
    """Print `message` (flushed, so it shows in a piped log at once) if `progress`."""
    if progress:
        print(message, flush=True)


class Phases:
    """Wall and CPU seconds (this process, every thread) of a run's named phases, in order:
    `with phases("SAE"): ...`; `phases.seconds` is JSON-able."""

    def __init__(self):
        self.seconds: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        @contextlib.contextmanager
        def timed():
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                yield
            finally:
                self.seconds[name] = {"wall_s": round(time.perf_counter() - wall, 2),
                                      "cpu_s": round(time.process_time() - cpu, 2)}
        return timed()
