"""Shape and Size: ops that read a tensor's dims as data.

If a pruned axis's size is read, whatever is built from it (a Reshape target,
a ConstantOfShape, a loop bound) would still use the old count, so such axes
are refused.  Axes whose size is provably not read are fine: ``Shape`` with
``start``/``end``, or a Shape output used only by ``Gather`` with constant
indices (the usual ``Shape -> Gather(0)`` to get the batch size) or by ``Slice``
with constant bounds.  ``Size`` reads every axis.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from .. import runtime_shape as _runtime_shape, value_facts as _shapes
from ..context import CoupleContext
from ..registry import OpRule

__all__ = ["ShapeRule", "SizeRule", "RULES"]


def _read_positions(shape_out: ir.Value, length: int) -> set[int] | None:
    """Indices of the Shape output that consumers read, or ``None`` if unknown."""
    read: set[int] = set()
    for use in shape_out.uses():
        node, index = use.node, use.idx
        if node.domain not in ("", "ai.onnx") or index != 0:
            return None
        if node.op_type == "Gather":
            indices = _shapes.constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
            if indices is None or (node.attributes.get_int("axis", 0) or 0) != 0:
                return None
            read.update(_shapes.norm_axis(i, length) for i in indices)
        elif node.op_type == "Slice" and len(node.inputs) >= 3:
            starts = _shapes.constant_ints(node.inputs[1])
            ends = _shapes.constant_ints(node.inputs[2])
            steps = _shapes.constant_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else (1,)
            if starts is None or ends is None or len(starts) != 1 or steps != (1,):
                return None
            if len(node.inputs) > 3 and node.inputs[3] is not None and _shapes.constant_ints(node.inputs[3]) not in ((0,), (-1,)):
                return None

            def clamp(i: int) -> int:
                return min(max(i + length if i < 0 else i, 0), length)

            read.update(range(clamp(starts[0]), clamp(ends[0])))
        else:
            return None
    return read


class ShapeRule(OpRule):
    op_types = ("Shape",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        start = ctx.attr_int("start", 0) or 0
        end = ctx.attr_int("end", r)
        start = min(max(_shapes.norm_axis(start, r), 0), r)
        end = min(max(_shapes.norm_axis(end, r), 0), r) if end is not None else r
        axes = list(range(start, end))
        read = _read_positions(y, len(axes))
        if read is None or read:
            # Positions that only size a Reshape/Expand whose rule couples them are not "read".
            traced = _runtime_shape.shape_reads(y, len(axes))
            if traced is not None:
                read = traced
        ctx.handled_all(y)
        for i, k in enumerate(axes):
            if read is None or i in read:
                ctx.block(x, k, f"the size of axis {k} is read as data")
        for k in range(r):
            ctx.handled(x, k)
        return None


class SizeRule(OpRule):
    op_types = ("Size",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x = ctx.input(0)
        ctx.block_all(x, "the element count is read as data")
        ctx.handled_all(ctx.output(0))
        return None


RULES: tuple[OpRule, ...] = (ShapeRule(), SizeRule())
