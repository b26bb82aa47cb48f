"""`sauce-jax experiment robust` (Figure 7) and its quantizer: the per-channel RTN scheme's
guarantees, what the LLaVA / tower quantizers touch, and a reduced run end to end, resumed."""

import dataclasses
import json

import numpy as np
import pytest

from sauce_jax.eval.conceptworld.experiments.robust import (
    RobustConfig,
    hyperparameters_from_table2,
    run,
)
from sauce_jax.eval.conceptworld.sauce import DemoConfig
from sauce_jax.eval.conceptworld.experiments.table2 import Table2Config
from sauce_jax.eval.quantize import quantize_encoder, quantize_llava, quantize_per_channel
from sauce_jax import cli
from sauce_jax.errors import ConfigError, InputError, SauceError

# ------------------------------------------------------------------------------ quantizer


@pytest.mark.parametrize("shape, axis", [((32, 48), 0), ((48, 32), -1), ((8, 3, 4, 4), 0), ((4, 4, 3, 16), -1)])
def test_per_channel_levels_and_error_bound(shape, axis):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 3.0, shape[axis]).reshape(
        [-1 if i == axis % len(shape) else 1 for i in range(len(shape))])).astype(np.float32)
    q, scale = quantize_per_channel(w, bits=4, axis=axis)
    assert q.shape == w.shape and q.dtype == w.dtype and scale.shape == (shape[axis],)
    rows_w = np.moveaxis(w, axis, 0).reshape(shape[axis], -1)
    rows_q = np.moveaxis(q, axis, 0).reshape(shape[axis], -1)
    for row_w, row_q, s in zip(rows_w, rows_q, scale):
        assert len(np.unique(row_q)) <= 16  # 4 bits: symmetric codes -7..7, 15 levels at most
        assert np.abs(row_q - row_w).max() <= s / 2 * (1 + 1e-5) + 1e-12
        codes = row_q / s
        assert np.allclose(codes, np.rint(codes), atol=1e-4) and np.abs(codes).max() <= 7 + 1e-4
        assert np.isclose(np.abs(row_q).max(), np.abs(row_w).max(), rtol=1e-5)  # absmax is on the grid


def test_per_channel_zero_rows_dtypes_and_bits():
    w = np.ones((3, 5), np.float64)
    w[1] = 0.0
    q, scale = quantize_per_channel(w)
    assert np.all(q[1] == 0) and scale[1] == 0 and np.isfinite(q).all()
    assert np.array_equal(q[0], w[0])  # a constant row is exactly its absmax
    half = np.linspace(-1, 1, 40, dtype=np.float16).reshape(4, 10)
    assert quantize_per_channel(half)[0].dtype == np.float16
    two = quantize_per_channel(np.random.default_rng(1).standard_normal((6, 50)), bits=2)[0]
    assert all(len(np.unique(r)) <= 3 for r in two)  # 2 bits: codes -1, 0, 1
    eight = quantize_per_channel(np.random.default_rng(1).standard_normal((6, 500)), bits=8)[0]
    assert all(len(np.unique(r)) > 16 for r in eight)


def test_per_channel_rejects_bad_input():
    bad = np.ones((4, 4), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(SauceError, match="NaN"):
        quantize_per_channel(bad, name="layer.weight")
    with pytest.raises(InputError, match="NaN or infinite"):
        quantize_per_channel(np.full((2, 2), np.inf))
    with pytest.raises(InputError, match="rank"):
        quantize_per_channel(np.ones(5))
    with pytest.raises(InputError, match="floating"):
        quantize_per_channel(np.ones((2, 2), np.int32))
    with pytest.raises(InputError, match="axis"):
        quantize_per_channel(np.ones((2, 2)), axis=2)
    for bits in (1, 9, 4.0, True):
        with pytest.raises(ConfigError, match="bits"):
            quantize_per_channel(np.ones((2, 2)), bits=bits)


def test_llava_and_tower_quantizers_touch_the_weight_matrices_only():
    import jax
    import torch

    from sauce_jax.eval.conceptworld.sauce import load_model

    torch.set_num_threads(1)
    llava, _, encoder, _, _ = load_model()
    before = {n: p.detach().clone() for n, p in llava.named_parameters()}
    q_llava, summary = quantize_llava(llava)
    assert summary["tensors"] == 2 + 7 * 3 and summary["mean_relative_error"] > 0.01  # projector + 3 Llama blocks
    assert all(torch.equal(p, before[n]) for n, p in llava.named_parameters())  # the input is untouched
    for name, p in q_llava.named_parameters():
        linear = name.endswith("weight") and p.ndim == 2 and "vision_tower" not in name \
            and ("multi_modal_projector" in name or "layers." in name)
        assert torch.equal(p, before[name]) != linear, name  # changed iff a projector / LM linear weight
        if linear:
            assert max(len(torch.unique(row)) for row in p) <= 16
    assert q_llava.lm_head.weight is q_llava.get_input_embeddings().weight  # still tied, kept

    q_encoder, tower = quantize_encoder(encoder)
    assert tower["tensors"] == 1 + 6 * encoder.config.num_layers  # patch conv + q, k, v, out, fc1, fc2
    flat = dict(jax.tree_util.tree_flatten_with_path(encoder.state)[0])
    for path, value in jax.tree_util.tree_flatten_with_path(q_encoder.state)[0]:
        kernel = "kernel" in jax.tree_util.keystr(path)
        assert np.array_equal(np.asarray(value), np.asarray(flat[path])) != kernel, jax.tree_util.keystr(path)
        if kernel:
            assert max(len(np.unique(np.asarray(value)[..., j])) for j in range(value.shape[-1])) <= 16
    pixels = np.random.default_rng(0).standard_normal((2, 96, 96, 3)).astype(np.float32)
    clean, quantized = encoder.hidden_state(pixels, -1), q_encoder.hidden_state(pixels, -1)
    correlation = np.corrcoef(np.asarray(clean).ravel(), np.asarray(quantized).ravel())[0, 1]
    assert 0.9 < correlation < 1.0  # perturbed, not destroyed


# ------------------------------------------------------------------------- the experiment

def _tiny_config(**changes) -> RobustConfig:
    demo = DemoConfig(concepts=("star",), sae_images=600, sae_epochs=1.0, sae_steps=None, n_select=20, n_val=4, n_test=8,
                      n_pool=1, n_perception=8, k_grid=(32,), gamma_grid=(-1.0,))
    table2 = Table2Config(demo=demo, methods=("GA", "GD"), n_forget=8, n_retain_per_concept=2, lr_grid=(3e-4,),
                          steps_grid=(6,))
    return RobustConfig(table2=table2, sauce_modes=("reconstruct",), generative=False,
                        hyperparameters=(("GA", 3e-4, 6),), **changes)


def _fake_table2(folder, k=32, gamma=-1.0):
    """A finished table2 run's files that `robust` reads: rows/<method>.json, sauce_chosen.json."""
    (folder / "rows").mkdir(parents=True)
    (folder / "rows" / "GA.json").write_text(json.dumps({"hyperparameters": {"lr": 3e-4, "steps": 6}}))
    (folder / "rows" / "GD.json").write_text(json.dumps({"hyperparameters": {"lr": 1e-3, "steps": 8}}))
    (folder / "sauce_chosen.json").write_text(json.dumps({"reconstruct": {"k": k, "gamma": gamma},
                                                          "delta": {"k": k, "gamma": gamma}}))
    return folder


@pytest.mark.slow
def test_reduced_robust_runs_end_to_end_and_resumes(tmp_path):
    import torch

    torch.set_num_threads(1)
    table2 = _fake_table2(tmp_path / "table2")
    config = dataclasses.replace(_tiny_config(), hyperparameters=hyperparameters_from_table2(table2, ("GA", "GD")))
    out = tmp_path / "run"
    results = run(out, config, table2_dir=table2, progress=False)
    for name in ("report.md", "results.json", "figure7.png", "quantization.json"):
        assert (out / name).stat().st_size > 0
    summary = results["summary"]
    assert list(summary) == ["clean", "GA", "GD", "SAUCE reconstruct"]
    assert results["hyperparameters"] == {"GA": {"lr": 3e-4, "steps": 6}, "GD": {"lr": 1e-3, "steps": 8},
                                          "SAUCE reconstruct": {"k": 32, "gamma": -1.0}}  # from the table2 run
    clean = summary["clean"]
    # The references: the clean model unlearns nothing in either language; it knows the concept
    # in Spanish too; quantization alone keeps nearly all of it (measured: UA_d 0, CRA 0.99).
    assert clean["english"]["UA_d"] == 0 and clean["translation"]["UA_d"] == 0
    assert clean["translation"]["clean_d"] >= 0.75
    assert clean["quantization"]["UA_d"] <= 0.2 and clean["quantization"]["CRA"] >= 0.85
    assert clean["quantization"]["utility"] >= 80
    # SAUCE forgets (measured UA_d 0.43 English, 0.5 Spanish, 0.43 quantized) and keeps forgetting
    # under both attacks: its intervention runs on whatever tower it is given.
    sauce = summary["SAUCE reconstruct"]
    for attack in ("english", "translation", "quantization"):
        assert sauce[attack]["UA_d"] >= 0.25 > clean[attack]["UA_d"], attack
    assert sauce["drop_quantization"] == pytest.approx(sauce["english"]["UA_d"] - sauce["quantization"]["UA_d"])
    for method in ("GA", "GD"):
        for attack in ("english", "translation", "quantization"):
            assert 0 <= summary[method][attack]["UA_d"] <= 1 and summary[method][attack]["UA_d_n"] >= 6
        # Full fine-tuning moves (nearly) every weight; only some of the moves cross a 4-bit step.
        weights = results["per_concept"][method]["star"]["weights"]
        assert weights["changed_by_update"] > 0.9 and 0 < weights["codes_changed"] < weights["changed_by_update"]
    report = (out / "report.md").read_text()
    assert "| SAUCE reconstruct |" in report and "Quantization alone" in report

    # A rerun computes nothing (no model is even loaded); a lost unit is recomputed alone;
    # another config in the same folder is refused.
    parts = sorted((out / "parts").rglob("*.json"))
    assert len(parts) == 4
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    again = run(out, config, table2_dir=table2, progress=False)
    assert again["summary"] == json.loads(json.dumps(summary))
    assert {p: p.stat().st_mtime_ns for p in parts} == stamps
    (out / "parts" / "clean" / "star.json").unlink()
    assert run(out, config, progress=False)["summary"]["clean"] == json.loads(json.dumps(clean))
    assert all(p.stat().st_mtime_ns == stamps[p] for p in parts if p.parent.name != "clean")
    with pytest.raises(ConfigError, match="another run"):
        run(out, _tiny_config(bits=3), progress=False)


def test_robust_config_and_command_line_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="language"):
        RobustConfig(language="en")
    with pytest.raises(ConfigError, match="bits"):
        RobustConfig(bits=16)
    with pytest.raises(ConfigError, match="sauce_modes"):
        RobustConfig(sauce_modes=("erase",))
    with pytest.raises(ConfigError, match="hyperparameters"):
        RobustConfig(hyperparameters=(("NPO", 1e-4, 10),))
    with pytest.raises(ConfigError, match="hyperparameters"):
        RobustConfig(hyperparameters=(("GA", 0.0, 10),))
    assert RobustConfig().concepts == ("star", "circle", "square", "triangle", "heart", "cross", "moon", "arrow",
                                       "court", "field", "pool", "track", "rink", "beach")  # the concrete task
    grids = RobustConfig().table2
    assert RobustConfig().lr_steps("GA") == (grids.lr_grid[0], grids.steps_grid[0])  # table2's grids' first point
    assert RobustConfig(hyperparameters=(("GA", 3e-4, 30),)).lr_steps("GA") == (3e-4, 30)
    table2 = _fake_table2(tmp_path / "t2")
    assert hyperparameters_from_table2(table2, ("GA", "GD")) == (("GA", 3e-4, 6), ("GD", 1e-3, 8))
    with pytest.raises(ConfigError, match="KL.json"):
        hyperparameters_from_table2(table2, ("KL",))
    assert cli.main(["experiment", "robust", "--out", str(tmp_path / "a"), "--table2", str(tmp_path / "none")]) == 2
    assert "not a finished table2 run" in capsys.readouterr().err
    assert cli.main(["experiment", "robust", "--out", str(tmp_path / "b"), "--methods", "GA,XX"]) == 2
    assert cli.main(["experiment", "robust", "--out", str(tmp_path / "c"), "--modes", "erase"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["experiment", "robust", "--help"])
    assert exit_info.value.code == 0
    assert "usage: sauce-jax experiment robust" in capsys.readouterr().out
