"""Tile: each axis repeated ``repeats[k]`` times.

Output position ``j * n + p`` of an axis of input size ``n`` is a copy of input
position ``p``, so input ``p`` couples with ``Stride(n, r)`` (its ``r`` copies).
A size-1 axis tiled (``repeat_kv``: ``[B, Hkv, 1, S, D] -> [B, Hkv, G, S, D]``)
is a broadcast: its one position serves every copy and nothing couples.
Removing positions changes no repeat count, so nothing needs rewriting.
"""

from __future__ import annotations

from ...errors import Decline

import onnx_ir as ir

from ..context import CoupleContext
from ..index_maps import Stride
from ..registry import OpRule

__all__ = ["TileRule", "RULES"]


class TileRule(OpRule):
    op_types = ("Tile",)
    since = 6

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, repeats, y = ctx.input(0), ctx.input(1), ctx.output(0)
        if x is None or repeats is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        reps = ctx.constant_ints(repeats)
        xd = ctx.dims(x)
        if reps is None:
            raise Decline(f"{ctx.describe()}: repeats are computed at run time")
        if xd is None or len(xd) != len(reps):
            raise Decline(f"{ctx.describe()}: input rank unknown")
        ctx.handled_all(repeats)
        for k, (n, r) in enumerate(zip(xd, reps)):
            if r == 1:
                ctx.couple(x, k, y, k)
            elif n == 1:
                ctx.handled(x, k)
            elif n is None:
                ctx.block(x, k, f"axis {k} of unknown size is repeated {r} times")
            else:
                ctx.couple(x, k, y, k, Stride(n, r))
        return None


RULES: tuple[OpRule, ...] = (TileRule(),)
