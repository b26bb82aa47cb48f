"""`sauce-jax demo`: SAUCE end to end on ConceptWorld, with the paper's Table 2 and Table 3.

1. Train an SAE on the generic stream's activations at the layer the LLaVA reads (streamed
   through `sauce_jax.train.train_sae`, Orbax checkpoints; a rerun resumes).
2. Select each concept's features from its train split (eq. 4).
3. Choose k and gamma for each mode on the validation split only.
4. Unlearn each concept in turn through the LLaVA bridge and score the test split once: the
   clean model, SAUCE `reconstruct` and SAUCE `delta`.
5. Write `report.md`, `results.json` and `table2.png` to the output folder.

Steps 1-4 are the shared pipeline of `.sauce`; this module runs them and writes the report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ..benchmark import SELECTIVITY, task_table
from ..runs import Phases, say
from ..sauce import MODES, DemoConfig, choose_hyperparameters, evaluate_test, load_model, select_all, train_concept_sae


def markdown_report(tables: dict, rows: dict, chosen: dict, config: DemoConfig, meta: dict) -> str:
    cols = ("UA_g", "UA_d", "IRA", "CRA", "utility", *SELECTIVITY)
    lines = ["# SAUCE on ConceptWorld", "",
             f"Concepts: {', '.join(config.concepts)}; seed {config.seed}; {config.n_test} test images per concept.",
             ("UA and retain rates count only the cases the clean model had right; IRA/CRA average the yes/no and "
             "the description rate; utility is the perception questions' MME (acc + acc+)/2. Yes/no answers are "
             "generated and parsed with MME's rule. COR: co-occurring concepts of the forget images still shown; "
             "BA: yes/no balanced accuracy over the other concepts, present and absent; HAL: descriptions naming an "
             "absent concept, split into HAL_swap (forget images, the target's own slot), HAL_other (forget images, "
             "other slots) and HAL_pool (images without the concept); DEG: degenerate descriptions; UA_d_logit: "
             "UA_d under the old logit rule. SAUCE SAE only: the SAE reconstructing the layer at gamma 1, nothing "
             "edited (what the SAE costs by itself)."), "",
             "## Table 2", "", "| method | task | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for method, table in tables.items():
        for task, values in table.items():
            fmt = [f"{100 * values[c]:.1f}" if c != "utility" else f"{values[c]:.1f}" for c in cols]
            fmt = [v.replace("nan", "-") for v in fmt]
            lines.append(f"| {method} | {task} | " + " | ".join(fmt) + " |")
    lines += ["", "Chosen on the validation split: " + "; ".join(
        f"{m}: k={v['k']}, gamma={v['gamma']}" for m, v in chosen.items()), "",
        "## Per concept (test)", "", "| concept | method | UA_d | UA_g | IRA_d | IRA_g | CRA_d | CRA_g | clean_d | clean_g |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for method, results in rows.items():
        for r in results:
            cells = [r[n]["value"] for n in ("UA_d", "UA_g", "IRA_d", "IRA_g", "CRA_d", "CRA_g", "clean_d", "clean_g")]
            lines.append(f"| {r['concept']} | {method} | " + " | ".join("-" if v is None else f"{100 * v:.0f}"
                                                                       for v in cells) + " |")
    lines += ["", "## Table 3: descriptions before and after unlearning", ""]
    for i, concept in enumerate(config.concepts):
        original = rows["original"][i]["examples"]
        for j, example in enumerate(original[:2]):
            lines.append(f"- **{concept}** (truth: *{example['truth']}*)")
            lines.append(f"  - original: {example['clean']}")
            for mode in MODES:
                lines.append(f"  - SAUCE {mode}: {rows[f'SAUCE {mode}'][i]['examples'][j]['edited']}")
    lines += ["", f"Run time: {meta['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


# The figure's columns: what is forgotten, what is kept (COR: the forget images' other concepts),
# the split HAL (HAL_swap: the forgotten word replaced in its own slot; HAL_other and HAL_pool:
# damage) and utility.
FIGURE_COLUMNS = ("UA_g", "UA_d", "IRA", "CRA", "COR", "HAL_swap", "HAL_other", "HAL_pool", "utility")


def table_figure(tables: dict):
    """Grouped bars, one panel per task, one bar per method, `FIGURE_COLUMNS` in percent; the
    legend below the panels, clear of every bar. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = FIGURE_COLUMNS
    tasks = sorted({t for table in tables.values() for t in table})
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 4.2), squeeze=False)
    width = 0.8 / max(1, len(tables))
    for ax, task in zip(axes[0], tasks):
        for i, (method, table) in enumerate(tables.items()):
            values = [table.get(task, {}).get(c, np.nan) * (1 if c == "utility" else 100) for c in cols]
            ax.bar(np.arange(len(cols)) + i * width, values, width, label=method)
        ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, cols, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.set_title(task)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    rows = -(-len(labels) // 5)  # legend lines
    fig.tight_layout(rect=(0, 0.05 + 0.05 * rows, 1, 1))
    return fig


def plot_table(tables: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = table_figure(tables)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(out_dir: str | Path, config: DemoConfig | None = None, *, model_dir=None, progress: bool = True) -> dict:
    """The whole demo; returns the results written to `out_dir/results.json`."""
    config = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    phases = Phases()
    with phases("load"):
        _, _, encoder, layer, model = load_model(model_dir)
    say(progress, f"[1/4] SAE on hidden state {layer} over {config.sae_images} generic images")
    with phases("sae"):
        sae = train_concept_sae(encoder, out / "sae_run", config, layer, progress)
    say(progress, "[2/4] feature selection")
    with phases("selection"):
        sets = select_all(sae, encoder, config, layer, progress)
    say(progress, "[3/4] k and gamma on the validation split")
    with phases("validation"):
        chosen = choose_hyperparameters(model, encoder, sae, sets, config, layer, progress)
    say(progress, "[4/4] test split")
    with phases("test"):
        rows = evaluate_test(model, encoder, sae, sets, chosen, config, layer, progress)
    tables = {method: task_table(results) for method, results in rows.items()}
    meta = {"seconds": time.time() - t0, "phases": phases.seconds, "layer": layer,
            "sae": {k: v for k, v in sae.metadata.items() if isinstance(v, (int, float, str))}}
    results = {"config": dataclasses.asdict(config), "chosen": chosen, "table2": tables, "per_concept": rows,
               "meta": meta}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "report.md").write_text(markdown_report(tables, rows, chosen, config, meta))
    plot_table(tables, out / "table2.png")
    return results

