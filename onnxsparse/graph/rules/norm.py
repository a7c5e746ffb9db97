"""Normalisations: BatchNorm, InstanceNorm, GroupNorm (whole groups), LayerNorm/RMSNorm, LRN, MVN.

* BatchNormalization / InstanceNormalization are per channel: their parameters
  couple to the channel axis.  InstanceNorm mixes spatial positions, so
  spatial axes are left unmapped (blocked).
* GroupNormalization normalises each group of ``C/G`` channels together:
  removing a channel would change its group's statistics, so the removable
  unit is a whole group (``Block(C/G)`` from a virtual group slot) and
  ``num_groups`` shrinks.  Opset 18 has per-group scale/bias, opset 21 per-channel.
* LayerNormalization / RMSNormalization mix every normalised axis: those axes
  are refused with a reason (a hidden size feeding LayerNorm cannot be pruned);
  leading axes pass through.
* LRN mixes neighbouring channels: the channel axis is refused.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from .. import value_facts as _shapes
from ..context import CoupleContext, RewriteContext
from ..index_maps import Block
from ..registry import OpRule
from ..slots import Role

__all__ = ["BatchNormRule", "InstanceNormRule", "GroupNormRule", "LayerNormRule", "LRNRule", "MVNRule", "RULES"]


class BatchNormRule(OpRule):
    op_types = ("BatchNormalization",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        if x is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        if ctx.attr_int("spatial", 1) == 0:
            raise Decline(f"{ctx.describe()}: spatial=0 (per-position statistics) is not supported")
        if any(v is not None and v.uses() for v in node.outputs[1:]):
            raise Decline(f"{ctx.describe()}: training-mode statistics outputs are used")
        r = ctx.rank(x)
        if r is None or r < 2:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        ctx.same_shape(x, y)
        ctx.identity(x, y)
        for v in node.outputs[1:]:
            ctx.handled_all(v)
        roles = (Role.SCALE, Role.SHIFT, Role.STAT, Role.STAT)
        for i, role in zip(range(1, 5), roles):
            p = ctx.input(i)
            if p is not None:
                ctx.couple(p, 0, x, 1)
                ctx.role(p, 0, role)
        return None


class InstanceNormRule(OpRule):
    op_types = ("InstanceNormalization",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, scale, bias, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None or r < 2:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        ctx.same_shape(x, y)
        ctx.couple(x, 0, y, 0)
        ctx.couple(x, 1, y, 1)
        for p, role in ((scale, Role.SCALE), (bias, Role.SHIFT)):
            if p is not None:
                ctx.couple(p, 0, x, 1)
                ctx.role(p, 0, role)
        return None


class GroupNormRule(OpRule):
    op_types = ("GroupNormalization",)
    since = 18

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, scale, bias, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        xd = ctx.dims(x)
        if x is None or y is None or xd is None or len(xd) < 2 or xd[1] is None:
            raise Decline(f"{ctx.describe()}: channel count unknown")
        groups = ctx.attr_int("num_groups")
        c = xd[1]
        if not groups or c % groups:
            raise Decline(f"{ctx.describe()}: {c} channels do not split into num_groups={groups}")
        ctx.same_shape(x, y)
        ctx.couple(x, 0, y, 0)
        ctx.couple(x, 1, y, 1)
        group = ctx.virtual("groups", groups)
        ctx.couple(group, 0, x, 1, Block(c // groups))
        for p, role in ((scale, Role.SCALE), (bias, Role.SHIFT)):
            if p is None:
                continue
            pd = ctx.dims(p)
            if pd is None or len(pd) != 1:
                raise Decline(f"{ctx.describe()}: unexpected parameter shape")
            if pd[0] == c:
                ctx.couple(p, 0, x, 1)
            elif pd[0] == groups:
                ctx.couple(p, 0, group, 0)
            else:
                raise Decline(f"{ctx.describe()}: parameter size {pd[0]} is neither C nor num_groups")
            ctx.role(p, 0, role)
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        keep = ctx.keep_virtual("groups")
        if keep is not None:
            ctx.set_attr_int("num_groups", int(keep.sum()))


class LayerNormRule(OpRule):
    op_types = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        axis = _shapes.norm_axis(ctx.attr_int("axis", -1), r)
        ctx.same_shape(x, y)
        outs = [v for v in node.outputs if v is not None]
        for k in range(r):
            if k < axis:
                for out in outs:
                    if (ctx.rank(out) or 0) == r:
                        ctx.couple(x, k, out, k)
            else:
                ctx.block(x, k, f"normalises over axis {k}")
                for out in outs:
                    if (ctx.rank(out) or 0) == r:
                        ctx.block(out, k, f"normalises over axis {k}")
        return None


class LRNRule(OpRule):
    op_types = ("LRN",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None or r < 2:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        for k in range(r):
            if k == 1:
                ctx.block(x, 1, "LRN mixes neighbouring channels")
                ctx.block(y, 1, "LRN mixes neighbouring channels")
            else:
                ctx.couple(x, k, y, k)
        return None


class MVNRule(OpRule):
    op_types = ("MeanVarianceNormalization",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        axes = {_shapes.norm_axis(a, r) for a in ctx.attr_ints("axes", (0, 2, 3))}
        for k in range(r):
            if k not in axes:
                ctx.couple(x, k, y, k)
        return None


RULES: tuple[OpRule, ...] = (
    BatchNormRule(),
    InstanceNormRule(),
    GroupNormRule(),
    LayerNormRule(),
    LRNRule(),
    MVNRule(),
)
