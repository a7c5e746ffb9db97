"""Gemm (``transA``/``transB``, broadcast ``C``) and MatMul (any rank, constant or activation operands).

Both contract over ``K``: ``A``'s ``K`` axis couples to ``B``'s ``K`` axis and
the node records a contraction there.  ``M`` couples to the output's rows and
``N`` to its columns.  A constant operand gets weight roles (``PRODUCE`` on its
output axis, ``CONSUME`` on ``K``).  A MatMul between two activations (``Q @ K^T``,
``attn @ V``) couples the same way, so removing an index of ``K`` from one side
removes it from the other.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from ..context import CoupleContext
from ..linear import linear_op
from ..registry import OpRule
from ..weights import is_weight
from ..slots import Role

__all__ = ["GemmRule", "MatMulRule", "RULES"]


class GemmRule(OpRule):
    op_types = ("Gemm",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        a, b, c = ctx.input(0), ctx.input(1), ctx.input(2)
        y = ctx.output(0)
        if a is None or b is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        if ctx.rank(a) != 2 or ctx.rank(b) != 2 or ctx.rank(y) != 2:
            raise Decline(f"{ctx.describe()}: operands must be 2-D with known rank")
        view = linear_op(node, 1, weight_rank=2)  # B's axes; A contracts view.data_axis
        b_k, b_n = view.matrix_axes()
        a_k = view.data_axis
        a_m = 1 - a_k
        ctx.couple(a, a_k, b, b_k)
        ctx.couple(a, a_m, y, 0)
        ctx.couple(b, b_n, y, 1)
        if is_weight(b):
            ctx.role(b, b_k, Role.CONSUME)
            ctx.role(b, b_n, Role.PRODUCE)
            ctx.contract(0, a_k, weight=(1, b_k))
        elif is_weight(a):
            ctx.role(a, a_k, Role.CONSUME)
            ctx.role(a, a_m, Role.PRODUCE)
            ctx.contract(1, b_k, weight=(0, a_k))
        else:
            ctx.contract(0, a_k)
        if c is not None:
            ctx.broadcast([c], y)
            if is_weight(c):
                cd = ctx.dims(c) or ()
                if cd and cd[-1] not in (None, 1):
                    ctx.role(c, len(cd) - 1, Role.BIAS)
        return None


class MatMulRule(OpRule):
    op_types = ("MatMul",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        a, b, y = ctx.input(0), ctx.input(1), ctx.output(0)
        if a is None or b is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
        if ra is None or rb is None or ry is None:
            raise Decline(f"{ctx.describe()}: operand ranks unknown")
        left = linear_op(node, 0, weight_rank=ra)  # each operand's axes as if it were the weight
        right = linear_op(node, 1, weight_rank=rb)
        a_k, a_m = left.in_axis, left.out_axis  # a_m None for a 1-D A
        b_k, b_n = right.in_axis, right.out_axis
        if a_k is None or b_k is None:  # pragma: no cover - both ranks are known above
            raise Decline(f"{ctx.describe()}: operand ranks unknown")
        ctx.couple(a, a_k, b, b_k)
        if a_m is not None:
            ctx.couple(a, a_m, y, ry - 2 if b_n is not None else ry - 1)
        if b_n is not None:
            ctx.couple(b, b_n, y, ry - 1)
        # batch axes broadcast against the output's leading axes
        yd = ctx.dims(y)
        n_batch_y = ry - (ra >= 2) - (rb >= 2)
        for x, rx in ((a, ra), (b, rb)):
            xd = ctx.dims(x)
            if xd is None or yd is None:  # pragma: no cover - every rank is known above
                raise Decline(f"{ctx.describe()}: operand ranks unknown")
            n_batch_x = max(rx - 2, 0)
            for k in range(n_batch_x):
                ky = n_batch_y - n_batch_x + k
                if ky < 0:
                    raise Decline(f"{ctx.describe()}: cannot align batch axes")
                if xd[k] == 1 and yd[ky] != 1:
                    ctx.handled(x, k)
                else:
                    ctx.couple(x, k, y, ky)
        if is_weight(b):
            ctx.role(b, b_k, Role.CONSUME)
            if b_n is not None:
                ctx.role(b, b_n, Role.PRODUCE)
            ctx.contract(right.data_input, a_k, weight=(right.weight_input, b_k))
        elif is_weight(a):
            ctx.role(a, a_k, Role.CONSUME)
            if a_m is not None:
                ctx.role(a, a_m, Role.PRODUCE)
            ctx.contract(left.data_input, b_k, weight=(left.weight_input, a_k))
        else:
            ctx.contract(0, a_k)
            for x, rx in ((a, ra), (b, rb), (y, ry)):  # Q @ K^T, P @ V: batch axes past the first are heads
                for k in range(1, max(rx - 2, 0)):
                    ctx.head_axis(x, k)
        return None


RULES: tuple[OpRule, ...] = (GemmRule(), MatMulRule())
