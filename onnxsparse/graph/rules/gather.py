"""Gather: picks positions along one axis; the other axes pass through.

The gathered axis is left unmapped (its positions are selected by data), so a
channel axis indexed by Gather is blocked; indices' axes couple to the output
axes they become.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from .. import value_facts as _shapes
from ..context import CoupleContext
from ..registry import OpRule

__all__ = ["GatherRule", "RULES"]


class GatherRule(OpRule):
    op_types = ("Gather",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, idx, y = ctx.input(0), ctx.input(1), ctx.output(0)
        r, ri, ry = ctx.rank(x), ctx.rank(idx), ctx.rank(y)
        if x is None or idx is None or y is None or r is None or ri is None or ry != r - 1 + ri:
            raise Decline(f"{ctx.describe()}: ranks unknown")
        axis = _shapes.norm_axis(ctx.attr_int("axis", 0) or 0, r)
        for k in range(r):
            if k < axis:
                ctx.couple(x, k, y, k)
            elif k > axis:
                ctx.couple(x, k, y, k - 1 + ri)
        if idx.const_value is not None:
            ctx.handled_all(idx)
        else:
            for k in range(ri):
                ctx.couple(idx, k, y, axis + k)
        return None


RULES: tuple[OpRule, ...] = (GatherRule(),)
