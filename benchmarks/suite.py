"""The benchmark suite: every row of the speed table, ours and the peer side by side, in one run.

    python -m benchmarks.suite --size cpu --out bench-cpu      # tiny random models and the quick demo, < 15 min on 2 cores
    python -m benchmarks.suite --size gpu --out bench-gpu      # the H200 set (benchmarks/gpu/run.sh)
    python -m benchmarks.suite --size cpu --rows clip,sae_relu --out bench-some

Each row runs in its own child process (a crash or an out-of-memory kill of one row is recorded
as that row's error and the suite goes on; the GPU memory of a row is freed before the next),
under a time limit: its budget, cut so the rows after it keep a minimum and the whole run ends
within --time-limit. `results.json` and `results.md` in --out are rewritten after every row, so
a killed run keeps the rows it completed. Generated inputs (JPEGs, models, caches) go to --work
(a temporary folder by default), not to --out. Models are random-initialised from transformers
configs, nothing is downloaded; our side loads the same weights through `load_encoder`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEMA = 1
DEFAULT_TIME_LIMIT = {"cpu": 900, "gpu": 420}
MIN_ROW_S = 20  # what a row's process needs at least: imports and device start-up
VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "torch", "transformers", "numpy",
             "pillow", "sauce-jax")


# ------------------------------------------------------------------------------ the child

def run_child(row_id: str, size: str, work: Path, earlier_path: Path, deadline: float, result_path: Path,
              rows_module: str) -> int:
    """Run one row in this process and write its record (or its error) to result_path."""
    import importlib

    rows = importlib.import_module(rows_module)
    row = rows.ROWS_BY_ID[row_id]
    earlier = json.loads(earlier_path.read_text()) if earlier_path and earlier_path.is_file() else {}
    ctx = rows.Context(size=size, work=work, earlier=earlier, deadline=deadline)
    try:
        record = row.fn(row.params[size], ctx)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - recorded for the parent, which carries on
        record = {"error": f"{type(exc).__name__}: {exc}".strip()[:2000], "traceback": traceback.format_exc()[-6000:]}
        code = 1
    record["env"] = _device_env()
    result_path.write_text(json.dumps(record, default=_json_default))
    return code


def _device_env() -> dict:
    """The devices this row ran on, from the frameworks it imported, and its peak memory."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {"host_peak_rss_mib": own.ru_maxrss / 1024,
           # CPU time of the row's process (and its finished children), and the host's load: on a
           # shared machine they tell a slow row from a starved one.
           "cpu_seconds": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
           "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if "jax" in sys.modules:
        try:
            jax = sys.modules["jax"]
            device = jax.devices()[0]
            env.update(jax_platform=device.platform, jax_device=getattr(device, "device_kind", str(device)),
                       jax_device_count=jax.device_count())
            stats = device.memory_stats() if hasattr(device, "memory_stats") else None
            if stats and "peak_bytes_in_use" in stats:
                env["jax_peak_gib"] = stats["peak_bytes_in_use"] / 2**30
        except Exception as exc:  # noqa: BLE001 - the env is informative; never fail a row over it
            env["jax_error"] = str(exc)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env.update(torch_device=torch.cuda.get_device_name(), torch_peak_gib=torch.cuda.max_memory_allocated() / 2**30)
        else:
            env["torch_device"] = "cpu"
    return env


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# ------------------------------------------------------------------------------ the parent

def versions() -> dict:
    """Installed versions, read from package metadata (nothing is imported, no device is touched)."""
    from importlib import metadata

    found = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        found["sauce-jax commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                                   capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        found["sauce-jax commit"] = None
    return found


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


CPU_THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _child_env(size: str, work: Path) -> dict:
    env = dict(os.environ)
    # Rows that compile the same function (the encoder of `extract` and of `recipe`'s train-sae)
    # compile it once per run.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(work / "jax-cache"))
    # JAX and PyTorch share the GPU inside a row: no JAX preallocation of most of its memory.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if size == "cpu":
        # One compute thread each for XLA and PyTorch: side by side on a small shared CPU, their
        # thread pools otherwise fight for the cores and the slowdown lands on whichever runs
        # second, which says nothing about either implementation.
        env.update(CPU_THREADS_ENV)
        env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS"), XLA_ONE_THREAD) if f)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_row(row, size: str, *, work: Path, out: Path, earlier: dict, timeout: float, rows_module: str) -> dict:
    """One row in a child process (its own process group, killed whole on timeout). Returns the
    row's record: the child's figures, or status "error" / "timeout" with the reason."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result_path = work / f"result-{row.id}.json"
    earlier_path = work / f"earlier-{row.id}.json"
    result_path.unlink(missing_ok=True)
    earlier_path.write_text(json.dumps(earlier, default=_json_default))
    command = [sys.executable, "-m", "benchmarks.suite", "--child", row.id, "--size", size, "--work", str(work),
               "--earlier", str(earlier_path), "--deadline", str(time.time() + timeout), "--result", str(result_path),
               "--rows-module", rows_module]
    base = {"id": row.id, "work": row.work, "peer": row.peer, "target": row.target, "size": size,
            "budget_s": round(timeout, 1), "started": _now()}
    start = time.perf_counter()
    with open(logs / f"{row.id}.log", "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=_child_env(size, work), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            _kill_group(proc)  # what the row left behind (decode workers of a killed train-sae) goes too
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = None
        except BaseException:  # the suite itself is stopped: take the row's process group with it
            _kill_group(proc)
            raise
    seconds = time.perf_counter() - start
    base["seconds"] = round(seconds, 1)
    if code is None:
        return {**base, "status": "timeout", "error": f"over its time limit of {timeout:.0f} s; killed"}
    record = json.loads(result_path.read_text()) if result_path.is_file() else None
    if record is None:
        reason = (f"killed by signal {-code}" + (" (SIGKILL: out of host memory?)" if code == -signal.SIGKILL else "")
                  if code < 0 else f"exited {code} without a result")
        return {**base, "status": "error", "error": reason + f"; see logs/{row.id}.log", "log_tail": _tail(logs / f"{row.id}.log")}
    if "error" in record:
        return {**base, "status": "error", **record}
    return {**base, "status": "ok", **record}


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def grade(record: dict, size: str) -> dict:
    """Fill in each check's verdict at this size and the row's: absolute targets bind only at
    --size gpu (None elsewhere); ratio targets are shown at any size but bind only at gpu."""
    checks = []
    for check in record.get("checks") or []:
        check = dict(check)
        if check.get("kind") == "absolute" and size != "gpu":
            check["pass"] = None
        checks.append(check)
    record = {**record, "checks": checks, "target_applies": size == "gpu"}
    verdicts = [c["pass"] for c in checks if c["pass"] is not None]
    if record["status"] != "ok":
        record["pass"] = False
    else:
        record["pass"] = all(verdicts) if verdicts else None
    return record


def write_results(out: Path, results: dict) -> None:
    """results.json, then results.md from it; each written whole and renamed into place."""
    from benchmarks.report import render_markdown

    for name, text in (("results.json", json.dumps(results, indent=1, default=_json_default)),
                       ("results.md", render_markdown(results))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)


def run_suite(rows, size: str, out: Path, *, work: Path | None = None, time_limit: float | None = None,
              rows_module: str = "benchmarks.rows", command: str = "", min_row_s: float = MIN_ROW_S) -> dict:
    """Run `rows` in order, each in a child process, rewriting out/results.{json,md} after each.
    A row gets its budget, cut so every later row keeps `min_row_s` within `time_limit`; a row
    left less than that is recorded as not run."""
    out.mkdir(parents=True, exist_ok=True)
    time_limit = DEFAULT_TIME_LIMIT[size] if time_limit is None else time_limit
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="sauce-bench-")) if own_work else work
    work.mkdir(parents=True, exist_ok=True)
    results = {"schema": SCHEMA, "suite": "sauce-jax benchmarks", "size": size, "command": command,
               "started": _now(), "finished": None, "time_limit_s": time_limit,
               "host": {"platform": sys.platform, "cpus": os.cpu_count()},
               "versions": versions(), "device": None, "rows": []}
    deadline = time.monotonic() + time_limit
    earlier: dict = {}
    try:
        for i, row in enumerate(rows):
            remaining = deadline - time.monotonic()
            later_minimum = min_row_s * (len(rows) - i - 1)
            timeout = min(row.budget_s[size], remaining - later_minimum)
            if timeout < min_row_s:
                record = {"id": row.id, "work": row.work, "peer": row.peer, "target": row.target, "size": size,
                          "status": "not run", "error": f"the suite's time limit ({time_limit:.0f} s) left "
                                                        f"{max(remaining, 0):.0f} s"}
            else:
                print(f"[suite] {row.id}: up to {timeout:.0f} s", flush=True)
                try:
                    record = run_row(row, size, work=work, out=out, earlier=earlier, timeout=timeout,
                                     rows_module=rows_module)
                except BaseException:
                    results["rows"].append(grade({"id": row.id, "work": row.work, "peer": row.peer,
                                                  "target": row.target, "size": size, "status": "interrupted",
                                                  "error": "the suite was stopped during this row"}, size))
                    raise
            record = grade(record, size)
            earlier[row.id] = record
            results["rows"].append(record)
            if results["device"] is None and record.get("env", {}).get("jax_device"):
                results["device"] = {k: v for k, v in record["env"].items() if "peak" not in k}
            print(f"[suite] {row.id}: {record['status']}" + (f" ({record.get('error')})" if record["status"] != "ok"
                                                             else f", {_summary(record)}"), flush=True)
            write_results(out, results)
    finally:
        results["finished"] = _now()
        write_results(out, results)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    return results


def _summary(record: dict) -> str:
    fig, peer = record.get("figure") or {}, record.get("peer_figure") or {}
    text = f"{_num(fig.get('value'))} {fig.get('unit', '')}"
    if peer.get("value") is not None:
        text += f" vs {_num(peer.get('value'))}"
    if record.get("ratio") is not None:
        text += f", ratio {record['ratio']:.2f}"
    return text


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", type=Path, help="folder for results.json, results.md and logs/")
    parser.add_argument("--rows", help="comma-separated row ids (default: all, in table order)")
    parser.add_argument("--work", type=Path, help="scratch folder for generated inputs (default: a temporary one)")
    parser.add_argument("--time-limit", type=float, help="seconds for the whole suite (default: cpu 600, gpu 420)")
    parser.add_argument("--rows-module", default="benchmarks.rows", help=argparse.SUPPRESS)
    # the child side: one row in this process
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--earlier", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    # A SIGTERM (from `timeout`, say) unwinds like Ctrl-C: the running row's processes are killed
    # and results.json is written before the suite exits.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.child:
        return run_child(args.child, args.size, args.work, args.earlier, args.deadline, args.result, args.rows_module)
    if args.out is None:
        parser.error("--out is required")
    import importlib

    rows_module = importlib.import_module(args.rows_module)
    rows = list(rows_module.ROWS)
    if args.rows:
        wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = [r for r in wanted if r not in rows_module.ROWS_BY_ID]
        if unknown:
            parser.error(f"unknown row(s) {unknown}; the rows are {[r.id for r in rows]}")
        rows = [rows_module.ROWS_BY_ID[r] for r in wanted]
    command = "python -m benchmarks.suite " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run_suite(rows, args.size, args.out, work=args.work, time_limit=args.time_limit,
                        rows_module=args.rows_module, command=command)
    failed = [r["id"] for r in results["rows"] if r["status"] != "ok"]
    print(f"[suite] {len(results['rows']) - len(failed)} of {len(results['rows'])} rows ran"
          + (f"; not ok: {', '.join(failed)}" if failed else "") + f"; results in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
