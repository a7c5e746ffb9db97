"""``bn``: the magnitude of the normalisation scale (Network Slimming, Liu et al. 2017).

Sums ``|gamma|`` over every normalisation scale in the group (BatchNorm,
InstanceNorm, per-channel GroupNorm).  Groups without one cannot be scored.
"""

from __future__ import annotations

import numpy as np

from ..errors import Decline
from ..graph import Group, Role
from .base import Criterion, ScoringContext, register_criterion

__all__ = ["BNScaleCriterion"]


@register_criterion("bn")
class BNScaleCriterion(Criterion):
    description = "|gamma| of the BatchNorm (normalisation) scales in the group"

    def score(self, group: Group, ctx: ScoringContext) -> np.ndarray:
        total: np.ndarray | None = None
        for w in ctx.weights(group):
            if Role.SCALE in w.roles:
                part = w.per_unit("abs")
                total = part if total is None else total + part
        if total is None:
            raise Decline("no normalisation scale in the group")
        return total
