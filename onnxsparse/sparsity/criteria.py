"""Criteria that score individual weights; patterns then zero the lowest-scoring ones.

A criterion maps a real-valued weight (dequantized if needed) to a score of the
same shape: higher means keep.  ``magnitude`` needs nothing else.  Activation-
aware criteria (``needs_activations``) read per-input-feature statistics from
calibration through :class:`ScoreContext.stats` (``weight name -> array``,
measured by :mod:`onnxsparse.sparsity.activations`): ``wanda`` scores
``|W_ij| * ||X_j||`` (Sun et al. 2023).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .._registry import Registry
from ..errors import UsageError
from .weights import WeightInfo

__all__ = ["ScoreContext", "SparsityCriterion", "Magnitude", "Wanda", "SparseGPT", "SPARSITY_CRITERIA",
           "DEFAULT_CRITERIA", "get_criterion"]


@dataclass(frozen=True)
class ScoreContext:
    """What a criterion may look at besides the weight itself."""

    info: WeightInfo
    #: per-weight statistics from calibration (e.g. input-feature L2 norms), if any
    stats: Mapping[str, np.ndarray] | None = None


class SparsityCriterion:
    """Base class: ``score(weight, ctx)`` returns non-negative scores shaped like ``weight``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_activations: ClassVar[bool] = False
    #: also changes the kept weights (the pass calls a reconstruction, not ``score``)
    reconstructs: ClassVar[bool] = False

    def score(self, weight: np.ndarray, ctx: ScoreContext) -> np.ndarray:
        raise NotImplementedError


SPARSITY_CRITERIA: Registry[type[SparsityCriterion]] = Registry("sparsity criterion")


@SPARSITY_CRITERIA.register("magnitude")
class Magnitude(SparsityCriterion):
    name = "magnitude"
    summary = "|W| (dequantized for int8/uint8 weights)"

    def score(self, weight: np.ndarray, ctx: ScoreContext) -> np.ndarray:
        return np.abs(weight)


@SPARSITY_CRITERIA.register("wanda")
class Wanda(SparsityCriterion):
    """``|W| * ||X_j||``: weight magnitude times the L2 norm of the input feature it multiplies.

    ``ctx.stats[name]`` holds one norm per index of the weight's reduction axis
    (input channels of a Conv, ``K`` of a MatMul), or an array already
    broadcastable to the weight (grouped Conv: ``[O, C/group, 1, 1]``).
    """

    name = "wanda"
    summary = "|W| * ||X|| per input feature (needs --calib)"
    needs_activations = True

    def score(self, weight: np.ndarray, ctx: ScoreContext) -> np.ndarray:
        info = ctx.info
        norms = None if ctx.stats is None else ctx.stats.get(info.name)
        if norms is None:
            raise UsageError(f"criterion wanda needs input-feature norms for {info.name!r} (calibration data)")
        norms = np.asarray(norms)
        if norms.ndim == weight.ndim and norms.ndim > 1:
            return np.abs(weight) * norms
        if info.in_axis is None:
            raise UsageError(f"criterion wanda: {info.name!r} has no single reduction axis")
        norms = np.asarray(norms, dtype=np.float64).reshape(-1)
        if norms.size != weight.shape[info.in_axis]:
            raise UsageError(
                f"criterion wanda: {info.name!r} needs {weight.shape[info.in_axis]} norms, got {norms.size}"
            )
        shape = [1] * weight.ndim
        shape[info.in_axis] = norms.size
        return np.abs(weight) * norms.reshape(shape)


@SPARSITY_CRITERIA.register("sparsegpt")
class SparseGPT(SparsityCriterion):
    """OBS saliency ``w^2 / [H^-1]_jj^2`` with the kept weights updated (:mod:`onnxsparse.sparsity.sparsegpt`)."""

    name = "sparsegpt"
    summary = "OBS saliency, kept weights updated to compensate (needs --calib; unstructured or N:M)"
    needs_activations = True
    reconstructs = True

    def score(self, weight: np.ndarray, ctx: ScoreContext) -> np.ndarray:
        return np.abs(weight)  # only used where no Hessian is available: the magnitude fallback


#: Criteria the CLI offers.
DEFAULT_CRITERIA: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")


def get_criterion(criterion: str | SparsityCriterion) -> SparsityCriterion:
    if isinstance(criterion, SparsityCriterion):
        return criterion
    return SPARSITY_CRITERIA.get(criterion)()
