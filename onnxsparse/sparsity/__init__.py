"""Choosing which weights become zero: patterns (unstructured, N:M, block) and criteria (magnitude, ...).

Registry: :data:`PATTERNS` (families parsed from ``"unstructured"``,
``"2:4"``, ``"block:4x4"``).  Criteria live in :mod:`onnxsparse.criteria` (one
registry for ``prune`` and ``sparsify``; the names below are re-exported for
compatibility, ``available_criteria("elementwise")`` lists the ones that score
single weights).  Storage of the
resulting zeros lives in :mod:`onnxsparse.formats`; the pass that does both is
:mod:`onnxsparse.passes.sparsify`.
"""

from __future__ import annotations

from ..criteria import Criterion as SparsityCriterion
from ..criteria import MagnitudeCriterion as Magnitude
from ..criteria import SparseGPTCriterion as SparseGPT
from ..criteria import WandaCriterion as Wanda
from ..criteria import WeightContext as ScoreContext
from ..criteria import available_criteria, get_criterion
from .patterns import (
    DEFAULT_PATTERNS,
    NM,
    PATTERNS,
    Block,
    Pattern,
    Unstructured,
    nm_violations,
    parse_pattern,
    pattern_help,
)
from .select import PruneTarget, apply_mask, compute_masks, score_weight
from .weights import LINEAR_OPS, QuantInfo, WeightInfo, find_weights

__all__ = [
    "PATTERNS",
    "DEFAULT_PATTERNS",
    "Pattern",
    "Unstructured",
    "NM",
    "Block",
    "parse_pattern",
    "pattern_help",
    "nm_violations",
    "SparsityCriterion",
    "ScoreContext",
    "Magnitude",
    "Wanda",
    "SparseGPT",
    "get_criterion",
    "available_criteria",
    "score_weight",
    "PruneTarget",
    "compute_masks",
    "apply_mask",
    "WeightInfo",
    "QuantInfo",
    "find_weights",
    "LINEAR_OPS",
]
