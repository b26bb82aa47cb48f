"""The suite's results as Markdown: results.md, and the table of the site's performance page.

    python -m benchmarks.report benchmarks/results/2026-11-30-cpu.json               # print the Markdown
    python -m benchmarks.report benchmarks/results/2026-11-30-cpu.json --page docs/performance.md

With --page, the table between the page's `<!-- suite-results:begin -->` and
`<!-- suite-results:end -->` markers is replaced by the table of that results.json (`--readme`
is the old name of the option, kept as an alias).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- suite-results:begin -->", "<!-- suite-results:end -->"


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _figure(figure) -> str:
    if not figure or figure.get("value") is None:
        return "-"
    return f"{_num(figure['value'])} {figure.get('unit', '')}".strip()


def _verdict(row: dict) -> str:
    if row.get("status") != "ok":
        return f"**{row.get('status', 'error')}**"
    checks = row.get("checks") or []
    star = "" if row.get("target_applies") else "*"  # a verdict for reference only at this size
    parts = []
    for c in checks:
        mark = "n/a" if c["pass"] is None else ("pass" if c["pass"] else "MISS") + star
        parts.append(f"{mark}: {c['target']} ({_num(c['value'])})")
    return "; ".join(parts) or "-"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def device_line(results: dict) -> str:
    device = results.get("device") or {}
    v = results.get("versions") or {}
    parts = [f"{results.get('size', '?')} size", f"jax {v.get('jax')} on {device.get('jax_device', '?')}",
             f"torch {v.get('torch')} on {device.get('torch_device', '?')}", f"transformers {v.get('transformers')}",
             f"flax {v.get('flax')}", f"grain {v.get('grain')}", f"python {v.get('python')}",
             f"{(results.get('host') or {}).get('cpus')} CPUs", f"commit {v.get('sauce-jax commit')}"]
    return ", ".join(parts)


def render_table(results: dict) -> str:
    """One line per row: what ran at this size, our figure, the peer's, their ratio, the verdicts."""
    lines = ["| row | work measured | sauce-jax | peer, same run | ratio | targets (one H200) |",
             "|---|---|---|---|---|---|"]
    for row in results.get("rows", []):
        work = row.get("work") if row.get("status") == "ok" else f"{row.get('work')} ({row.get('error', '')})"
        ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}x"
        lines.append(f"| {row['id']} | {_cell(work)} | {_cell(_figure(row.get('figure')))} | "
                     f"{_cell(_figure(row.get('peer_figure')))} | {ratio} | "
                     f"{_cell(_verdict(row))} |")
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    """results.md: where and with what it ran, the table, and a note on what the verdicts mean."""
    size = results.get("size")
    note = ("Targets are set for the gpu size on one H200; at this size verdicts on ratios are for "
            "reference only (marked *) and absolute targets (rates, times) are n/a." if size != "gpu" else
            "Targets as in the issue's table, for one H200.")
    unfinished = "" if results.get("finished") else " (still running, or killed: rows so far)"
    rows = results.get("rows", [])
    envs = [r.get("env") or {} for r in rows]
    loads = [e["load_average_1m"] for e in envs if e.get("load_average_1m") is not None]
    cost = (f"The rows took {sum(r.get('seconds') or 0 for r in rows):.0f} s wall, "
            f"{sum(e.get('cpu_seconds') or 0 for e in envs):.0f} s of CPU"
            + (f", host load average {min(loads):.1f} to {max(loads):.1f}" if loads else "") + ".")
    return "\n".join([
        f"# sauce-jax benchmark suite, {size} size{unfinished}",
        "",
        f"`{results.get('command', '')}`, started {results.get('started')}, finished {results.get('finished')}.",
        "",
        device_line(results) + ".",
        "",
        render_table(results),
        "",
        cost + " " + note,
        "",
    ])


def update_page(page: Path, results: dict, source: str) -> None:
    """Replace the table between the markers of `page` (docs/performance.md) with this run's table."""
    text = page.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{page}: no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    star = "" if results.get("size") == "gpu" else "\n\n\\* a verdict for reference only: the targets are set for the gpu size."
    block = f"{BEGIN}\nFrom `{source}` ({device_line(results)}):\n\n{render_table(results)}{star}\n{END}"
    page.write_text(head + block + tail)


update_readme = update_page  # the old name, from when the table lived in the README


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a results.json written by benchmarks.suite")
    parser.add_argument("--page", "--readme", dest="page", type=Path,
                        help="rewrite the table between the markers of this page (docs/performance.md)")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    if args.page:
        update_page(args.page, results, args.results.as_posix())
    else:
        sys.stdout.write(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
