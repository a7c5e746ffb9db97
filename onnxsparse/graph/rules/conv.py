"""Conv and ConvTranspose (any rank, ``group``, depthwise with channel multiplier).

Conv ``X[N, Ci, *S] * W[Co, Ci/g, *K] + B[Co] -> Y[N, Co, *S']``:

* ``g == 1``: filters ``W[o]`` produce ``Y[:, o]``; ``W[:, i]`` consumes ``X[:, i]``.
* depthwise (``Ci/g == 1``, ``Co = m*Ci``): input channel ``i`` feeds output
  channels ``i*m .. i*m+m-1`` (``Block(m)``); removing it removes the whole
  group, so ``group`` shrinks to the new channel count.
* grouped (``Ci/g > 1``): the weight's input axis is shared by every group, so a
  removable input unit is index ``j`` inside *every* group
  (``Stride(Ci/g, g)``); the same holds for outputs.  ``group`` is unchanged.

ConvTranspose has ``W[Ci, Co/g, *K]``: the roles of the two axes swap.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from ..context import CoupleContext, RewriteContext
from ..index_maps import Block, Stride
from ..linear import linear_op
from ..registry import OpRule
from ..slots import Role

__all__ = ["ConvRule", "ConvTransposeRule", "RULES"]


_Operands = tuple[ir.Value, ir.Value, ir.Value | None, ir.Value]


def _operands(ctx: CoupleContext) -> _Operands:
    """``x, w, b, y`` with the batch axes of ``x`` and ``y`` coupled; declines when ranks are unknown."""
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    y = ctx.output(0)
    if x is None or w is None or y is None:
        raise Decline(f"{ctx.describe()}: missing input")
    xd, yd = ctx.dims(x), ctx.dims(y)
    if xd is None or yd is None or len(xd) < 3 or len(xd) != len(yd):
        raise Decline(f"{ctx.describe()}: input/output ranks unknown")
    ctx.couple(x, 0, y, 0)
    return x, w, b, y


def couple_filter_inputs(ctx: CoupleContext, x: ir.Value, w: ir.Value, b: ir.Value | None, y: ir.Value, *,
                         group: int, co: int, ci_g: int, weight_input: int) -> None:
    """Bias and input side of a convolution whose filters' axis 0 is already coupled with ``y``'s channels.

    ``group`` 1: filter axis 1 is ``x``'s channels; depthwise (one input channel per group): ``x`` and
    ``y`` channels go together in blocks of the multiplier; other groups: strided.  ``weight_input``
    is the filter's input index (1 for Conv, 3 for QLinearConv), for the contraction.
    """
    co_g = co // group
    if b is not None:
        ctx.couple(b, 0, y, 1)
        ctx.role(b, 0, Role.BIAS)
    if group == 1:
        ctx.couple(w, 1, x, 1)
        ctx.role(w, 1, Role.CONSUME)
        ctx.contract(0, 1, weight=(weight_input, 1))
    elif ci_g == 1:  # depthwise, channel multiplier co_g
        ctx.couple(x, 1, y, 1, Block(co_g))
        ctx.handled(w, 1)
    else:
        ctx.couple(w, 1, x, 1, Stride(ci_g, group))
        ctx.role(w, 1, Role.CONSUME)
        ctx.contract(0, 1, weight=(weight_input, 1))
        ctx.couple(ctx.virtual("out_j", co_g), 0, y, 1, Stride(co_g, group))


def _set_group(ctx: RewriteContext, x: ir.Value) -> None:
    """A depthwise conv's ``group`` is its input channel count, after pruning too."""
    channels = ctx.new_dim(x, 1)
    if channels is not None:
        ctx.set_attr_int("group", channels)


class ConvRule(OpRule):
    op_types = ("Conv",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, w, b, y = _operands(ctx)
        wd = ctx.dims(w)
        xd = ctx.dims(x)
        if wd is None or xd is None or wd[0] is None or wd[1] is None or xd[1] is None:
            raise Decline(f"{ctx.describe()}: channel counts unknown")
        g = linear_op(node).groups
        ci, co, ci_g = xd[1], wd[0], wd[1]
        if ci != ci_g * g or co % g:
            raise Decline(f"{ctx.describe()}: inconsistent group {g} for {ci} -> {co} channels")
        ctx.couple(w, 0, y, 1)
        ctx.role(w, 0, Role.PRODUCE)
        couple_filter_inputs(ctx, x, w, b, y, group=g, co=co, ci_g=ci_g, weight_input=1)
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        g = ctx.attr_int("group", 1) or 1
        x, wd = ctx.input(0), ctx.dims(ctx.input(1))
        if g > 1 and x is not None and wd is not None and wd[1] == 1:  # depthwise: group follows channels
            _set_group(ctx, x)


class ConvTransposeRule(OpRule):
    op_types = ("ConvTranspose",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, w, b, y = _operands(ctx)
        wd, xd, yd = ctx.dims(w), ctx.dims(x), ctx.dims(y)
        if wd is None or xd is None or yd is None or wd[0] is None or wd[1] is None or yd[1] is None:
            raise Decline(f"{ctx.describe()}: channel counts unknown")
        g = linear_op(node).groups
        ci, co_g = wd[0], wd[1]
        co = co_g * g
        if xd[1] != ci or yd[1] != co or ci % g:
            raise Decline(f"{ctx.describe()}: inconsistent group {g}")
        ci_g = ci // g
        if ctx.attr_ints("output_padding") is not None and ctx.rank(x) is None:
            raise Decline(f"{ctx.describe()}: unknown rank")
        ctx.couple(w, 0, x, 1)
        ctx.role(w, 0, Role.PRODUCE if ci_g == 1 and g > 1 else Role.CONSUME)
        if b is not None:
            ctx.couple(b, 0, y, 1)
            ctx.role(b, 0, Role.BIAS)
        if g == 1:
            ctx.couple(w, 1, y, 1)
            ctx.role(w, 1, Role.PRODUCE)
            ctx.contract(0, 1, weight=(1, 0))
        elif ci_g == 1:  # depthwise transpose: input channel i -> outputs i*co_g ..
            ctx.couple(x, 1, y, 1, Block(co_g))
            ctx.handled(w, 1)
        else:
            ctx.couple(w, 1, y, 1, Stride(co_g, g))
            ctx.role(w, 1, Role.PRODUCE)
            ctx.couple(ctx.virtual("in_j", ci_g), 0, x, 1, Stride(ci_g, g))
            ctx.contract(0, 1, weight=(1, 0))
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        g = ctx.attr_int("group", 1) or 1
        x, y = ctx.input(0), ctx.output(0)
        xd = ctx.dims(x)
        if g > 1 and x is not None and xd is not None and xd[1] == g:  # depthwise: group follows channels
            _set_group(ctx, x)
        output_shape = ctx.attr_ints("output_shape")
        if output_shape is not None and y is not None and len(output_shape) == (ctx.rank(y) or 0):
            channels = ctx.new_dim(y, 1)  # full shape form: fix channels
            if channels is not None:
                ctx.set_attr_ints("output_shape", [output_shape[0], channels, *output_shape[2:]])


RULES: tuple[OpRule, ...] = (ConvRule(), ConvTransposeRule())
