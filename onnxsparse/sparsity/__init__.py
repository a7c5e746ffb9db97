"""Choosing which weights become zero: patterns (unstructured, N:M, block) and criteria (magnitude, ...).

Registries: :data:`PATTERNS` (families parsed from ``"unstructured"``,
``"2:4"``, ``"block:4x4"``) and :data:`SPARSITY_CRITERIA`.  Storage of the
resulting zeros lives in :mod:`onnxsparse.formats`; the pass that does both is
:mod:`onnxsparse.passes.sparsify`.
"""

from __future__ import annotations

from .criteria import (
    DEFAULT_CRITERIA,
    SPARSITY_CRITERIA,
    Magnitude,
    ScoreContext,
    SparsityCriterion,
    Wanda,
    get_criterion,
)
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
from .select import PruneTarget, apply_mask, compute_masks
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
    "SPARSITY_CRITERIA",
    "DEFAULT_CRITERIA",
    "SparsityCriterion",
    "ScoreContext",
    "Magnitude",
    "Wanda",
    "get_criterion",
    "PruneTarget",
    "compute_masks",
    "apply_mask",
    "WeightInfo",
    "QuantInfo",
    "find_weights",
    "LINEAR_OPS",
]
