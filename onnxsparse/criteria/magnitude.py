"""Magnitude criteria: the norm of every weight a root index owns, over the whole group.

A root index owns rows of its producers (conv filters, Gemm rows) and columns of
its consumers (next conv's input channel, the ``H*W`` block of a Gemm after
Flatten), across every member of the group - residual partners included.
``l1`` sums ``|w|``; ``l2`` is the Euclidean norm of all of them together.
Biases and normalisation parameters are not counted.

``magnitude`` is the element-wise form (``sparsify``): ``|w|`` per weight.
"""

from __future__ import annotations

import numpy as np

from ..errors import Decline
from ..graph import Group, Role
from .base import Criterion, ScoringContext, WeightContext, register_criterion

__all__ = ["L1Criterion", "L2Criterion", "MagnitudeCriterion"]

_ROLES = frozenset({Role.PRODUCE, Role.CONSUME})


def _sum(group: Group, ctx: ScoringContext, kind: str) -> np.ndarray:
    total = np.zeros(group.size, dtype=np.float64)
    found = False
    for w in ctx.weights(group):
        if w.roles & _ROLES:
            total += w.per_unit(kind)
            found = True
    if not found:
        raise Decline("no producer or consumer weights in the group")
    return total


@register_criterion("l2")
class L2Criterion(Criterion):
    description = "L2 norm of every weight the channel owns, across the group"

    def score(self, group: Group, ctx: ScoringContext) -> np.ndarray:
        return np.sqrt(_sum(group, ctx, "sq"))


@register_criterion("l1")
class L1Criterion(Criterion):
    description = "L1 norm of every weight the channel owns, across the group"

    def score(self, group: Group, ctx: ScoringContext) -> np.ndarray:
        return _sum(group, ctx, "abs")


@register_criterion("magnitude")
class MagnitudeCriterion(Criterion):
    description = "|W| (dequantized for int8/uint8 weights)"

    def score_weight(self, weight: np.ndarray, ctx: WeightContext) -> np.ndarray:
        return np.abs(weight)
