"""A cProfile dump as Markdown: total time and the costliest functions by own and cumulative time.

    python -m cProfile -o demo.prof -m sauce_jax.cli demo --quick --no-progress
    python -m benchmarks.profile_summary demo.prof --title "sauce-jax demo --quick" > demo-profile.md
"""

from __future__ import annotations

import argparse
import io
import pstats
import re


def _where(func: tuple) -> str:
    """(file, line, name) -> "module.py:line(name)", without the machine's folders."""
    path, line, name = func
    short = re.sub(r".*/(site-packages|main|work)/", "", path) if path.startswith("/") else path
    return f"{short}:{line}({name})"


def summary(path: str, title: str, top: int = 15) -> str:
    stats = pstats.Stats(path, stream=io.StringIO())
    total = stats.total_tt
    lines = [f"# Profile: {title}", "", f"Total {total:.0f} s profiled ({stats.total_calls:,} calls).", ""]
    for key, heading in (("tottime", "own time"), ("cumulative", "cumulative time")):
        rows = sorted(stats.stats.items(), key=lambda kv: -(kv[1][2] if key == "tottime" else kv[1][3]))[:top]
        lines += [f"## The {top} costliest functions by {heading}", "",
                  "| function | calls | own s | cumulative s | share of total |", "|---|---|---|---|---|"]
        for func, (_, calls, own, cumulative, _) in rows:
            value = own if key == "tottime" else cumulative
            lines.append(f"| `{_where(func)}` | {calls} | {own:.1f} | {cumulative:.1f} | {100 * value / total:.0f}% |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile")
    parser.add_argument("--title", default="profile")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    print(summary(args.profile, args.title, args.top))


if __name__ == "__main__":
    main()
