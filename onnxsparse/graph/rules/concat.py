"""Concat, Split and Slice: pieces of an axis placed at offsets.

A Concat input's channel ``p`` is the output's channel ``offset + p``
(``Offset``); a Split output's channel ``p`` is the input's ``offset + p``; a
Slice with step 1 is one piece.  After pruning, Concat needs nothing (shapes
follow), Split gets the kept count per output as its ``split`` sizes, and Slice
gets its ``starts``/``ends`` recomputed from the kept positions before and
inside the old range.  Slices with a step other than 1 on a channel axis are
refused: removing a channel would change which positions the step selects.
"""

from __future__ import annotations

from ...errors import Decline

import numpy as np
import onnx_ir as ir

from .. import value_facts as _shapes
from ..context import CoupleContext, RewriteContext
from ..index_maps import Offset
from ..registry import OpRule

__all__ = ["ConcatRule", "SplitRule", "SliceRule", "RULES"]


class ConcatRule(OpRule):
    op_types = ("Concat",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        y = ctx.output(0)
        r = ctx.rank(y)
        if y is None or r is None:
            raise Decline(f"{ctx.describe()}: output rank unknown")
        axis = _shapes.norm_axis(ctx.attr_int("axis", 0), r)
        offset = 0
        inputs = [x for x in node.inputs if x is not None]
        in_dims = [d for x in inputs if (d := ctx.dims(x)) is not None and len(d) == r]
        if len(in_dims) != len(inputs):
            raise Decline(f"{ctx.describe()}: input ranks unknown")
        sizes = [d[axis] for d in in_dims]
        unknown = next((x for x, size in zip(inputs, sizes) if size is None), None)
        if unknown is not None:  # offsets unknown: the concat axis is blocked, the others pass through
            reason = f"size of input '{unknown.name}' along the concat axis is unknown"
            for x in inputs:
                for k in range(r):
                    if k == axis:
                        ctx.block(x, k, reason)
                    else:
                        ctx.couple(x, k, y, k)
            ctx.block(y, axis, reason)
            return None
        for x, size in zip(inputs, sizes):
            for k in range(r):
                if k == axis:
                    if size:
                        ctx.couple(x, k, y, k, Offset(offset))
                    else:
                        ctx.handled(x, k)
                else:
                    ctx.couple(x, k, y, k)
            offset += size or 0  # never None: checked above
        return None


def _split_sizes(ctx: CoupleContext, dim: int, n_out: int) -> list[int] | None:
    split = None
    if ctx.version >= 13:
        s = ctx.input(1)
        if s is not None:
            split = ctx.constant_ints(s)
            if split is None:
                return None
    else:
        split = ctx.attr_ints("split")
    if split is not None:
        return list(split) if len(split) == n_out and sum(split) == dim else None
    num = ctx.attr_int("num_outputs", n_out) or n_out
    chunk = -(-dim // num)
    sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(num)]
    return sizes if sum(sizes) == dim else None


class SplitRule(OpRule):
    op_types = ("Split",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x = ctx.input(0)
        xd = ctx.dims(x)
        if x is None or xd is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        r = len(xd)
        axis = _shapes.norm_axis(ctx.attr_int("axis", 0), r)
        dim = xd[axis]
        if dim is None:
            raise Decline(f"{ctx.describe()}: size of the split axis is unknown")
        sizes = _split_sizes(ctx, dim, len(node.outputs))
        if sizes is None:
            raise Decline(f"{ctx.describe()}: split sizes are not constant")
        ctx.handled_all(ctx.input(1))
        offset = 0
        for out, size in zip(node.outputs, sizes):
            for k in range(r):
                if k == axis:
                    if size:
                        ctx.couple(out, k, x, k, Offset(offset))
                    else:
                        ctx.handled(out, k)
                else:
                    ctx.couple(out, k, x, k)
            offset += size
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        x = ctx.input(0)
        axis = _shapes.norm_axis(ctx.attr_int("axis", 0), len(ctx.required_dims(x)))
        if ctx.keep(x, axis) is None:
            return
        sizes = [ctx.new_dim(out, axis) or 0 for out in node.outputs]  # all known: couple() read them
        if ctx.version >= 13:
            ctx.remove_attr("num_outputs")
            ctx.set_input_constant(1, np.array(sizes, dtype=np.int64))
        else:
            ctx.set_attr_ints("split", sizes)


Ints = tuple[int, ...]


def _slice_params(ctx: CoupleContext | RewriteContext) -> tuple[Ints | None, Ints | None, Ints, Ints] | None:
    """(starts, ends, axes, steps) as int tuples; ``starts``/``ends`` are ``None`` when computed at run time
    (rotate_half's ``x[..., : x.shape[-1] // 2]``).  ``None`` when the axes or steps are not constant."""
    n: int | None
    if ctx.version < 10:
        starts, ends = ctx.attr_ints("starts"), ctx.attr_ints("ends")
        axes = ctx.attr_ints("axes")
        steps = None
        if starts is None or ends is None:
            return None
        n = len(starts)
    else:
        starts, ends = ctx.constant_ints(ctx.input(1)), ctx.constant_ints(ctx.input(2))
        axes_v, steps_v = ctx.input(3), ctx.input(4)
        axes = ctx.constant_ints(axes_v) if axes_v is not None else None
        steps = ctx.constant_ints(steps_v) if steps_v is not None else None
        if (axes_v is not None and axes is None) or (steps_v is not None and steps is None):
            return None
        n = next((len(v) for v in (axes, steps, starts, ends) if v is not None), None)
        if n is None:  # the number of sliced axes is the length of the starts vector
            d = ctx.dims(ctx.input(1))
            n = d[0] if d is not None and len(d) == 1 else None
        if n is None:
            return None
    if axes is None:
        axes = tuple(range(n))
    if steps is None:
        steps = (1,) * n
    if len(axes) != n or len(steps) != n or any(v is not None and len(v) != n for v in (starts, ends)):
        return None
    return starts, ends, axes, steps


def _clamp(index: int, dim: int) -> int:
    if index < 0:
        index += dim
    return min(max(index, 0), dim)


class SliceRule(OpRule):
    op_types = ("Slice",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        xd = ctx.dims(x)
        if x is None or y is None or xd is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        params = _slice_params(ctx)
        if params is None:
            raise Decline(f"{ctx.describe()}: axes/steps are not constant")
        for extra in node.inputs[1:]:
            ctx.handled_all(extra)
        starts, ends, axes, steps = params
        r = len(xd)
        sliced = {}
        for i, (axis, step) in enumerate(zip(axes, steps)):
            bounds = None if starts is None or ends is None else (starts[i], ends[i])
            sliced[_shapes.norm_axis(axis, r)] = (bounds, step)
        for k in range(r):
            if k not in sliced:
                ctx.couple(x, k, y, k)
                continue
            bounds, step = sliced[k]
            if bounds is None:
                reason = f"slice bounds on axis {k} are computed at run time"
                ctx.block(x, k, reason)
                ctx.block(y, k, reason)
                continue
            start, end = bounds
            if step != 1:
                ctx.block(x, k, f"slice step {step} on axis {k}")
                ctx.block(y, k, f"slice step {step} on axis {k}")
                continue
            size = xd[k]
            if size is None:
                ctx.block(y, k, f"size of sliced axis {k} unknown")
                continue
            s, e = _clamp(start, size), _clamp(end, size)
            if e > s:
                ctx.couple(y, k, x, k, Offset(s))
            else:
                ctx.handled(x, k)
                ctx.handled(y, k)
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        x = ctx.input(0)
        xd = ctx.required_dims(x)
        params = _slice_params(ctx)
        if params is None:  # pragma: no cover - couple() accepted constant axes and steps
            return
        starts, ends, axes, _ = params
        if starts is None or ends is None:  # run-time bounds: their axes are blocked, nothing to rewrite
            return
        new_starts, new_ends = list(starts), list(ends)
        changed = False
        for i, (start, end, axis) in enumerate(zip(starts, ends, axes)):
            axis = _shapes.norm_axis(axis, len(xd))
            keep = ctx.keep(x, axis)
            if keep is None:
                continue
            size = xd[axis]
            if size is None:  # pragma: no cover - couple() blocked an axis of unknown size
                continue
            s, e = _clamp(start, size), _clamp(end, size)
            new_starts[i] = int(keep[:s].sum())
            new_ends[i] = new_starts[i] + int(keep[s:e].sum())
            changed = True
        if not changed:
            return
        if ctx.version < 10:
            ctx.set_attr_ints("starts", new_starts)
            ctx.set_attr_ints("ends", new_ends)
        else:
            old = ctx.constant(ctx.input(1))
            dtype: np.dtype = np.dtype(np.int64) if old is None else old.dtype  # a constant: bounds computed at run time returned above
            ctx.set_input_constant(1, np.array(new_starts, dtype=dtype))
            ctx.set_input_constant(2, np.array(new_ends, dtype=dtype))


RULES: tuple[OpRule, ...] = (ConcatRule(), SplitRule(), SliceRule())
