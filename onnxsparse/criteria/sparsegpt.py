"""``sparsegpt``: OBS saliency with the kept weights updated (element-wise only, ``sparsify``).

The work is a reconstruction (:mod:`onnxsparse.sparsity.sparsegpt`, Frantar &
Alistarh 2023), which the sparsify pass runs instead of scoring; masks it needs
before any update follow ``wanda``.  :meth:`SparseGPTCriterion.score_weight` is
only used where no Hessian is available: the magnitude fallback.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Criterion, WeightContext, register_criterion

__all__ = ["SparseGPTCriterion"]


@register_criterion("sparsegpt")
class SparseGPTCriterion(Criterion):
    description = "OBS saliency, kept weights updated to compensate (needs --calib; unstructured or N:M)"
    requires_data: ClassVar[bool] = True
    reconstructs: ClassVar[bool] = True

    def score_weight(self, weight: np.ndarray, ctx: WeightContext) -> np.ndarray:
        return np.abs(weight)
