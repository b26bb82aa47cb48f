"""A reduced `sauce-jax demo` end to end on the shipped model: SAUCE forgets, the rest survives."""

import json

import pytest

from eval.conceptworld.demo import DemoConfig, run
from sauce_jax import cli
from sauce_jax.errors import ConfigError


@pytest.mark.slow
def test_reduced_demo_unlearns_and_keeps_the_rest(tmp_path):
    config = DemoConfig(concepts=("heart", "blue", "happy"), sae_images=1200, sae_epochs=2.0, n_select=40, n_val=8,
                        n_test=20, n_pool=3, n_perception=24, k_grid=(32,), gamma_grid=(-1.0,))
    results = run(tmp_path, config, progress=False)
    for name in ("report.md", "results.json", "table2.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["chosen"]["reconstruct"]["k"] == 32
    rows = results["per_concept"]
    for i, concept in enumerate(config.concepts):
        original, edited = rows["original"][i], rows["SAUCE reconstruct"][i]
        assert original["UA_g"]["value"] == 0.0  # the clean model is its own reference
        assert original["clean_g"]["value"] >= 0.9, f"the clean model does not describe {concept}"
        assert edited["UA_g"]["value"] >= 0.6, f"{concept}: UA_g {edited['UA_g']}"
        assert edited["IRA_g"]["value"] >= 0.7 and edited["CRA_g"]["value"] >= 0.8, f"{concept}: {edited}"
    report = (tmp_path / "report.md").read_text()
    assert "| SAUCE reconstruct | concrete |" in report and "Table 3" in report


def test_demo_rejects_unknown_concepts_and_bad_sizes():
    with pytest.raises(ConfigError, match="unicorn"):
        DemoConfig(concepts=("star", "unicorn"))
    with pytest.raises(ConfigError, match="n_test"):
        DemoConfig(n_test=0)
    assert cli.main(["eval", "--concepts", "star,unicorn", "--json", "x.json"]) == 2
