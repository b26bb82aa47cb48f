"""Time the demo's phases and one ConceptWorld Table 2 seed: CPU and wall seconds per phase.

    python -m benchmarks.study --demo quick --out benchmarks/results/study        # the CI-sized demo
    python -m benchmarks.study --demo full --table2 study --seed 6 --out benchmarks/results/study

Each timed run writes into a fresh folder under `--work` (a temporary folder by default), so
nothing is resumed; the figures go to `--out` (relative paths are kept relative, so no machine
path lands in a committed file) as `study-<date>.json` and `.md`. CPU seconds are this
process's (every thread), so they move less with other load than wall seconds; the load
average at the start is recorded beside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def time_demo(work: Path, size: str) -> dict:
    """The demo (`quick`: `quick_demo()`, `full`: the defaults) timed per phase."""
    from sauce_jax.eval.conceptworld.experiments.demo import run
    from sauce_jax.eval.conceptworld.sauce import DemoConfig, quick_demo

    config = quick_demo() if size == "quick" else DemoConfig()
    wall, cpu = time.perf_counter(), time.process_time()
    results = run(work / f"demo-{size}", config, progress=False)
    return {"what": f"sauce-jax demo{' --quick' if size == 'quick' else ''}", "phases": results["meta"]["phases"],
            "total": {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}}


def time_table2(work: Path, size: str, seed: int) -> dict:
    """One `experiment table2` seed and tower (`quick`: `quick_config`, `study`: `study_config`)."""
    from sauce_jax.eval.conceptworld.experiments.table2 import quick_config, run, study_config

    config = quick_config(seed=seed) if size == "quick" else study_config(seed)
    wall, cpu = time.perf_counter(), time.process_time()
    run(work / f"table2-{size}-{seed}", config, progress=False)
    return {"what": f"sauce-jax experiment table2 {'--quick' if size == 'quick' else '--study'} --seeds {seed}",
            "total": {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}}


def markdown(report: dict) -> str:
    lines = [f"# Study timings ({report['date']}, commit {report['commit']})", "",
             f"Load average at the start: {report['load_average']}; {report['cpus']} CPUs.", "",
             "| run | phase | wall s | CPU s |", "|---|---|---|---|"]
    for run in report["runs"]:
        for phase, t in {**run.get("phases", {}), "total": run["total"]}.items():
            lines.append(f"| {run['what']} | {phase} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", choices=["quick", "full", "none"], default="quick")
    parser.add_argument("--table2", choices=["quick", "study", "none"], default="none")
    parser.add_argument("--seed", type=int, default=6, help="the Table 2 seed (a validation seed)")
    parser.add_argument("--out", default="bench-study", help="folder for study-<date>.json and .md")
    parser.add_argument("--work", help="folder for the runs (default: a temporary one)")
    args = parser.parse_args(argv)

    report = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": _commit(),
              "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        if args.demo != "none":
            report["runs"].append(time_demo(work, args.demo))
        if args.table2 != "none":
            report["runs"].append(time_table2(work, args.table2, args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"study-{report['date'][:10]}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
