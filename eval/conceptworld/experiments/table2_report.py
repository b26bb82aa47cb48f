"""Table 2's report: the markdown (Table 2, per-concept rates, baseline losses, Table 3) and the chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLUMNS = ("UA_g", "UA_d", "IRA", "CRA", "utility")
# `benchmark.selectivity`'s columns
SELECTIVITY = ("COR", "BA", "HAL", "HAL_swap", "HAL_other", "HAL_pool", "DEG", "UA_d_logit")
RATES = ("UA_g", "UA_d", "IRA_g", "IRA_d", "CRA_g", "CRA_d", "COR_g", "COR_d", "BA_d", "HAL_g", "HAL_swap", "HAL_other",
         "HAL_pool", "DEG_g", "UA_d_logit", "clean_g", "clean_d")


def _pct(value, scale: float = 100.0) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{scale * value:.1f}"


def hyperparameters_text(row: dict) -> str:
    """The chosen point; "moved" where the grid moved off an edge, "edge: <axes>" where the
    chosen point still sits on one (the grid did not bracket it)."""
    h = row.get("hyperparameters", {})
    if "per_concept" in h:  # the per-concept row: each concept's recipe and point
        return "; ".join(f"{concept}: {c['recipe']} {_point_text(c)}" + (", moved" if c.get("moved") else "")
                         + (", edge: " + "/".join(f"{a} {s}" for a, s in c["edge"].items()) if c.get("edge") else "")
                         for concept, c in h["per_concept"].items())
    if h.get("sae_only"):
        return "none (reconstruct at gamma 1)"
    if "lr" in h:
        text = f"lr {h['lr']:g}, {h['steps']} steps"
    elif "k" in h:
        text = _point_text(h)
    else:
        return ""
    if row.get("moved"):
        text += ", moved"
    if row.get("edge"):
        text += ", edge: " + "/".join(f"{axis} {side}" for axis, side in row["edge"].items())
    return text


def _point_text(h: dict) -> str:
    return f"k {h['k']}" + (f", gamma {h['gamma']:g}" if h.get("gamma") is not None else "") \
        + (f", gate open on {h['open']:g} of negative tokens" if h.get("open") is not None else "")


OBJECTIVE_TEXT = {
    "compensatory": "`objectives.compensatory_objective`: half the mean of UA_d and UA_g, half the mean of the "
                    "retain, selectivity and utility rates",
    "selective": "`objectives.selective_objective`: the geometric mean of forgetting and a soft minimum of the keep "
                 "terms relative to clean",
}


def markdown(results: dict) -> str:
    """The report of `table2.run`'s results."""
    demo = results["config"]["demo"]
    rows = results["rows"]
    lines = ["# Table 2 on ConceptWorld: SAUCE against weight-update unlearning", "",
             (f"Concepts: {', '.join(demo['concepts'])}; seed {demo['seed']}; {demo['n_test']} test images per "
             f"concept, {demo['n_pool']} per concept in the retain pool, {demo['n_perception']} perception images."),
             ("Percent. UA and retain rates count only the cases the clean model had right; IRA and CRA average the "
             "yes/no and the description rate; utility is the perception questions' MME (acc + acc+)/2. "
             "Hyperparameters were chosen on the validation split by one declared objective for every method "
             f"({OBJECTIVE_TEXT[demo.get('objective', 'compensatory')]}), over grids of equal size moved off an "
             f"edge up to {demo.get('grid_moves', 1)} time(s). "
             "Yes/no and perception answers are generated and parsed with MME's rule. Selectivity: COR, the other "
             "concepts of each forget image still shown (yes/no and description); BA, yes/no balanced accuracy over "
             "every other concept asked, present and absent (0.5 = yes to everything); HAL, descriptions naming a "
             "concept the image lacks, split into HAL_swap (forget images, the target's own slot: the word that "
             "replaces the forgotten one), HAL_other (forget images, other slots) and HAL_pool (images without the "
             "concept); DEG, descriptions that do not parse into item phrases or repeat a word; "
             "UA_d_logit, UA_d under the old yes-vs-no logit rule. Controls use SAUCE reconstruct's k and gamma."), "",
             "## Table 2", "", "| method | chosen on val | task | " + " | ".join(COLUMNS + SELECTIVITY) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS + SELECTIVITY)]
    for name, table in results["table2"].items():
        for task, values in table.items():
            cells = [_pct(values.get(c), 1.0 if c == "utility" else 100.0) for c in COLUMNS + SELECTIVITY]
            lines.append(f"| {name} | {hyperparameters_text(rows[name])} | {task} | " + " | ".join(cells) + " |")
    lines += ["", "## Per concept (test)", "", "| concept | method | " + " | ".join(RATES) + " | utility |",
              "|---|---|" + "---|" * (len(RATES) + 1)]
    for name, row in rows.items():
        for r in row["per_concept"]:
            lines.append(f"| {r['concept']} | {name} | " + " | ".join(_pct(r.get(n, {}).get("value")) for n in RATES)
                         + f" | {r['utility']:.1f} |")
    lost = [(name, r) for name, row in rows.items() for r in row["per_concept"] if "losses" in r]
    if lost:
        lines += ["", "## Baselines: answer NLL on their own training sets (before -> after)", "",
                  "| concept | method | forget | retain | refusal |", "|---|---|---|---|---|"]
        for name, r in lost:
            b, a = r["losses"]["before"], r["losses"]["after"]
            lines.append(f"| {r['concept']} | {name} | " + " | ".join(
                f"{b[k]:.2f} -> {a[k]:.2f}" if k in b and k in a else "-" for k in ("forget", "retain", "refusal"))
                + " |")
    lines += ["", "## Table 3: descriptions before and after unlearning", "",
              ("For each concept, an image showing it (forget) and one showing another concept of its domain "
              "(retain), both drawn at random with the run's seed: the truth, the clean model's description, and "
              "each method's.")]
    names = list(rows)
    for i, concept in enumerate(demo["concepts"]):
        for kind, key in (("forget", "examples"), ("retain", "retain_examples")):
            reference = rows[names[0]]["per_concept"][i].get(key, [])
            if not reference:
                continue
            lines += ["", f"- **{concept}**, {kind} image (truth: *{reference[0]['truth']}*)",
                      f"  - original: {reference[0]['clean']}"]
            for name in names[1:]:
                examples = rows[name]["per_concept"][i].get(key, [])
                if examples:
                    lines.append(f"  - {name}: {examples[0]['edited'] or '(empty)'}")
    seconds = results["meta"]["seconds_per_row"]
    setup = next((row["setup_seconds"] for row in rows.values() if "setup_seconds" in row), None)
    lines += ["", "Seconds per row (in the run that computed it): "
              + ", ".join(f"{n} {s:.0f}" for n, s in seconds.items())
              + (f"; SAUCE's SAE, selection and validation grid {setup:.0f}" if setup is not None else "") + "."]
    return "\n".join(lines) + "\n"


def plot(tables: dict, path: Path) -> None:
    """Grouped bars: one panel per task, the five columns, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for table in tables.values() for t in table))  # concrete, then abstract
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 3.8), squeeze=False)
    width = 0.8 / max(1, len(tables))
    for ax, task in zip(axes[0], tasks):
        for i, (name, table) in enumerate(tables.items()):
            values = [table.get(task, {}).get(c, np.nan) * (1 if c == "utility" else 100) for c in COLUMNS]
            ax.bar(np.arange(len(COLUMNS)) + i * width, values, width, label=name)
        ax.set_xticks(np.arange(len(COLUMNS)) + 0.4 - width / 2, COLUMNS)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.set_title(task)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
