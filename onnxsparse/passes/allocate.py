"""Allocate per-group pruning ratios to a budget: a multiple-choice knapsack over a loss table.

Every group ``g`` offers options ``o`` (kept widths), each with a predicted loss
``loss[g][o]`` (the output error of pruning that group alone to that width,
:mod:`onnxsparse.passes.sensitivity`) and a cost ``cost[g][o]`` (MACs, params or
latency the group still carries at that width).  Choose one option per group
minimising ``sum loss`` subject to ``sum cost <= budget``.

Two solvers (docs/prune.md "Targets"; METHODS.md "Allocating per-group ratios to a
target"):

* :func:`solve_dp` - dynamic programming over a discretised budget (SPDY, Frantar &
  Alistarh 2022).  Costs are rounded *up* to the budget grid, so the chosen options fit
  the real budget; with integer costs and ``bins=None`` it is exact.
* :func:`solve_lagrangian` - per group the option minimising ``loss + lam * cost``,
  bisecting ``lam`` to the smallest value that fits.  Optimal for the budget equal to
  the cost it reaches (a point of the lower convex hull); may leave budget unused when
  the optimum is not on the hull.

Pure numpy, no model: the tables are built by :mod:`onnxsparse.passes.prune_target`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Allocation", "solve_dp", "solve_lagrangian", "solve", "SOLVERS", "min_cost", "pareto_merge"]

#: the grid the DP discretises a non-integer budget into
DEFAULT_BINS = 4000
#: integer budgets up to this are solved exactly (no rounding) by :func:`solve_dp` with ``bins=None``
EXACT_LIMIT = 200_000


@dataclass(frozen=True)
class Allocation:
    """One option index per group, and the totals they reach."""

    choice: tuple[int, ...]
    loss: float
    cost: float
    lam: float | None = None  #: the multiplier (Lagrangian solver only)


def _tables(losses: Sequence[Sequence[float]], costs: Sequence[Sequence[float]]) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(losses) != len(costs):
        raise ValueError(f"{len(losses)} loss rows but {len(costs)} cost rows")
    out = []
    for g, (l, c) in enumerate(zip(losses, costs)):
        l_arr, c_arr = np.asarray(l, dtype=np.float64), np.asarray(c, dtype=np.float64)
        if l_arr.ndim != 1 or l_arr.shape != c_arr.shape or l_arr.size == 0:
            raise ValueError(f"group {g}: loss and cost must be equal-length, non-empty 1-D, "
                             f"got {l_arr.shape} and {c_arr.shape}")
        if np.any(c_arr < 0) or not np.all(np.isfinite(c_arr)):
            raise ValueError(f"group {g}: costs must be finite and >= 0")
        if np.any(np.isnan(l_arr)):
            raise ValueError(f"group {g}: a loss is NaN")
        out.append((l_arr, c_arr))
    return out


def _finish(tables, choice: Sequence[int], lam: float | None = None) -> Allocation:
    loss = float(sum(t[0][o] for t, o in zip(tables, choice)))
    cost = float(sum(t[1][o] for t, o in zip(tables, choice)))
    return Allocation(tuple(int(o) for o in choice), loss, cost, lam)


def min_cost(costs: Sequence[Sequence[float] | np.ndarray]) -> float:
    """The smallest total cost any choice reaches (the cheapest option of every group)."""
    return float(sum(np.min(np.asarray(c, dtype=np.float64)) for c in costs))


def solve_dp(
    losses: Sequence[Sequence[float]],
    costs: Sequence[Sequence[float]],
    budget: float,
    *,
    bins: int | None = DEFAULT_BINS,
    floor: float | None = None,
) -> Allocation | None:
    """Least total loss with total cost ``<= budget`` (and ``>= floor`` if given; ``None`` when no choice fits).

    The budget is split into ``bins`` steps and each cost rounded up to whole steps
    (so a choice found fits the real budget; ``floor`` is compared on the same grid).
    ``bins=None``: integer costs and budget are used as they are (exact), when the budget
    is at most ``EXACT_LIMIT``.  ``floor`` serves a target to land near, not just under: a
    choice far below the budget can have the least loss and still miss the target.
    """
    tables = _tables(losses, costs)
    if budget < 0 or not math.isfinite(budget):
        return None
    integral = all(np.all(c == np.round(c)) for _, c in tables) and float(budget) == round(budget)
    if bins is None and integral and budget <= EXACT_LIMIT:
        step, size = 1.0, int(budget)
    else:
        size = int(bins or DEFAULT_BINS)
        step = float(budget) / size if budget > 0 else 1.0
    steps = [np.ceil(c / step - 1e-9).astype(np.int64) if budget > 0 else np.where(c > 0, size + 1, 0)
             for _, c in tables]
    # best[b]: least loss of the groups so far within capacity b (with a floor: at exactly b steps)
    best = np.zeros(size + 1)
    if floor is not None:
        best[1:] = np.inf
    picks: list[np.ndarray] = []
    for (loss, _), cost in zip(tables, steps):
        new = np.full(size + 1, np.inf)
        arg = np.full(size + 1, -1, dtype=np.int32)
        for o in np.argsort(cost, kind="stable"):
            c = int(cost[o])
            if c > size:
                continue
            cand = np.full(size + 1, np.inf)
            cand[c:] = best[: size + 1 - c] + loss[o]
            better = cand < new
            new[better] = cand[better]
            arg[better] = o
        best = new
        picks.append(arg)
    b = size
    if floor is not None:
        low = max(0, min(size + 1, int(math.ceil(float(floor) / step - 1e-9))))
        if low > size or not np.any(np.isfinite(best[low:])):
            return None
        b = low + int(np.argmin(best[low:]))
    if not np.isfinite(best[b]):
        return None
    choice: list[int] = []
    for arg, cost in zip(reversed(picks), reversed(steps)):
        o = int(arg[b])
        choice.append(o)
        b -= int(cost[o])
    return _finish(tables, choice[::-1])


def _pick(tables, lam: float) -> list[int]:
    out = []
    for loss, cost in tables:
        value = loss + lam * cost
        # least value; ties to the cheaper option, then the lower index
        out.append(int(np.lexsort((np.arange(loss.size), cost, value))[0]))
    return out


def solve_lagrangian(
    losses: Sequence[Sequence[float]],
    costs: Sequence[Sequence[float]],
    budget: float,
    *,
    iterations: int = 100,
) -> Allocation | None:
    """Per group the option minimising ``loss + lam * cost``, ``lam`` bisected to the smallest that fits."""
    tables = _tables(losses, costs)

    def total(choice: list[int]) -> float:
        return float(sum(t[1][o] for t, o in zip(tables, choice)))

    zero = _pick(tables, 0.0)
    if total(zero) <= budget:
        return _finish(tables, zero, 0.0)
    if min_cost([c for _, c in tables]) > budget:
        return None
    hi = 1.0
    while total(_pick(tables, hi)) > budget:
        hi *= 2.0
        if hi > 1e300:  # pragma: no cover - min_cost fits, so a large enough lam does
            return None
    lo = 0.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if total(_pick(tables, mid)) <= budget:
            hi = mid
        else:
            lo = mid
    return _finish(tables, _pick(tables, hi), hi)


SOLVERS = {"dp": solve_dp, "lagrangian": solve_lagrangian}


def solve(losses, costs, budget: float, method: str = "dp", *, floor: float | None = None) -> Allocation | None:
    """:func:`solve_dp` or :func:`solve_lagrangian` by name (``floor``: the DP only; the Lagrangian ignores it)."""
    if method == "dp":
        return solve_dp(losses, costs, budget, floor=floor)
    if method == "lagrangian":
        return solve_lagrangian(losses, costs, budget)
    raise ValueError(f"unknown allocation solver {method!r} (choose from {', '.join(SOLVERS)})")


def pareto_merge(losses: Sequence[Sequence[float]], costs: Sequence[Sequence[float]],
                 limit: int = 4096) -> list[tuple[float, float, tuple[int, ...]]]:
    """The (loss, cost, choice) of the choices of several groups that no other choice beats on both.

    Groups that share a fate (a residual block's inner groups, which the block's removal replaces)
    become one knapsack item whose options are their combined choices; a dominated combination is
    never in an optimum, so dropping it keeps the knapsack exact.  Merged one group at a time, the
    frontier thinned to ``limit`` points (evenly by cost) only if it grows beyond that.
    """
    tables = _tables(losses, costs)
    front: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]
    for loss, cost in tables:
        points = sorted(((fl + float(loss[o]), fc + float(cost[o]), (*ch, o))
                         for fl, fc, ch in front for o in range(loss.size)), key=lambda p: (p[1], p[0]))
        front = []
        for p in points:  # cost ascending: keep a point only if it loses less than every cheaper one
            if not front or p[0] < front[-1][0]:
                front.append(p)
        if len(front) > limit:
            picks = np.unique(np.linspace(0, len(front) - 1, limit).round().astype(np.int64))
            front = [front[i] for i in picks]
    return front
