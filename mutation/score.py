"""Per-module mutation scores of cosmic-ray sessions: killed / survived / timeout / skipped.

usage: python mutation/score.py mutation/sessions/scoring[.sqlite] ...  [--survivors]
"""

from __future__ import annotations

import sys
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome


def main(args: list[str]) -> None:
    show = "--survivors" in args
    totals = dict(killed=0, survived=0, timeout=0, pending=0)
    print(f"{'module':14}{'mutants':>9}{'killed':>8}{'survived':>10}{'timeout':>9}{'pending':>9}{'score':>8}")
    for arg in (a for a in args if a != "--survivors"):
        path = Path(arg if arg.endswith(".sqlite") else arg + ".sqlite")
        counts = dict(killed=0, survived=0, timeout=0, pending=0)
        survivors = []
        with use_db(str(path), WorkDB.Mode.open) as db:
            results = dict(db.results)
            for item in db.work_items:
                result = results.get(item.job_id)
                if result is None:
                    counts["pending"] += 1
                elif result.worker_outcome == WorkerOutcome.SKIPPED:
                    continue
                elif result.worker_outcome == WorkerOutcome.ABNORMAL and "timeout" in (result.output or "").lower():
                    counts["timeout"] += 1
                elif result.is_killed:
                    counts["killed"] += 1
                else:
                    counts["survived"] += 1
                    survivors.append((item, result))
        done = counts["killed"] + counts["survived"] + counts["timeout"]
        score = (counts["killed"] + counts["timeout"]) / done if done else float("nan")
        print(f"{path.stem:14}{done + counts['pending']:>9}{counts['killed']:>8}{counts['survived']:>10}"
              f"{counts['timeout']:>9}{counts['pending']:>9}{score:>8.1%}")
        for key in totals:
            totals[key] += counts[key]
        if show:
            for item, result in survivors:
                m = item.mutations[0]
                print(f"  survived {item.job_id} {m.module_path}:{m.start_pos[0]} {m.operator_name}")
                print("    " + (result.diff or "").replace("\n", "\n    "))
    done = totals["killed"] + totals["survived"] + totals["timeout"]
    if done:
        print(f"{'total':14}{done + totals['pending']:>9}{totals['killed']:>8}{totals['survived']:>10}"
              f"{totals['timeout']:>9}{totals['pending']:>9}{(totals['killed'] + totals['timeout']) / done:>8.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
