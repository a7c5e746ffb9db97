"""Reductions and softmax-like ops: axes they do not reduce pass through.

``Reduce*``, ``ArgMax``/``ArgMin`` and ``Softmax``/``LogSoftmax``/``Hardmax`` mix
positions only along their reduction axes; those axes are left unmapped (so a
channel axis reduced over is blocked), the others couple to the output
(shifted when ``keepdims=0`` drops axes).  Before opset 13, Softmax-like ops
coerce the input to 2-D at ``axis``, mixing every axis from ``axis`` on.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from .. import value_facts as _shapes
from ..context import CoupleContext
from ..registry import OpRule

__all__ = ["ReduceRule", "ArgReduceRule", "SoftmaxRule", "RULES"]

REDUCE_OPS = (
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)  # fmt: skip

#: (op, first opset taking ``axes`` as an input)
_AXES_AS_INPUT = {"ReduceSum": 13}


def _couple_kept(ctx: CoupleContext, x: ir.Value, y: ir.Value, reduced: set[int], keepdims: bool) -> None:
    r = len(ctx.required_dims(x))
    j = 0
    for k in range(r):
        if k in reduced:
            if keepdims:
                ctx.handled(y, j)
                j += 1
            continue
        ctx.couple(x, k, y, j)
        j += 1


class ReduceRule(OpRule):
    op_types = REDUCE_OPS

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        as_input = ctx.version >= _AXES_AS_INPUT.get(node.op_type, 18)
        if as_input:
            axes_v = ctx.input(1)
            axes = ctx.constant_ints(axes_v) if axes_v is not None else None
            if axes_v is not None and axes is None:
                raise Decline(f"{ctx.describe()}: axes are not constant")
            ctx.handled_all(axes_v)
        else:
            axes = ctx.attr_ints("axes")
        keepdims = bool(ctx.attr_int("keepdims", 1))
        if not axes:
            if as_input and ctx.attr_int("noop_with_empty_axes", 0):
                ctx.identity(x, y)
                return None
            reduced = set(range(r))
        else:
            reduced = {_shapes.norm_axis(a, r) for a in axes}
        _couple_kept(ctx, x, y, reduced, keepdims)
        return None


class ArgReduceRule(OpRule):
    op_types = ("ArgMax", "ArgMin")

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        axis = _shapes.norm_axis(ctx.attr_int("axis", 0), r)
        _couple_kept(ctx, x, y, {axis}, bool(ctx.attr_int("keepdims", 1)))
        return None


class SoftmaxRule(OpRule):
    op_types = ("Softmax", "LogSoftmax", "Hardmax")

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        if ctx.version >= 13:
            axis = _shapes.norm_axis(ctx.attr_int("axis", -1), r)
            mixed = {axis}
        else:
            axis = _shapes.norm_axis(ctx.attr_int("axis", 1), r)
            mixed = set(range(axis, r))
        for k in range(r):
            if k in mixed:
                ctx.block(x, k, f"normalises over axis {k}")
            else:
                ctx.couple(x, k, y, k)
        return None


RULES: tuple[OpRule, ...] = (ReduceRule(), ArgReduceRule(), SoftmaxRule())
