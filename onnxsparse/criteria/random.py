"""``random``: a seeded baseline - any criterion worth using should beat it."""

from __future__ import annotations

import numpy as np

from ..graph import Group
from .base import Criterion, ScoringContext, register_criterion

__all__ = ["RandomCriterion"]


@register_criterion("random")
class RandomCriterion(Criterion):
    description = "uniform random scores (seeded baseline)"

    def score(self, group: Group, ctx: ScoringContext) -> np.ndarray:
        return ctx.rng.random(group.size)
