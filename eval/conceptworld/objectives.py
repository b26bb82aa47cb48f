"""The objectives ConceptWorld's validation grids maximise (`DemoConfig.objective` picks one)
and the columns beside them, as pure functions of one `benchmark.Evaluation.run` result.

- `compensatory_objective` (also `objective`): v2's, half forgetting, half keeping; every
  committed figure was tuned with it.
- `selective_objective`: issue 31's, which collapse, detect-and-refuse and doing nothing cannot
  win: the geometric mean of forgetting and a soft minimum of each keep term's drop below the
  clean model.
- `keeps_clean`: the pass/fail column, every keep term within `KEEP_MARGIN` of clean.
"""

from __future__ import annotations

import numpy as np

FORGET_TERMS = ("UA_d", "UA_g")
# What must survive: the paper's retain rates, the other concepts of the forget images, yes/no
# balanced accuracy over the other concepts, descriptions free of absent concepts and of
# degenerate text, and the perception subtasks.
KEEP_TERMS = ("IRA_d", "IRA_g", "CRA_d", "CRA_g", "COR_d", "COR_g", "BA_d", "HAL_g", "DEG_g", "utility")
_LOWER_IS_BETTER = ("HAL_g", "HAL_swap", "HAL_other", "HAL_pool", "DEG_g")


def _term(result: dict, name: str) -> float | None:
    """One objective term in [0, 1], higher better; None where the result had no support."""
    if name == "utility":
        return result["utility"] / 100.0
    value = result.get(name, {}).get("value")
    if value is None:
        return None
    return 1.0 - value if name in _LOWER_IS_BETTER else value


def _mean_of(result: dict, names) -> float:
    values = [v for v in (_term(result, n) for n in names) if v is not None]
    return float(np.mean(values)) if values else 0.0


def compensatory_objective(result: dict) -> float:
    """The objective every v2 grid maximised (SAUCE's k and gamma, each baseline's learning rate
    and steps), declared before any test seed was read: half forgetting, half keeping,

        0.5 * mean(UA_d, UA_g) + 0.5 * mean(KEEP_TERMS),

    each a rate in [0, 1] (HAL and DEG as 1 - rate, utility / 100), skipping the terms a result
    could not score. A model that forgets nothing scores about 0.5. It is compensatory: one point
    of mean UA buys ten points of any one keep term, so collapse ("no" to everything, empty
    descriptions, about 0.59) beats doing nothing and detect-and-refuse (about 0.87) ties a good
    selective edit (issue 31); `selective_objective` is the one that cannot be won that way."""
    return 0.5 * _mean_of(result, FORGET_TERMS) + 0.5 * _mean_of(result, KEEP_TERMS)


# Today's objective under its old name, for the callers and tables that read it as `objective`.
objective = compensatory_objective

# The selective objective's keep terms: the compensatory ones with HAL_g replaced by the two
# parts of HAL that are damage (the target's own slot, HAL_swap, is the paper's success case).
SELECTIVE_KEEP_TERMS = ("IRA_d", "IRA_g", "CRA_d", "CRA_g", "COR_d", "COR_g", "BA_d", "HAL_other", "HAL_pool",
                        "DEG_g", "utility")
# Retain rates count only the cases the clean model had right: the clean model's own rate is 1.
_RETAIN_TERMS = ("IRA_d", "IRA_g", "CRA_d", "CRA_g", "COR_d", "COR_g")
KEEP_SOFTMIN_TEMPERATURE = 0.02  # 2 points: the soft minimum is within 0.02 x ln(11) of the minimum
KEEP_MARGIN = 0.03  # `keeps_clean`: every keep term within 3 points of the clean model


def _raw(source, name: str):
    """The value of `name` in a result ({"value": ...}, or utility's number) or a flat mapping."""
    value = source.get(name)
    return value.get("value") if isinstance(value, dict) else value


def clean_level(result: dict, name: str, clean: dict | None = None) -> float | None:
    """The clean model's value of keep term `name` on the same images, as `_term` reads terms
    (in [0, 1], higher better): 1 for a retain rate; else from `clean` (the clean model's result
    of the same concept, or a mapping of its rates) or the result's own `clean_rates`
    (`Evaluation.run` records them); None where neither has it."""
    if name in _RETAIN_TERMS:
        return 1.0
    reference = clean if clean is not None else result.get("clean_rates")
    value = None if reference is None else _raw(reference, name)
    if value is None and name == "utility" and clean is None and result.get("clean_perception"):
        from sauce_jax.eval.metrics import utility

        value = utility(result["clean_perception"])
    if value is None:
        return None
    return _term({name: value} if name == "utility" else {name: {"value": value}}, name)


def keep_deficits(result: dict, clean: dict | None = None) -> dict[str, float]:
    """How far each `SELECTIVE_KEEP_TERMS` term fell below the clean model, in [0, 1] (points /
    100; 0 where it is as good or better), over the terms both can score."""
    deficits = {}
    for name in SELECTIVE_KEEP_TERMS:
        value, reference = _term(result, name), clean_level(result, name, clean)
        if value is not None and reference is not None:
            deficits[name] = max(0.0, reference - value)
    return deficits


def soft_minimum(values, temperature: float = KEEP_SOFTMIN_TEMPERATURE) -> float:
    """-t ln(mean(exp(-v / t))): between min(values) and min + t ln(n), and equal to v when
    every value is v; smooth, so the grid still sees a small loss anywhere."""
    v = np.asarray(values, float)
    low = float(v.min())
    return low - temperature * float(np.log(np.mean(np.exp(-(v - low) / temperature))))


def selective_objective(result: dict, clean: dict | None = None) -> float:
    """The objective collapse cannot win (issue 31), in [0, 1]: the geometric mean of forgetting
    and keeping,

        sqrt(mean(UA_d, UA_g) * softmin_t(1 - deficit_i for i in SELECTIVE_KEEP_TERMS)),

    each deficit a keep term's drop below the clean model on the same images (`keep_deficits`;
    `clean`: the clean model's result, default the result's own `clean_rates`), the soft minimum
    at temperature `KEEP_SOFTMIN_TEMPERATURE`. Doing nothing scores 0; losing any one keep term
    entirely (collapse, refusing the concept's descriptions) scores near 0 whatever it forgets;
    a selective edit scores about sqrt(UA x (1 - its worst deficit))."""
    reference = clean if clean is not None else result.get("clean_rates")
    if reference is None:
        from sauce_jax.errors import InputError

        raise InputError("the selective objective compares with the clean model: the result has no clean_rates "
                         "(an older run) and no clean result was given")
    forget = _mean_of(result, FORGET_TERMS)
    deficits = keep_deficits(result, clean)
    if not deficits:
        return 0.0
    keep = min(1.0, max(0.0, soft_minimum([1.0 - d for d in deficits.values()])))
    return float(np.sqrt(forget * keep))


def keeps_clean(result: dict, clean: dict | None = None, margin: float = KEEP_MARGIN) -> bool:
    """The pass/fail column beside the selective objective: every keep term within `margin`
    (default `KEEP_MARGIN`, 3 points) of the clean model."""
    return all(d <= margin + 1e-9 for d in keep_deficits(result, clean).values())


# The objectives a grid may maximise (`DemoConfig.objective`).
OBJECTIVES = {"compensatory": compensatory_objective, "selective": selective_objective}
