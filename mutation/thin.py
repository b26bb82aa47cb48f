"""Second filter of a cosmic-ray session (after cr-filter-operators): marks as skipped the
mutants

* inside a `raise` statement: they change only the text of an error message; the condition
  that raises is a separate statement and stays mutated;
* inside a type annotation (`float | None` -> `float & None`): every mutated module has
  `from __future__ import annotations`, so annotations are strings nothing evaluates.

Mutants already run are re-marked too, so the filter can follow an exec.

usage: python mutation/thin.py SESSION.sqlite
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult


def spans(path: Path) -> tuple[set[int], list[tuple[tuple[int, int], tuple[int, int]]]]:
    """The lines of raise statements and the (start, end) positions of annotations."""
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
               any(a.name == "annotations" for a in n.names) for n in tree.body), path
    lines, annotations = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise):
            lines.update(range(node.lineno, node.end_lineno + 1))
        found = []
        if isinstance(node, ast.arg) and node.annotation is not None:
            found.append(node.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            found.append(node.returns)
        if isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        annotations += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in found]
    return lines, annotations


def main(session: str) -> None:
    skipped = {"raise": 0, "annotation": 0}
    cache: dict[Path, tuple] = {}
    with use_db(session, WorkDB.Mode.open) as db:
        results = dict(db.results)
        for item in list(db.work_items):
            done = results.get(item.job_id)
            if done is not None and done.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            for mutation in item.mutations:
                path = Path(mutation.module_path)
                if path not in cache:
                    cache[path] = spans(path)
                lines, annotations = cache[path]
                start = tuple(mutation.start_pos)
                reason = ("raise" if start[0] in lines else
                          "annotation" if any(a <= start < b for a, b in annotations) else None)
                if reason:
                    skipped[reason] += 1
                    db.set_result(item.job_id, WorkResult(output=f"thin.py: inside a {reason}",
                                                          worker_outcome=WorkerOutcome.SKIPPED))
                    break
    print(f"{session}: skipped {skipped['raise']} error-message and {skipped['annotation']} annotation mutants")


if __name__ == "__main__":
    main(sys.argv[1])
