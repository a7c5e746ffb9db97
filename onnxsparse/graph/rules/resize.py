"""Resize / Upsample: axes with scale 1 (or an unchanged target size) pass through.

When the target is given as ``sizes`` (Resize >= 11), the entry of a pruned axis
is rewritten to the new count.
"""

from __future__ import annotations

from ...errors import Decline

import numpy as np
import onnx_ir as ir

from .. import value_facts as _shapes
from ..context import CoupleContext, RewriteContext
from ..registry import OpRule

__all__ = ["ResizeRule", "UpsampleRule", "RULES"]


def _constant_floats(ctx, value) -> tuple[float, ...] | None:
    arr = ctx.constant(value)
    if arr is None:
        return None
    return tuple(float(v) for v in arr.reshape(-1))


class ResizeRule(OpRule):
    op_types = ("Resize",)

    def _axes(self, ctx, r: int) -> list[int]:
        axes = ctx.attr_ints("axes")
        return [_shapes.norm_axis(a, r) for a in axes] if axes else list(range(r))

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        xd, yd = ctx.dims(x), ctx.dims(y)
        if x is None or y is None or xd is None or yd is None or len(xd) != len(yd):
            raise Decline(f"{ctx.describe()}: ranks unknown")
        for extra in node.inputs[1:]:
            ctx.handled_all(extra)
        axes = self._axes(ctx, len(xd))
        if ctx.version < 11:
            scales = _constant_floats(ctx, ctx.input(1))
            sizes = None
        else:
            scales = _constant_floats(ctx, ctx.input(2)) if ctx.input(2) is not None else None
            sizes = ctx.constant_ints(ctx.input(3)) if ctx.input(3) is not None else None
            if scales is not None and len(scales) == 0:
                scales = None
        if scales is None and sizes is None:
            raise Decline(f"{ctx.describe()}: scales/sizes are not constant")
        for k in range(len(xd)):
            same = True
            if k in axes:
                i = axes.index(k)
                if sizes is not None:
                    same = xd[k] is not None and sizes[i] == xd[k]
                elif scales is not None:
                    same = scales[i] == 1.0
            if same:
                ctx.couple(x, k, y, k)
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        if ctx.version < 11 or ctx.input(3) is None:
            return
        sizes_v = ctx.input(3)
        sizes = ctx.constant(sizes_v)
        if sizes is None:
            return
        x = ctx.input(0)
        axes = self._axes(ctx, len(ctx.required_dims(x)))
        new = np.array(sizes, copy=True)
        changed = False
        for i, k in enumerate(axes):
            kept = ctx.kept_size(x, k)
            if kept is not None:
                new[i] = kept
                changed = True
        if changed:
            ctx.set_input_constant(3, new)


class UpsampleRule(OpRule):
    op_types = ("Upsample",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            raise Decline(f"{ctx.describe()}: ranks unknown")
        scales = ctx.attr_floats("scales")
        if scales is None:
            scales = _constant_floats(ctx, ctx.input(1))
            ctx.handled_all(ctx.input(1))
        if scales is None or len(scales) != r:
            raise Decline(f"{ctx.describe()}: scales are not constant")
        for k in range(r):
            if scales[k] == 1.0:
                ctx.couple(x, k, y, k)
        return None


RULES: tuple[OpRule, ...] = (ResizeRule(), UpsampleRule())
