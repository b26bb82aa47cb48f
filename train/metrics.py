"""The training logs: JSON lines (always) and TensorBoard (optional)."""

from __future__ import annotations

import json
from pathlib import Path


def _step_of(line: str) -> int | None:
    """The step of one log line; None for a blank line or one torn by a killed process."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return None


class JsonlLog:
    """Appends one JSON object per line; on resume, lines past the restored step are dropped."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if _step_of(line) is not None and _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class TensorBoardLog:
    """Scalars to TensorBoard event files (the optional `tensorboard` extra: tensorboardX)."""

    def __init__(self, directory: str | Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as exc:
            from sauce_jax.errors import ConfigError

            raise ConfigError("TensorBoard logging needs tensorboardX: pip install 'sauce-jax[tensorboard]'") from exc
        self.writer = SummaryWriter(str(directory))

    def write(self, record: dict) -> None:
        step = record["step"]
        for name, value in record.items():
            if name not in ("step", "seconds"):
                self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
