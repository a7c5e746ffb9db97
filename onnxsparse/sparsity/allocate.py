"""Per-tensor sparsity ratios whose parameter-weighted average is a model-wide target.

One ratio for every tensor is far from optimal: tensors differ in sensitivity by
orders of magnitude (METHODS.md, "Allocating per-group ratios").  Allocators:

* ``uniform``: every tensor gets the target;
* ``owl`` (Yin et al. 2024, "Outlier Weighed Layerwise sparsity", arXiv 2310.05175):
  per tensor the outlier ratio ``D_l`` = fraction of scores above ``M`` x the tensor's
  mean score (Wanda scores ``|W_ij| * ||X_j||`` with calibration data, ``|W|`` without);
  following the authors' code, ``D`` is min-max scaled to ``[0, 2λ]`` and the density
  ``1 - s_l`` is that plus a constant, so ratios span ``2λ`` around the target and more
  outliers mean lower sparsity;
* ``sensitivity``: per tensor, the measured relative output error of pruning it alone at
  a ladder of ratios (:mod:`onnxsparse.sparsity.layer_errors`), interpolated; the ratios
  minimise the summed error at the target (Lagrangian relaxation: per tensor, the ratio
  minimising ``err + λ·kept_params``, bisecting ``λ``).

Every continuous allocation ends with :func:`match_average`, which shifts the ratios
by one constant (clipped to ``[0, cap]``) so the parameter-weighted average is exactly
the target.  N:M allows few levels per tensor (dense, or keep ``k <= N`` of M):
:func:`knapsack` picks them exactly (average at least the target, up to rounding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import UsageError

__all__ = [
    "ALLOCATORS",
    "AUTO",
    "DEFAULT_ALLOCATOR",
    "DEFAULT_CAP",
    "DEFAULT_LADDER",
    "OWL_LAMBDA",
    "OWL_THRESHOLD",
    "match_average",
    "outlier_ratio",
    "owl",
    "knapsack",
    "lagrangian",
    "weighted_average",
]

#: allocation methods; ``auto`` (the default) is ``sensitivity`` when calibration data is given, else
#: ``uniform``: measured on the digits samples (docs/sparsity.md), sensitivity kept the most accuracy
#: at every target and criterion, while data-free OWL lost to uniform in 13 of 18 settings
ALLOCATORS: tuple[str, ...] = ("uniform", "owl", "sensitivity")
AUTO = "auto"
DEFAULT_ALLOCATOR = AUTO
#: OWL's λ (ratios span 2λ) and outlier threshold M (x the mean score); the paper's values
OWL_LAMBDA = 0.08
OWL_THRESHOLD = 5.0
#: no tensor is allocated more sparsity than this
DEFAULT_CAP = 0.99
#: ratios at which ``sensitivity`` measures each tensor's error (0 = no error is implied)
DEFAULT_LADDER: tuple[float, ...] = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: resolution of the Lagrangian search over ratios
_GRID = np.round(np.arange(0.0, DEFAULT_CAP + 1e-9, 0.01), 2)


def weighted_average(ratios: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """Parameter-weighted mean of ``ratios``."""
    total = sum(sizes[name] for name in ratios)
    return sum(ratios[name] * sizes[name] for name in ratios) / total if total else 0.0


def match_average(ratios: Mapping[str, float], sizes: Mapping[str, int], target: float,
                  cap: float = DEFAULT_CAP) -> dict[str, float]:
    """``clip(r + t, 0, cap)`` with the one shift ``t`` that makes the weighted average ``target``."""
    if not ratios:
        return {}
    if not 0.0 <= target <= cap:
        raise UsageError(f"a model-wide sparsity of {target} is outside [0, {cap}]")
    names = list(ratios)
    r = np.array([ratios[n] for n in names], dtype=np.float64)
    w = np.array([sizes[n] for n in names], dtype=np.float64)
    w = w / w.sum()

    def average(shift: float) -> float:
        return float(np.dot(np.clip(r + shift, 0.0, cap), w))

    lo, hi = -1.0 - cap, 1.0 + cap  # average(lo) = 0, average(hi) = cap
    for _ in range(100):  # bisection to float precision
        mid = (lo + hi) / 2
        if average(mid) < target:
            lo = mid
        else:
            hi = mid
    out = np.clip(r + (lo + hi) / 2, 0.0, cap)
    return {name: float(value) for name, value in zip(names, out)}


def outlier_ratio(scores: np.ndarray, threshold: float = OWL_THRESHOLD) -> float:
    """Fraction of ``scores`` above ``threshold`` x their mean (OWL's ``D_l``)."""
    flat = np.abs(np.asarray(scores, dtype=np.float64)).reshape(-1)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0
    mean = float(flat.mean())
    return float(np.count_nonzero(flat > threshold * mean)) / flat.size if mean > 0 else 0.0


def owl(outliers: Mapping[str, float], sizes: Mapping[str, int], target: float, lam: float = OWL_LAMBDA,
        cap: float = DEFAULT_CAP) -> dict[str, float]:
    """OWL ratios from per-tensor outlier ratios: more outliers, less sparsity (span ``2·lam``)."""
    if lam < 0:
        raise UsageError(f"OWL lambda must be >= 0, got {lam}")
    names = list(outliers)
    d = np.array([outliers[n] for n in names], dtype=np.float64)
    spread = float(d.max() - d.min()) if d.size else 0.0
    scaled = (d - d.min()) / spread * 2 * lam if spread > 0 else np.zeros_like(d)
    return match_average({n: float(-s) for n, s in zip(names, scaled)}, sizes, target, cap)


def _interpolate(curve: Sequence[tuple[float, float]], grid: np.ndarray) -> np.ndarray:
    points = sorted({0.0: 0.0, **{float(r): float(e) for r, e in curve}}.items())
    ratios = np.array([p[0] for p in points])
    errors = np.maximum.accumulate(np.array([p[1] for p in points]))  # more zeros never help: monotone
    return np.interp(grid, ratios, errors, right=np.inf)  # beyond the last measured ratio: not allowed


def lagrangian(curves: Mapping[str, Sequence[tuple[float, float]]], sizes: Mapping[str, int], target: float,
               cap: float = DEFAULT_CAP) -> dict[str, float]:
    """Ratios minimising the summed (interpolated) error at the weighted-average ``target``.

    ``curves[name]`` are measured ``(ratio, error)`` points (error 0 at ratio 0 is implied).
    For a multiplier ``lam`` each tensor takes the grid ratio minimising
    ``error - lam * ratio * params`` (error plus ``lam`` x kept params, up to a constant);
    ``lam`` is bisected to reach the target; the tensors whose choice changes across the
    final bracket (the marginal ones) are interpolated to hit it exactly.
    """
    names = list(curves)
    if not names:
        return {}
    grid = _GRID[_GRID <= cap]
    table = np.stack([_interpolate(curves[n], grid) for n in names])  # [tensors, grid]
    params = np.array([sizes[n] for n in names], dtype=np.float64)
    share = params / params.sum()

    def pick(lam: float) -> np.ndarray:
        return grid[np.argmin(table - lam * share[:, None] * grid[None, :], axis=1)]

    lo, hi = 0.0, 1.0
    while float(np.dot(pick(hi), share)) < target and hi < 1e12:
        hi *= 4
    for _ in range(80):
        mid = (lo + hi) / 2
        if float(np.dot(pick(mid), share)) < target:
            lo = mid
        else:
            hi = mid
    below, above = pick(lo), pick(hi)  # averages just under and at/over the target
    gap = float(np.dot(above - below, share))
    alpha = (target - float(np.dot(below, share))) / gap if gap > 0 else 1.0
    chosen = below + min(max(alpha, 0.0), 1.0) * (above - below)  # only the marginal tensors move
    return match_average({n: float(r) for n, r in zip(names, chosen)}, sizes, target, cap)


def knapsack(curves: Mapping[str, Sequence[tuple[float, float]]], sizes: Mapping[str, int], target: float,
             levels: Sequence[float], bins: int = 20000) -> dict[str, float]:
    """Each tensor at one of ``levels`` (N:M: dense or keep <= N of M), minimising the summed error with a
    weighted average of at least ``target`` (up to rounding: ``tensors / (2 * bins)``).

    Levels are few and far apart, so the Lagrangian's convex hull can miss the best mix
    (e.g. every tensor at N:M): solved exactly by dynamic programming over the average,
    discretised in ``bins`` steps (multiple-choice knapsack, METHODS.md).
    """
    names = list(curves)
    if not names:
        return {}
    grid = np.array(sorted(set(float(level) for level in levels)), dtype=np.float64)
    params = np.array([sizes[n] for n in names], dtype=np.float64)
    share = params / params.sum()
    errors = np.stack([_interpolate(curves[n], grid) for n in names])  # [tensors, levels]
    width = bins + len(names) + 1
    best = np.full(width, np.inf)
    best[0] = 0.0
    choice = np.zeros((len(names), width), dtype=np.int16)
    for i in range(len(names)):
        new = np.full(width, np.inf)
        for j, level in enumerate(grid):
            units = int(round(share[i] * level * bins))
            shifted = np.full(width, np.inf)
            shifted[units:] = best[: width - units] + errors[i, j]
            better = shifted < new
            new[better] = shifted[better]
            choice[i, better] = j
        best = new
    need = int(round(target * bins)) - len(names) // 2  # each tensor's units are rounded by <= 1/2
    feasible = np.arange(width) >= need
    if not np.isfinite(best[feasible]).any():
        raise UsageError(f"no mix of the levels {', '.join(f'{g:g}' for g in grid)} reaches {target:g}")
    at = int(np.flatnonzero(feasible)[np.argmin(best[feasible])])
    out: dict[str, float] = {}
    for i in range(len(names) - 1, -1, -1):
        j = int(choice[i, at])
        out[names[i]] = float(grid[j])
        at -= int(round(share[i] * grid[j] * bins))
    return out
