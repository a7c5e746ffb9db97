"""Activation-aware criteria: weights of the consumers times statistics of what they read.

All three score a channel ``j`` through every consumer contraction that sums
over it (``W`` viewed as ``[out, in]``; for a Conv a channel owns ``kh*kw``
columns; statistics are per channel over every other axis, e.g. ``N, H, W``):

=============  ========================================================  =========================
name           score of channel ``j`` (summed over consumers)            reference
=============  ========================================================  =========================
``activation`` ``sqrt(sum ||W[:, j]||^2 * E[x_j^2])``: the RMS this      -
               channel adds to the consumers' outputs
``wanda``      ``sum_i |W[i, j]| * ||x_j||``                              Sun et al. 2023
``flap``       ``Var(x_j) * ||W[:, j]||^2``: the part of the output a     An et al. 2024
               bias cannot replace; standardised per group for
               ``--global``
=============  ========================================================  =========================

``||x_j||`` is the RMS (L2 norm / sqrt(count)), so a channel read by two
consumers with different numbers of positions (a conv and a Gemm after global
pooling) sums comparable terms; within one consumer the ranking is Wanda's.

Criteria need :func:`onnxsparse.calibration.capture.capture` statistics under
``ScoringContext.extras["calibration"]``; the prune pass raises a
:class:`~onnxsparse.errors.UsageError` without ``--calib``.  A group with no
weighted consumer contraction raises :class:`~onnxsparse.errors.Decline` (the
caller falls back to ``l2`` and says so).

``wanda`` also scores single weights for ``sparsify`` (:meth:`WandaCriterion.score_weight`):
``|W_ij| * ||X_j||`` from per-input-feature norms measured by
:mod:`onnxsparse.sparsity.activations`.

:func:`score_positions` applies the same formulas to heads and FFN neurons
(weights = output-projection rows, statistics = its input features).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import Decline
from ..graph import Group
from ._data import ConsumerTerm, Moments, consumer_terms
from .base import Criterion, ScoringContext, WeightContext, register_criterion

__all__ = ["DataCriterion", "ActivationCriterion", "WandaCriterion", "FlapCriterion", "UnitTerm", "score_units"]


class DataCriterion(Criterion):
    """Base of the activation-aware criteria: a per-position contribution, summed per unit."""

    requires_data: ClassVar[bool] = True

    def contribution(self, w_abs: np.ndarray, w_sq: np.ndarray, act: Moments) -> np.ndarray:
        raise NotImplementedError

    def finish(self, total: np.ndarray) -> np.ndarray:
        return total

    def _term(self, term: ConsumerTerm) -> np.ndarray:
        w = term.weight
        wp, ap = w.positions, term.act_positions
        w_abs, w_sq = w.per_position("abs"), w.per_position("sq")
        if wp.shape[1] == ap.shape[1]:  # one activation position per weight position (Flatten -> Gemm too)
            return self.contribution(w_abs[wp], w_sq[wp], Moments.of(term.stats, ap)).sum(axis=1)
        # e.g. a grouped conv: one weight column serves one channel of every group
        return self.contribution(w_abs[wp].sum(axis=1), w_sq[wp].sum(axis=1), Moments.of(term.stats, ap).averaged())

    def score(self, group: Group, ctx: ScoringContext) -> np.ndarray:
        terms = consumer_terms(group, ctx)
        if not terms:
            raise Decline("no weighted consumer with calibration statistics")
        total = np.zeros(group.size, dtype=np.float64)
        for term in terms:
            total += self._term(term)
        return self.finish(total)


@register_criterion("activation")
class ActivationCriterion(DataCriterion):
    description = "RMS contribution to the consumers: sqrt(sum ||W[:,j]||^2 E[x_j^2]) (needs --calib)"

    def contribution(self, w_abs: np.ndarray, w_sq: np.ndarray, act: Moments) -> np.ndarray:
        return w_sq * act.mean_sq

    def finish(self, total: np.ndarray) -> np.ndarray:
        return np.sqrt(total)


@register_criterion("wanda")
class WandaCriterion(DataCriterion):
    """Wanda (Sun et al. 2023) at both granularities: ``|W_ij| * ||X_j||`` per weight, summed per channel."""

    description = "Wanda: |W[i,j]| * ||x_j||, per weight or summed over a channel's consumers (needs --calib)"

    def contribution(self, w_abs: np.ndarray, w_sq: np.ndarray, act: Moments) -> np.ndarray:
        return w_abs * act.rms

    def score_weight(self, weight: np.ndarray, ctx: WeightContext) -> np.ndarray:
        """``ctx.stats[name]`` holds one norm per index of the weight's reduction axis (input channels
        of a Conv, ``K`` of a MatMul), or an array already broadcastable to the weight (grouped Conv:
        ``[O, C/group, 1, 1]``)."""
        info = ctx.info
        norms = None if ctx.stats is None else ctx.stats.get(info.name)
        if norms is None:
            raise Decline(f"criterion wanda needs input-feature norms for {info.name!r} (calibration data)",
                          subject=info.name)
        norms = np.asarray(norms)
        if norms.ndim == weight.ndim and norms.ndim > 1:
            return np.abs(weight) * norms
        if info.in_axis is None:
            raise Decline(f"criterion wanda: {info.name!r} has no single reduction axis", subject=info.name)
        norms = np.asarray(norms, dtype=np.float64).reshape(-1)
        if norms.size != weight.shape[info.in_axis]:
            raise Decline(f"criterion wanda: {info.name!r} needs {weight.shape[info.in_axis]} norms, "
                          f"got {norms.size}", subject=info.name)
        shape = [1] * weight.ndim
        shape[info.in_axis] = norms.size
        return np.abs(weight) * norms.reshape(shape)


@register_criterion("flap")
class FlapCriterion(DataCriterion):
    description = "FLAP fluctuation: Var(x_j) * ||W[:,j]||^2; pairs with --repair bias (needs --calib)"
    global_norm: ClassVar[str] = "standardize"

    def contribution(self, w_abs: np.ndarray, w_sq: np.ndarray, act: Moments) -> np.ndarray:
        return w_sq * act.var


@dataclass(frozen=True)
class UnitTerm:
    """A consumer weight whose positions along ``axis`` belong to units ``owner`` (-1: none), with input statistics."""

    array: np.ndarray
    axis: int
    owner: np.ndarray
    stats: Any  #: ChannelStats of the consumer's input feature axis (one entry per position)


def _reduce(array: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0).reshape(array.shape[axis], -1)
    return np.abs(a).sum(axis=1), np.square(a).sum(axis=1)


def score_units(criterion: Criterion, terms: Sequence[UnitTerm], n_units: int) -> np.ndarray:
    """Scores of heads / FFN neurons (units) by a :class:`DataCriterion`; :class:`Decline` for another
    criterion or no terms."""
    if not isinstance(criterion, DataCriterion):
        raise Decline(f"criterion {criterion.name} is not activation-aware")
    if not terms:
        raise Decline("no consumer weight with calibration statistics")
    total = np.zeros(n_units, dtype=np.float64)
    for t in terms:
        w_abs, w_sq = _reduce(t.array, t.axis)
        positions = np.arange(w_abs.size)
        part = criterion.contribution(w_abs, w_sq, Moments.of(t.stats, positions))
        mask = t.owner >= 0
        total += np.bincount(t.owner[mask], weights=part[mask], minlength=n_units)
    return criterion.finish(total)
