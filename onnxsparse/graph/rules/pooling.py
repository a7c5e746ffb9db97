"""Pooling (Max/Average/Lp, and their Global forms): per channel, mixing only spatial positions.

Batch and channel axes pass through; spatial axes are left unmapped.  MaxPool's
optional ``Indices`` output flattens ``N*C*H*W`` positions into its values, so if
it is used the channel axis is refused.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from ..context import CoupleContext
from ..registry import OpRule

__all__ = ["PoolRule", "RULES"]


class PoolRule(OpRule):
    op_types = ("MaxPool", "AveragePool", "LpPool", "GlobalMaxPool", "GlobalAveragePool", "GlobalLpPool")

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        rx, ry = ctx.rank(x), ctx.rank(y)
        if x is None or y is None or rx is None or rx < 2 or rx != ry:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        indices = ctx.output(1)
        if indices is not None and indices.uses():
            ctx.block(x, 1, "MaxPool indices encode the channel count")
            ctx.couple(x, 0, y, 0)
            ctx.block_all(indices, "MaxPool indices encode the channel count")
            return None
        ctx.couple(x, 0, y, 0)
        ctx.couple(x, 1, y, 1)
        if indices is not None:
            ctx.handled_all(indices)
        return None


RULES: tuple[OpRule, ...] = (PoolRule(),)
