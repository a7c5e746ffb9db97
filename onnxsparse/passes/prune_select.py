"""Choose which root indices to remove, given scores per group.

* uniform (default): every prunable group loses ``floor(ratio * size)`` units,
  its lowest-scoring ones;
* global: scores are divided by their group's mean (so groups with large
  weights do not dominate) - or standardised, ``(s - mean) / std``, for
  criteria that ask for it (``flap``) - all units are ranked together and the
  lowest ``floor(ratio * total)`` go, except each group's best ``min_keep``.

Then the kept count of every group is rounded to a multiple of ``round_to``
(nearest, at least ``round_to``, never above the group size) and raised to
``min_keep``; the lowest-scoring units are removed to meet it.  ``round_to``
may be a mapping group id -> multiple (units of some groups hold several
channels, see :func:`unit_multiple`).  Ties break by index, so selection is
deterministic.

* threshold (:func:`select_threshold`): every unit whose raw score is below an
  absolute ``T`` goes, with no ratio (the way back from group-lasso training,
  which drives whole groups to zero); rounding and ``min_keep`` only ever keep more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Union

import numpy as np

from ..errors import UsageError

__all__ = ["keep_count", "round_keep", "unit_multiple", "select_uniform", "select_global", "select",
           "select_threshold", "select_per_group"]

RoundTo = Union[int, Mapping[int, int]]


def unit_multiple(round_to: int, channels_per_unit: int) -> int:
    """Units to keep in multiples of this so that ``units * channels_per_unit`` is a multiple of ``round_to``."""
    return round_to // math.gcd(round_to, max(channels_per_unit, 1))


def _rt(round_to: RoundTo, gid: int) -> int:
    return round_to if isinstance(round_to, int) else int(round_to.get(gid, 1))


def round_keep(keep: int, size: int, round_to: int) -> int:
    """Round a kept count to a multiple of ``round_to`` that fits in ``size``."""
    if round_to <= 1 or size < round_to:
        return keep
    cand = round_to * int(math.floor(keep / round_to + 0.5))
    cand = max(cand, round_to)
    if cand > size:
        cand = round_to * (size // round_to)
    return cand


def _finish(keep: int, size: int, round_to: int, min_keep: int) -> int:
    keep = round_keep(keep, size, round_to)
    keep = max(keep, min(max(min_keep, 1), size))
    return min(keep, size)


def keep_count(size: int, ratio: float, round_to: int = 1, min_keep: int = 1) -> int:
    """Units a group of ``size`` keeps when ``ratio`` of them are removed."""
    remove = int(math.floor(ratio * size + 1e-9))
    return _finish(size - remove, size, round_to, min_keep)


def _lowest(scores: np.ndarray, count: int) -> np.ndarray:
    order = np.lexsort((np.arange(scores.size), scores))
    return np.sort(order[:count])


def _check(ratio: float, round_to: RoundTo, min_keep: int) -> None:
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"channel ratio must be in [0, 1), got {ratio}")
    if min(([round_to] if isinstance(round_to, int) else list(round_to.values())) or [1]) < 1:
        raise UsageError(f"round-to must be >= 1, got {round_to}")
    if min_keep < 1:
        raise UsageError(f"min-keep must be >= 1, got {min_keep}")


def select_uniform(
    scores: Mapping[int, np.ndarray], ratio: float, *, round_to: RoundTo = 1, min_keep: int = 1
) -> dict[int, np.ndarray]:
    _check(ratio, round_to, min_keep)
    removed: dict[int, np.ndarray] = {}
    for gid, s in scores.items():
        keep = keep_count(s.size, ratio, _rt(round_to, gid), min_keep)
        if keep < s.size:
            removed[gid] = _lowest(s, s.size - keep)
    return removed


def _normalised(s: np.ndarray, norm: str) -> np.ndarray:
    if norm == "standardize":
        std = float(np.std(s))
        return (s - float(np.mean(s))) / std if std > 0 else np.zeros_like(s)
    if norm != "mean":
        raise ValueError(f"unknown score normalisation {norm!r} (use 'mean' or 'standardize')")
    mean = float(np.mean(np.abs(s)))
    return s / mean if mean > 0 else np.zeros_like(s)


def select_global(
    scores: Mapping[int, np.ndarray],
    ratio: float,
    *,
    round_to: RoundTo = 1,
    min_keep: int = 1,
    norm: str = "mean",
) -> dict[int, np.ndarray]:
    _check(ratio, round_to, min_keep)
    if not scores:
        return {}
    gids, idx, vals = [], [], []
    total = 0
    for gid, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        total += s.size
        scaled = _normalised(s, norm)
        protect = min(max(min_keep, 1), s.size)
        order = np.lexsort((np.arange(s.size), scaled))
        eligible = order[: s.size - protect]
        gids.append(np.full(eligible.size, gid, dtype=np.int64))
        idx.append(eligible)
        vals.append(scaled[eligible])
    gid_all, idx_all, val_all = np.concatenate(gids), np.concatenate(idx), np.concatenate(vals)
    budget = min(int(math.floor(ratio * total + 1e-9)), val_all.size)
    chosen = np.lexsort((idx_all, gid_all, val_all))[:budget]
    counts = dict(zip(*np.unique(gid_all[chosen], return_counts=True)))
    removed: dict[int, np.ndarray] = {}
    for gid, s in scores.items():
        keep = _finish(s.size - int(counts.get(gid, 0)), s.size, _rt(round_to, gid), min_keep)
        if keep < s.size:
            removed[gid] = _lowest(np.asarray(s, dtype=np.float64), s.size - keep)
    return removed


def select_per_group(
    scores: Mapping[int, np.ndarray], ratios: Mapping[int, float], *, round_to: RoundTo = 1, min_keep: int = 1
) -> dict[int, np.ndarray]:
    """Each group loses its own ratio (``prune --target``'s allocation) of its lowest-scoring units."""
    removed: dict[int, np.ndarray] = {}
    for gid, s in scores.items():
        ratio = float(ratios.get(gid, 0.0))
        _check(ratio, round_to, min_keep)
        keep = keep_count(s.size, ratio, _rt(round_to, gid), min_keep)
        if keep < s.size:
            removed[gid] = _lowest(s, s.size - keep)
    return removed


def select(
    scores: Mapping[int, np.ndarray],
    ratio: float,
    *,
    global_ranking: bool = False,
    round_to: RoundTo = 1,
    min_keep: int = 1,
    norm: str = "mean",
    group_ratios: Mapping[int, float] | None = None,
) -> dict[int, np.ndarray]:
    """Uniform or global selection; ``norm`` is the global per-group score normalisation.
    ``group_ratios`` (group id -> ratio) replaces ``ratio`` per group (groups not in it lose nothing)."""
    if group_ratios is not None:
        return select_per_group(scores, group_ratios, round_to=round_to, min_keep=min_keep)
    if global_ranking:
        return select_global(scores, ratio, round_to=round_to, min_keep=min_keep, norm=norm)
    return select_uniform(scores, ratio, round_to=round_to, min_keep=min_keep)


def select_threshold(
    scores: Mapping[int, np.ndarray], threshold: float, *, round_to: RoundTo = 1, min_keep: int = 1
) -> dict[int, np.ndarray]:
    """Remove the units scoring below ``threshold`` (raw criterion scores, as ``inspect`` shows them).

    A unit at or above ``threshold`` is never removed: the kept count is raised to ``min_keep`` and
    rounded *up* to a multiple of ``round_to`` (all units stay when no multiple fits).
    """
    if not math.isfinite(threshold) or threshold < 0:
        raise UsageError(f"threshold must be a finite number >= 0, got {threshold}")
    _check(0.0, round_to, min_keep)
    removed: dict[int, np.ndarray] = {}
    for gid, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        keep = max(int(np.count_nonzero(~(s < threshold))), min(min_keep, s.size))
        multiple = _rt(round_to, gid)
        if multiple > 1 and keep % multiple:
            keep = min(s.size, multiple * math.ceil(keep / multiple))
        if keep < s.size:
            removed[gid] = _lowest(s, s.size - keep)
    return removed
