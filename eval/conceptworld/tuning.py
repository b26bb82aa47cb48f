"""Matched tuning: every method's hyperparameters chosen on the validation split, from a grid of
the same size, by the same declared objective (`sauce.objective`), with one rule for edges.

A grid is a product of `Axis` values. `search` scores every point (a score function per point,
memoised so overlapping points are scored once) and, when the best point sits on an edge of an
axis that can go further, moves the grid one position along that axis (same number of values,
so the same budget) and scores the moved grid: the old best is inside it, so the search can
only improve. It moves at most `moves` times; a best point still on an edge after that is
reported in `"edge"`, so a reader sees that the grid did not bracket the optimum.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable

from sauce_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Axis:
    """One hyperparameter's grid values (in order) and the range a move may reach."""

    name: str
    values: tuple
    low: float = -math.inf
    high: float = math.inf
    integer: bool = False

    def __post_init__(self):
        if not self.values or len(set(self.values)) != len(self.values):
            raise ConfigError(f"grid axis {self.name}={self.values}: give distinct values")
        if any(not self.low <= v <= self.high for v in self.values):
            raise ConfigError(f"grid axis {self.name}={self.values}: values must lie in [{self.low}, {self.high}]")

    def beyond(self, side: str):
        """The value one geometric step past the `side` ("low" end = first value, "high" = last),
        or None where the axis cannot go further (one value, a bound, or a repeat)."""
        if len(self.values) < 2:
            return None
        a, b = (self.values[1], self.values[0]) if side == "low" else (self.values[-2], self.values[-1])
        value = b * (b / a) if a != 0 else None  # the grid's own ratio (1e-4, 3e-4 -> 9e-4; -1, -2 -> -4)
        if value is None:
            return None
        if self.integer:
            value = int(round(value))
        if not self.low <= value <= self.high or value in self.values:
            return None
        return value

    def moved(self, side: str) -> Axis:
        value = self.beyond(side)
        values = (value, *self.values[:-1]) if side == "low" else (*self.values[1:], value)
        return dataclasses.replace(self, values=values)


def points(axes: list[Axis]) -> list[dict]:
    return [dict(zip((a.name for a in axes), combo)) for combo in itertools.product(*(a.values for a in axes))]


def label(point: dict) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def _edges(axes: list[Axis], best: dict) -> dict[str, str]:
    """{axis name: "low" | "high"} for each axis whose best value is an end of its grid."""
    out = {}
    for axis in axes:
        if len(axis.values) > 1 and best[axis.name] == axis.values[0]:
            out[axis.name] = "low"
        elif len(axis.values) > 1 and best[axis.name] == axis.values[-1]:
            out[axis.name] = "high"
    return out


def search(axes: list[Axis], score: Callable[[dict], float], *, moves: int = 1) -> dict:
    """The best point of the grid (ties: the first in grid order), moving the grid off an edge
    up to `moves` times. Returns {"best": point, "score", "grid": {label: score} of every point
    scored, "grids": [[axis values...] per grid scored], "moved": [{axis: side}, ...], "edge":
    {axis: side} where the final best still sits on a movable edge}."""
    memo: dict[str, float] = {}
    history: list[dict] = []
    grids = []
    spans = {a.name: a for a in axes}  # every value explored per axis, in grid order
    while True:
        grids.append({a.name: list(a.values) for a in axes})
        grid = points(axes)
        for point in grid:
            if label(point) not in memo:
                memo[label(point)] = float(score(point))
        best = max(grid, key=lambda p: memo[label(p)])  # max keeps the first of equal scores
        movable = {name: side for name, side in _edges(axes, best).items()
                   if next(a for a in axes if a.name == name).beyond(side) is not None}
        if not movable or len(history) >= moves:
            break
        history.append(movable)
        for name, side in movable.items():
            value = spans[name].beyond(side) if spans[name].values[0 if side == "low" else -1] == best[name] else None
            if value is not None:
                span = spans[name].values
                spans[name] = dataclasses.replace(spans[name], values=(value, *span) if side == "low" else (*span, value))
        axes = [a.moved(movable[a.name]) if a.name in movable else a for a in axes]
    # An edge is reported against everything explored: a best point at the low end of a grid
    # that moved up is inside the explored range, not on its edge.
    edge = {name: side for name, side in _edges(list(spans.values()), best).items()
            if spans[name].beyond(side) is not None}
    return {"best": best, "score": memo[label(best)], "grid": {k: round(v, 4) for k, v in memo.items()},
            "grids": grids, "moved": history, "edge": edge}
