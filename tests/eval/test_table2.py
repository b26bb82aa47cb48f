"""`sauce-jax experiment table2` at CI size: every row end to end, written as it finishes, resumed."""

import dataclasses
import json
import time

import pytest

from sauce_jax.eval.conceptworld.sauce import DemoConfig
from sauce_jax.eval.conceptworld.experiments.table2 import Table2Config, run
from sauce_jax import cli
from sauce_jax.errors import ConfigError

ROWS = ["original", "SAUCE SAE only", "GA", "GD", "KL", "PO", "SAUCE reconstruct", "SAUCE paper recipe",
        "SAUCE delta", "SAUCE replace", "SAUCE per concept", "control matched-random", "control no-contrast",
        "control per concept matched-random"]


def _tiny_config(**changes) -> Table2Config:
    demo = DemoConfig(concepts=("star", "red"), sae_images=600, sae_epochs=1.0, sae_steps=None, n_select=20, n_val=4, n_test=6,
                      n_pool=1, n_perception=6, k_grid=(32,), gamma_grid=(-1.0,))
    config = Table2Config(demo=demo, n_forget=6, n_retain_per_concept=2, lr_grid=(3e-4,), steps_grid=(4,),
                          n_examples=1, control_draws=2, paper_sae_images=300, paper_sae_steps=10,
                          variants=("replace", "per concept"), per_concept_candidates=("reconstruct", "replace"))
    return dataclasses.replace(config, **changes)


@pytest.mark.slow
def test_reduced_table2_runs_end_to_end_and_resumes(tmp_path):
    import torch

    torch.set_num_threads(1)
    config = _tiny_config()
    results = run(tmp_path, config, progress=False)
    for name in ("table2.md", "results.json", "table2.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert list(results["table2"]) == ROWS
    for name in ROWS:
        assert set(results["table2"][name]) == {"concrete", "abstract"}  # star is concrete, red abstract
        assert [r["concept"] for r in results["rows"][name]["per_concept"]] == ["star", "red"]
        assert (tmp_path / "rows" / f"{name.replace(' ', '-')}.json").is_file()
    for row in results["rows"]["original"]["per_concept"]:
        assert row["UA_g"]["value"] == 0.0 and row["IRA_g"]["value"] == 1.0  # the clean model is its reference
    alone = results["rows"]["SAUCE SAE only"]["hyperparameters"]  # the SAE reconstructing, nothing edited
    assert (alone["mode"], alone["gamma"], alone["sae_only"]) == ("reconstruct", 1.0, True)
    for row in results["rows"]["SAUCE SAE only"]["per_concept"]:
        assert row["clean_rates"]["utility"] == pytest.approx(
            results["rows"]["original"]["per_concept"][0 if row["concept"] == "star" else 1]["utility"])
    paper = results["rows"]["SAUCE paper recipe"]["hyperparameters"]
    assert (paper["gamma"], paper["layer"], paper["token"], paper["sae"]) == (-0.5, -2, "last", "standard x64")
    assert (tmp_path / "sae_paper" / "sae" / "cfg.json").is_file()
    replace = results["rows"]["SAUCE replace"]
    assert replace["hyperparameters"]["mode"] == "replace" and "gamma" not in replace["hyperparameters"]
    # k x the gate's opening fraction (k <= the 32 features kept), gamma plays no part.
    assert set(replace["val_grid"]) == {f"k={k},open={o:g}" for k in (8, 16, 32) for o in (0.1, 0.01, 0.001)}
    chosen = results["rows"]["SAUCE per concept"]["hyperparameters"]["per_concept"]
    assert set(chosen) == {"star", "red"} and {c["recipe"] for c in chosen.values()} <= {"reconstruct", "replace"}
    # Its control: the chosen recipe and point on matched-random features, every draw on the same images.
    for result in results["rows"]["control per concept matched-random"]["per_concept"]:
        assert len(result["draws"]) == 2
    for method in ("GA", "GD", "KL", "PO"):
        row = results["rows"][method]
        assert row["hyperparameters"]["lr"] == 3e-4 and row["hyperparameters"]["steps"] == 4
        for result in row["per_concept"]:
            losses = result["losses"]
            key = "refusal" if method == "PO" else "forget"
            moved = losses["after"][key] - losses["before"][key]
            assert (moved < 0) if method == "PO" else (moved > 0), (method, losses)
            assert result["retain_examples"] and result["examples"]
    for result in results["rows"]["control matched-random"]["per_concept"]:
        assert len(result["draws"]) == 2 and result["UA_d"]["n"] == 2 * results["rows"]["original"]["per_concept"][
            [r["concept"] for r in results["rows"]["original"]["per_concept"]].index(result["concept"])]["UA_d"]["n"]
    assert {p.name for p in (tmp_path / "parts").iterdir()} == {"controls-star.json", "controls-red.json"}
    report = (tmp_path / "table2.md").read_text()
    assert all(f"| {name} |" in report for name in ROWS) and "Table 3" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["table2"] == json.loads(json.dumps(results["table2"]))

    # A rerun finds every row and computes nothing (no model is even loaded).
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "rows").iterdir()}
    start = time.time()
    again = run(tmp_path, config, progress=False)
    assert time.time() - start < 10
    assert again["table2"] == results["table2"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "rows").iterdir()} == stamps
    # A lost row is recomputed alone (the cheapest here: the clean model's); another config in the
    # same folder is refused.
    (tmp_path / "rows" / "original.json").unlink()
    assert run(tmp_path, config, progress=False)["table2"] == results["table2"]
    now = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "rows").iterdir()}
    assert set(now) == set(stamps) and all(now[n] == stamps[n] for n in now if n != "original.json")
    with pytest.raises(ConfigError, match="another config"):
        run(tmp_path, _tiny_config(steps_grid=(5,)), progress=False)
    # Variants are rows of their own, not part of the folder's identity: without them the
    # folder still serves every other row, computing nothing.
    fewer = run(tmp_path, _tiny_config(variants=()), progress=False)
    assert list(fewer["table2"]) == [r for r in ROWS if r not in ("SAUCE replace", "SAUCE per concept",
                                                                  "control per concept matched-random")]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "rows").iterdir()} == now


def test_table2_config_and_command_line_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="methods"):
        Table2Config(methods=("GA", "NPO"))
    with pytest.raises(ConfigError, match="lr_grid"):
        Table2Config(lr_grid=())
    with pytest.raises(ConfigError, match="steps_grid"):
        Table2Config(steps_grid=(0,))
    assert cli.main(["experiment", "table2", "--out", str(tmp_path), "--methods", "GA,XX"]) == 2
    assert "XX" in capsys.readouterr().err
    assert cli.main(["experiment", "table2", "--out", str(tmp_path), "--concepts", "unicorn"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["experiment", "table2", "--help"])
    assert exit_info.value.code == 0
    assert "usage: sauce-jax experiment table2" in capsys.readouterr().out
