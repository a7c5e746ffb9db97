"""Pad: axes with no padding pass through; padded axes are left unmapped.

Padding the channel axis would create new channels (blocked); spatial padding
is the common case and leaves channels alone.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from .. import value_facts as _shapes
from ..context import CoupleContext
from ..registry import OpRule

__all__ = ["PadRule", "RULES"]


class PadRule(OpRule):
    op_types = ("Pad",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        if ctx.version < 11:
            pads = ctx.attr_ints("pads")
            axes = list(range(r))
        else:
            pads = ctx.constant_ints(ctx.input(1))
            axes_v = ctx.input(3)
            axes_c = ctx.constant_ints(axes_v) if axes_v is not None else None
            if axes_v is not None and axes_c is None:
                raise Decline(f"{ctx.describe()}: axes are not constant")
            axes = [_shapes.norm_axis(a, r) for a in axes_c] if axes_c is not None else list(range(r))
        if pads is None or len(pads) != 2 * len(axes):
            raise Decline(f"{ctx.describe()}: pads are not constant")
        for extra in node.inputs[1:]:
            ctx.handled_all(extra)
        n = len(axes)
        padded = {a for i, a in enumerate(axes) if pads[i] != 0 or pads[i + n] != 0}
        for k in range(r):
            if k not in padded:
                ctx.couple(x, k, y, k)
        return None


RULES: tuple[OpRule, ...] = (PadRule(),)
