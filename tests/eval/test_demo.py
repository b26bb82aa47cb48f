"""A reduced `sauce-jax demo` end to end on the shipped model: SAUCE forgets, the rest survives."""

import json

import numpy as np
import pytest

from sauce_jax.eval.conceptworld.experiments.demo import run
from sauce_jax.eval.conceptworld.sauce import DemoConfig
from sauce_jax import cli
from sauce_jax.errors import ConfigError


@pytest.mark.slow
def test_reduced_demo_unlearns_and_keeps_the_rest(tmp_path):
    # No "SAE only" row: its test split costs as much as a SAUCE row's (test_conceptworld_v3 checks
    # the demo's rows without a model, test_table2 scores the row end to end).
    config = DemoConfig(concepts=("heart", "blue", "happy"), sae_images=1200, sae_epochs=2.0, sae_steps=None, n_select=40, n_val=8,
                        n_test=20, n_pool=3, n_perception=24, k_grid=(32,), gamma_grid=(-1.0,), sae_only_row=False)
    results = run(tmp_path, config, progress=False)
    for name in ("report.md", "results.json", "table2.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["chosen"]["reconstruct"]["k"] == 32
    phases = results["meta"]["phases"]  # what benchmarks/study.py reports
    assert list(phases) == ["load", "sae", "selection", "validation", "test"], phases
    assert all(t["wall_s"] >= 0 and t["cpu_s"] >= 0 for t in phases.values()) and phases["test"]["cpu_s"] > 0
    rows = results["per_concept"]
    measured = {name: [] for name in ("UA_d", "UA_g", "IRA_d", "IRA_g", "CRA_d", "CRA_g")}
    for i, concept in enumerate(config.concepts):
        original, edited = rows["original"][i], rows["SAUCE reconstruct"][i]
        assert original["UA_g"]["value"] == original["UA_d"]["value"] == 0.0  # the clean model is its own reference
        assert original["clean_g"]["value"] >= 0.9, f"the clean model does not describe {concept}"
        assert original["clean_d"]["value"] >= 0.9, f"the clean model does not answer yes about {concept}"
        assert edited["UA_g"]["value"] >= 0.4, f"{concept}: UA_g {edited['UA_g']}"
        assert edited["UA_d"]["value"] >= 0.5, f"{concept}: UA_d {edited['UA_d']}"
        for name, values in measured.items():
            values.append(edited[name]["value"])
    # A wide margin over the clean model (0 by construction); other domains mostly kept. The
    # same domain suffers more at this reduced size (measured, heart / blue / happy: UA_d 0.95
    # 0.95 0.89, UA_g 0.80 0.55 0.95, IRA_d 0.46 0.69 0.43, IRA_g 0.71 0.87 0.43, CRA_d 0.71
    # 0.78 0.72, CRA_g 0.73 0.82 0.81: the emotions share the face's features), as the README
    # reports for the full demo.
    mean = {name: float(np.mean(values)) for name, values in measured.items()}
    assert mean["UA_d"] >= 0.75 and mean["UA_g"] >= 0.6, mean
    assert mean["CRA_d"] >= 0.6 and mean["CRA_g"] >= 0.65, mean
    assert mean["IRA_d"] >= 0.35 and mean["IRA_g"] >= 0.5 and min(measured["IRA_g"]) >= 0.25, mean
    report = (tmp_path / "report.md").read_text()
    assert "| SAUCE reconstruct | concrete |" in report and "Table 3" in report
    assert list(rows) == ["original", "SAUCE reconstruct", "SAUCE delta"]
    assert {"HAL_swap", "HAL_other", "HAL_pool", "clean_rates"} <= set(rows["SAUCE reconstruct"][0])


def test_demo_rejects_unknown_concepts_and_bad_sizes():
    with pytest.raises(ConfigError, match="unicorn"):
        DemoConfig(concepts=("star", "unicorn"))
    with pytest.raises(ConfigError, match="n_test"):
        DemoConfig(n_test=0)
    assert cli.main(["eval", "--concepts", "star,unicorn", "--json", "x.json"]) == 2
