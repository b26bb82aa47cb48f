"""Matched tuning: the grid search with its edge rule, the declared objective, the study's draw."""

import math

import pytest

from sauce_jax.errors import ConfigError
from sauce_jax.eval.conceptworld.sauce import objective
from sauce_jax.eval.conceptworld.experiments.table2 import study_concepts, study_config
from sauce_jax.eval.conceptworld.tuning import Axis, label, search
from sauce_jax.eval.conceptworld.world import DOMAIN_OF, TASKS


def _peak(lr_best: float, steps_best: int, calls: list):
    """A smooth score with its maximum at (lr_best, steps_best), counting its calls."""
    def score(point):
        calls.append(label(point))
        return -abs(math.log(point["lr"] / lr_best)) - abs(math.log(point["steps"] / steps_best))
    return score


AXES = [Axis("lr", (1e-4, 3e-4, 1e-3, 3e-3), low=0.0), Axis("steps", (5, 10, 20), low=1, integer=True)]


def test_an_interior_optimum_is_found_without_moving():
    calls = []
    found = search(AXES, _peak(3e-4, 10, calls), moves=1)
    assert found["best"] == {"lr": 3e-4, "steps": 10}
    assert found["moved"] == [] and found["edge"] == {} and len(calls) == 12 and len(found["grids"]) == 1


def test_an_optimum_past_the_edge_moves_the_grid_once_at_the_same_budget():
    calls = []
    found = search(AXES, _peak(9e-3, 40, calls), moves=1)
    # Both axes were at their high edge: each moves one position, keeping its length.
    assert found["moved"] == [{"lr": "high", "steps": "high"}]
    assert found["grids"][1] == {"lr": [3e-4, 1e-3, 3e-3, pytest.approx(9e-3)], "steps": [10, 20, 40]}
    assert found["best"]["steps"] == 40 and found["best"]["lr"] == pytest.approx(9e-3)
    # Points shared by the two grids are scored once: 12 + the 6 new ones.
    assert len(calls) == len(set(calls)) == 12 + 6
    # The peak is the moved grid's new corner: with the one move spent, the edge is reported.
    assert found["edge"] == {"lr": "high", "steps": "high"}
    assert found["score"] == pytest.approx(max(found["grid"].values()), abs=1e-4)


def test_moves_are_capped_and_a_remaining_edge_is_reported():
    calls = []
    found = search(AXES, _peak(1e-6, 1, calls), moves=0)
    assert found["best"] == {"lr": 1e-4, "steps": 5} and found["moved"] == []
    assert found["edge"] == {"lr": "low", "steps": "low"} and len(calls) == 12
    found = search(AXES, _peak(1e-6, 1, []), moves=2)
    assert found["moved"] == [{"lr": "low", "steps": "low"}] * 2
    assert found["best"]["steps"] == 1  # 5 -> 2 (rounded 2.5) -> 1
    assert found["edge"] == {"lr": "low"}  # steps cannot go below its bound; lr still could


def test_ties_go_to_the_first_point_in_grid_order():
    found = search(AXES, lambda point: 0.0, moves=1)
    # Every point ties: the first (smallest lr, fewest steps) wins, which is an edge, so the grid
    # moves down once and the first point of the moved grid wins again.
    assert found["best"] == {"lr": pytest.approx(1e-4 / 3), "steps": 2}


def test_axis_checks_and_bounds():
    with pytest.raises(ConfigError, match="distinct"):
        Axis("k", (8, 8))
    with pytest.raises(ConfigError, match="lie in"):
        Axis("k", (0, 8), low=1)
    k = Axis("k", (8, 16, 32, 64), low=1, high=100, integer=True)
    assert k.beyond("high") is None and k.beyond("low") == 4  # 128 > 100
    assert Axis("gamma", (-0.5, -1.0, -2.0)).moved("high").values == (-1.0, -2.0, -4.0)
    assert Axis("one", (3,)).beyond("high") is None


def _result(ua: float, keep: float, hal: float = 0.0, deg: float = 0.0, utility: float = 100.0) -> dict:
    rates = {name: {"value": keep, "n": 10} for name in ("IRA_d", "IRA_g", "CRA_d", "CRA_g", "COR_d", "COR_g", "BA_d")}
    return {"UA_d": {"value": ua, "n": 10}, "UA_g": {"value": ua, "n": 10}, **rates,
            "HAL_g": {"value": hal, "n": 10}, "DEG_g": {"value": deg, "n": 10}, "utility": utility}


def test_the_objective_weighs_forgetting_against_everything_kept():
    nothing = objective(_result(ua=0.0, keep=1.0))
    collapse = objective(_result(ua=1.0, keep=0.0, hal=1.0, deg=1.0, utility=0.0))
    selective = objective(_result(ua=1.0, keep=1.0))
    assert nothing == pytest.approx(0.5) and collapse == pytest.approx(0.5) and selective == pytest.approx(1.0)
    # Hallucinated concepts and lost utility each cost, as rates in [0, 1].
    assert objective(_result(ua=1.0, keep=1.0, hal=1.0)) == pytest.approx(1.0 - 0.5 / 10)
    assert objective(_result(ua=1.0, keep=1.0, utility=50.0)) == pytest.approx(1.0 - 0.5 * 0.5 / 10)
    # Terms without support are skipped, not counted as 0.
    partial = _result(ua=1.0, keep=1.0) | {"UA_g": {"value": None, "n": 0}}
    assert objective(partial) == pytest.approx(1.0)


def test_the_study_draws_a_concrete_and_an_abstract_concept_per_seed():
    for seed in (6, 7, 101):
        concepts = study_concepts(seed)
        assert concepts == study_concepts(seed) and len(concepts) == 2
        assert DOMAIN_OF[concepts[0]] in TASKS["concrete"] and DOMAIN_OF[concepts[1]] in TASKS["abstract"]
    assert len({study_concepts(s) for s in range(6, 16)}) > 5
    config = study_config(7)
    assert config.demo.concepts == study_concepts(7) and config.n_forget == config.demo.n_select
    assert len(config.lr_grid) * len(config.steps_grid) == len(config.demo.k_grid) * len(config.demo.gamma_grid) == 12


def test_an_edge_is_judged_against_everything_explored():
    # Peak just above the first grid: the grid moves up, and the best is then the moved grid's
    # lowest lr, which the first grid bracketed from below: no edge is reported.
    found = search([Axis("lr", (1e-4, 3e-4))], lambda p: -abs(math.log(p["lr"] / 3.1e-4)), moves=1)
    assert found["moved"] == [{"lr": "high"}] and found["best"]["lr"] == 3e-4 and found["edge"] == {}
