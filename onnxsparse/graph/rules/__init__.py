"""Op rules, one family per module, gathered in one explicit default tuple.

To add a family: write ``rules/<family>.py`` with :class:`~onnxsparse.graph.OpRule`
subclasses and a ``RULES`` tuple, and add it to :data:`DEFAULT_RULES` (or pass
your own :class:`~onnxsparse.graph.RuleRegistry` to ``build_groups``).
"""

from __future__ import annotations

from ..registry import OpRule, RuleRegistry
from . import (
    attention, concat, conv, elementwise, gather, linear, ml, norm, pad, pooling, quantize, reduce, resize, shape,
    shape_of, tile,
)

__all__ = ["DEFAULT_RULES", "default_registry"]

DEFAULT_RULES: tuple[OpRule, ...] = (
    *conv.RULES,
    *linear.RULES,
    *norm.RULES,
    *elementwise.RULES,
    *concat.RULES,
    *pooling.RULES,
    *resize.RULES,
    *pad.RULES,
    *shape.RULES,
    *tile.RULES,
    *reduce.RULES,
    *shape_of.RULES,
    *gather.RULES,
    *ml.RULES,
    *quantize.RULES,
    *attention.RULES,
)


def default_registry() -> RuleRegistry:
    """A fresh registry holding :data:`DEFAULT_RULES` (safe to extend)."""
    return RuleRegistry(DEFAULT_RULES)
