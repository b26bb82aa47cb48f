"""A rows module for the suite's test: two real rows of benchmarks.rows at toy shapes, and rows
that fail the ways a benchmark row fails (an exception, a killed process, a hang). The child
processes import it by name (`--rows-module suite_rows`), so it lives on PYTHONPATH."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from benchmarks.rows import Context, Row, cache_read_row, sae_relu_row

__all__ = ["Context", "ROWS", "ROWS_BY_ID"]


def raising_row(params: dict, ctx: Context) -> dict:
    raise MemoryError("RESOURCE_EXHAUSTED: out of memory while allocating 80.00GiB")


def killed_row(params: dict, ctx: Context) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    return {}


def hanging_row(params: dict, ctx: Context) -> dict:
    time.sleep(600)
    return {}


def waiting_row(params: dict, ctx: Context) -> dict:
    """Writes its pid to the work folder, then waits for the suite to be stopped."""
    (ctx.work / "waiting.pid").write_text(str(os.getpid()))
    time.sleep(600)
    return {}


def peeking_row(params: dict, ctx: Context) -> dict:
    """Reports which rows the suite's results.json on disk already holds while this row runs."""
    on_disk = json.loads((Path(os.environ["SUITE_TEST_OUT"]) / "results.json").read_text())
    return {"work": "reads results.json", "figure": {"value": 1.0, "unit": "row"}, "peer_figure": None,
            "ratio": None, "checks": [], "details": {"rows_on_disk": [r["id"] for r in on_disk["rows"]]}}


def _row(row_id, fn, params=None, budget=120):
    return Row(row_id, f"test row {row_id}", "-", "-", fn, {"cpu": params or {}, "gpu": params or {}},
               {"cpu": budget, "gpu": budget})


ROWS = (
    _row("sae_relu", sae_relu_row, dict(d_in=32, d_sae=256, batch=64, dtype="float32", warmup=1, repeats=2)),
    _row("raises", raising_row),
    _row("killed", killed_row),
    _row("hangs", hanging_row, budget=3),
    _row("cache_read", cache_read_row, dict(d_in=16, chunk_tokens=256, chunks=2)),
    _row("peek", peeking_row),
)
# Only by name (--rows waits): the suite is stopped while it runs.
ROWS_BY_ID = {row.id: row for row in (*ROWS, _row("waits", waiting_row))}
