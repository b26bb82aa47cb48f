"""Several suite runs of the same rows -> one markdown table of medians, with each run's load.

    python -m benchmarks.median_runs RUN1/results.json RUN2/results.json RUN3/results.json \\
        --title "TopK rows, before" > benchmarks/results/DATE-cpu-NAME.md

The issue's targets are medians of 3 runs with ours and the peer measured side by side in each;
this prints, per row, every run's figures and ratio and the median ratio, and the 1-minute load
average at the end of each row (a shared 2-core machine is rarely idle: say so beside the table).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def render(runs: list[dict], title: str) -> str:
    order: list[str] = []
    by_row: dict[str, list[dict]] = {}
    for run in runs:
        for row in run["rows"]:
            if row["id"] not in by_row:
                order.append(row["id"])
                by_row[row["id"]] = []
            by_row[row["id"]].append(row)
    lines = [f"# {title}", ""]
    for i, run in enumerate(runs, 1):
        lines.append(f"- run {i}: `{run.get('command', '')}`, {run.get('started')} to {run.get('finished')}")
    versions = runs[0].get("versions", {})
    lines += ["", "jax " + str(versions.get("jax")) + ", torch " + str(versions.get("torch")) + ", python "
              + str(versions.get("python")) + f", {runs[0].get('host', {}).get('cpus')} CPUs", "",
              "| row | work measured | sauce-jax (each run) | peer (each run) | ratio (each run) | median ratio "
              "| load 1m at row end |",
              "|---|---|---|---|---|---|---|"]
    for row_id in order:
        rows = by_row[row_id]
        ok = [r for r in rows if r.get("status") == "ok"]
        if not ok:
            lines.append(f"| {row_id} | {rows[0].get('work', '')} | {', '.join(r.get('status', '?') for r in rows)} "
                         "| | | | |")
            continue
        unit = (ok[0].get("figure") or {}).get("unit", "")
        peer_unit = (ok[0].get("peer_figure") or {}).get("unit", "")
        ours = " / ".join(_num((r.get("figure") or {}).get("value")) for r in ok)
        peer = " / ".join(_num((r.get("peer_figure") or {}).get("value")) for r in ok)
        ratios = [r["ratio"] for r in ok if r.get("ratio") is not None]
        ratio_text = " / ".join(f"{x:.2f}" for x in ratios)
        median = f"**{statistics.median(ratios):.2f}x**" if ratios else "-"
        loads = " / ".join(f"{(r.get('env') or {}).get('load_average_1m', float('nan')):.1f}" for r in ok)
        lines.append(f"| {row_id} | {ok[0].get('work', '')} | {ours} {unit} | {peer} {peer_unit} | {ratio_text} "
                     f"| {median} | {loads} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results.json of each run")
    parser.add_argument("--title", default="Median of suite runs")
    args = parser.parse_args(argv)
    text = render([json.loads(p.read_text()) for p in args.results], args.title)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
