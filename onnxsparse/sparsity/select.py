"""Turn scores into keep-masks, per tensor or globally, and apply them exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..criteria import Criterion, WeightContext
from ..errors import Decline, UsageError
from .patterns import Pattern, select_lowest
from .weights import WeightInfo

__all__ = ["PruneTarget", "compute_masks", "apply_mask", "score_weight"]


@dataclass
class PruneTarget:
    """A weight to prune: its info, raw (stored-dtype) values and target sparsity."""

    info: WeightInfo
    raw: np.ndarray
    sparsity: float
    #: part of the global pool (same threshold across tensors) rather than ranked alone
    pooled: bool = False


def score_weight(criterion: Criterion, info: WeightInfo, real: np.ndarray,
                 stats: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """``criterion``'s element-wise scores of one weight.

    The user chose the criterion for every weight, so one it declines (norms of
    the wrong size, no reduction axis) is a :class:`UsageError`, with the reason.
    """
    try:
        return criterion.score_weight(real, WeightContext(info, stats))
    except Decline as exc:
        raise UsageError(str(exc)) from exc


def _scores(target: PruneTarget, criterion: Criterion,
            stats: Mapping[str, np.ndarray] | None) -> np.ndarray:
    real = target.info.real(target.raw)
    # float32 scores (float64 only for float64 weights): half the memory on huge tensors
    dtype = np.float64 if real.dtype == np.float64 else np.float32
    scores = np.asarray(score_weight(criterion, target.info, real, stats), dtype=dtype)
    if scores.shape != target.raw.shape:
        raise ValueError(f"criterion {criterion.name} returned shape {scores.shape} for {target.raw.shape}")
    # NaN weights are never "small": keep them (they are someone else's problem)
    fresh = scores is not real and scores.flags.owndata  # the criterion's own output: clean it in place
    return np.nan_to_num(scores, nan=np.inf, copy=not fresh)


def compute_masks(
    targets: Sequence[PruneTarget],
    pattern: Pattern,
    criterion: Criterion,
    *,
    stats: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """``{name: keep-mask}``; pooled targets share one ranking of pattern units."""
    masks: dict[str, np.ndarray] = {}
    pooled = [t for t in targets if t.pooled]
    for target in targets:
        if target.pooled:
            continue
        scores = _scores(target, criterion, stats)
        masks[target.info.name] = pattern.mask(scores, target.sparsity, target.info)
    if pooled:
        sparsity = pooled[0].sparsity
        units = [pattern.unit_scores(_scores(t, criterion, stats), t.info) for t in pooled]
        sizes = [u.size for u in units]
        everything = np.concatenate(units) if units else np.zeros(0)
        keep = np.ones(everything.size, dtype=bool)
        keep[select_lowest(everything, int(round(sparsity * everything.size)))] = False
        offset = 0
        for target, size in zip(pooled, sizes):
            masks[target.info.name] = pattern.expand(keep[offset: offset + size], target.info)
            offset += size
    return masks


def apply_mask(raw: np.ndarray, keep: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``raw`` with the dropped elements set to ``fill`` (kept ones untouched, bit for bit)."""
    out = np.array(raw, copy=True)
    out[~keep] = np.asarray(fill, dtype=raw.dtype)
    return out
