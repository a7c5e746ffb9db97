"""Layout ops: Transpose, Flatten, Reshape, Squeeze, Unsqueeze, Expand.

Flatten and Reshape regroup axes.  Input and output dims are paired into runs
of equal product (``[N, 512, 7, 7] -> [N, 25088]`` gives runs ``N<->N`` and
``(512, 7, 7) <-> 25088``).  In a run:

* one axis on each side: identity;
* several input axes merged into one (``C, H, W -> C*H*W``): the outermost axis
  couples with ``Block(inner product)`` - channel ``c`` owns the block
  ``c*H*W .. c*H*W + H*W - 1`` of the flattened features (what a following
  Gemm/MatMul reads);
* one input axis split into several (``H*D -> H, D``): the outermost output axis
  couples with ``Block(inner)`` (head ``h`` owns ``h*D .. h*D + D-1``), except in
  a channel shuffle (``C -> (g, C/g)`` immediately transposed to
  ``(C/g, g)``) where the *inner* axis couples with ``Stride(C/g, g)`` so the
  shuffle's merge back to ``C`` lines up;
* anything else (e.g. ``(6, 4) -> (4, 6)``) is refused.

Axes that do not carry the coupling (inner factors) are refused, so a group
can never lose part of a block.  A Reshape whose target is computed at run
time is refused here (an extension rule can fold ``Shape -> Gather -> Concat``
targets and take precedence).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ...errors import Decline
from .. import runtime_shape as _runtime_shape, value_facts as _shapes
from ..context import CoupleContext, RewriteContext
from ..index_maps import Block, IndexMap, Stride, Table
from ..registry import OpRule

__all__ = [
    "TransposeRule",
    "FlattenRule",
    "ReshapeRule",
    "SqueezeRule",
    "UnsqueezeRule",
    "ExpandRule",
    "align_dims",
    "RULES",
]

Run = tuple[list[int], list[int]]


def align_dims(in_dims, out_dims) -> list[Run] | None:
    """Pair runs of input axes with runs of output axes of equal product.

    Unknown (``None``) dims only pair with an unknown dim on the other side, as
    a run of their own; failing that, a leading block of axes holding the
    unknown dims pairs as one run when the static tails after it have the
    same product (``[B*S, 64] <-> [B, S, 64]``: tf2onnx's 2-D dense layers;
    ``[B, S, 4, 8] -> [B*S, 32]``: a heads' merge-back flattened for a Gemm).
    A run of several axes with an unknown dim is blocked by :func:`couple_runs`.
    Returns ``None`` when no pairing exists.
    """
    runs = _align_forward(in_dims, out_dims)
    if runs is not None:
        return runs
    # A leading block holding every unknown dim on both sides, then static tails of equal product
    # (the largest such): the heads then have equal products too, and the tails pair axis by axis.
    n, m = len(in_dims), len(out_dims)
    i0 = max((k + 1 for k, d in enumerate(in_dims) if d is None), default=0)
    j0 = max((k + 1 for k, d in enumerate(out_dims) if d is None), default=0)
    if not i0 or not j0:
        return None
    suffix_out: dict[int, int] = {}
    p = 1
    for j in range(m, j0 - 1, -1):
        if j < m:
            p *= out_dims[j]
        suffix_out.setdefault(p, j)  # the longest tail of each product (dims of 1 included)
    for i in range(i0, n):
        p = math.prod(in_dims[i:])
        start = suffix_out.get(p)
        if start is None or start == m:
            continue
        tail = _align_forward(list(in_dims[i:]), list(out_dims[start:]))
        if tail is None:
            continue
        return ([(list(range(i)), list(range(start)))]
                + [([a + i for a in ai], [b + start for b in aj]) for ai, aj in tail])
    return None


def _align_forward(in_dims, out_dims) -> list[Run] | None:
    n, m = len(in_dims), len(out_dims)
    i = j = 0
    runs: list[Run] = []
    while i < n or j < m:
        a = in_dims[i] if i < n else 1
        b = out_dims[j] if j < m else 1
        if a is None or b is None:
            if a is None and b is None:
                runs.append(([i], [j]))
                i, j = i + 1, j + 1
                continue
            return None
        if a == 0 or b == 0:
            return None
        ai: list[int] = [i] if i < n else []
        aj: list[int] = [j] if j < m else []
        pi, pj = a, b
        i, j = i + (i < n), j + (j < m)
        while pi != pj:
            if pi < pj:
                if i >= n or in_dims[i] is None or in_dims[i] == 0:
                    return None
                pi *= in_dims[i]
                ai.append(i)
                i += 1
            else:
                if j >= m or out_dims[j] is None or out_dims[j] == 0:
                    return None
                pj *= out_dims[j]
                aj.append(j)
                j += 1
        runs.append((ai, aj))
    return runs


def _is_shuffle_split(ctx: CoupleContext, y: ir.Value, o: list[int]) -> bool:
    """``y``'s only consumer is a Transpose swapping axes ``o[0]`` and ``o[1]``."""
    if len(o) != 2:
        return False
    uses = list(y.uses())
    if len(uses) != 1:
        return False
    node = uses[0].node
    if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
        return False
    perm = node.attributes.get_ints("perm", None)
    if perm is None:
        return False
    perm = list(perm)
    expected = list(range(len(perm)))
    expected[o[0]], expected[o[1]] = o[1], o[0]
    return perm == expected


def _channels_last_axis(x: ir.Value, axes: list[int]) -> int | None:
    """The axis among ``axes`` that was the channel axis (1) before a Transpose to channels-last."""
    node = x.producer()
    if node is None or node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
        return None
    perm = node.attributes.get_ints("perm", None)
    if perm is None:
        return None
    perm = list(perm)
    rank = len(perm)
    if rank < 3 or perm != [0, *range(2, rank), 1]:  # exactly NC... -> N...C
        return None
    return rank - 1 if rank - 1 in axes and rank - 1 != axes[0] else None


def _known(dims: tuple[int | None, ...], axes: list[int]) -> dict[int, int] | None:
    """``{axis: size}`` of ``axes``, or ``None`` when one size is unknown."""
    sizes = {k: d for k in axes if (d := dims[k]) is not None}
    return sizes if len(sizes) == len(axes) else None


def couple_runs(ctx: CoupleContext, x: ir.Value, y: ir.Value, runs: list[Run]) -> None:
    xd, yd = ctx.dims(x), ctx.dims(y)
    if xd is None or yd is None:
        for ai, aj in runs:
            for k in ai:
                ctx.block(x, k, "reshape shape unknown")
            for k in aj:
                ctx.block(y, k, "reshape shape unknown")
        return
    for ai, aj in runs:
        xs, ys = _known(xd, ai), _known(yd, aj)
        if xs is None or ys is None:
            if len(ai) == 1 and len(aj) == 1:  # one unknown dim paired with the same unknown dim
                ctx.couple(x, ai[0], y, aj[0])
                continue
            for k in ai:
                ctx.block(x, k, "reshape regroups axes of unknown size")
            for k in aj:
                ctx.block(y, k, "reshape regroups axes of unknown size")
            continue
        big_i = [k for k in ai if xs[k] != 1]
        big_j = [k for k in aj if ys[k] != 1]
        for k in ai:
            if xs[k] == 1:
                ctx.handled(x, k)
        for k in aj:
            if ys[k] == 1:
                ctx.handled(y, k)
        if not big_i and not big_j:
            continue
        if len(big_i) == 1 and len(big_j) == 1:
            ctx.couple(x, big_i[0], y, big_j[0])
        elif len(big_j) == 1:  # merge
            pick = _channels_last_axis(x, big_i) if len(big_i) > 1 else None
            if pick is None:
                inner = math.prod(xs[k] for k in big_i[1:])
                ctx.couple(x, big_i[0], y, big_j[0], Block(inner))
                for k in big_i[1:]:
                    ctx.block(x, k, f"axis {k} is an inner factor of merged axis {big_j[0]}")
            else:  # NHWC flatten (tf2onnx): the channel is an inner factor, positions strided
                pos = big_i.index(pick)
                inner = math.prod(xs[k] for k in big_i[pos + 1 :])
                outer = math.prod(xs[k] for k in big_i[:pos])
                size = xs[pick]
                index_map: IndexMap
                if inner == 1:
                    index_map = Stride(size, outer)
                elif outer == 1:
                    index_map = Block(inner)
                else:
                    o, r = np.meshgrid(np.arange(outer), np.arange(inner), indexing="ij")
                    base = (o * size * inner + r).reshape(-1)
                    index_map = Table(np.stack([base + p * inner for p in range(size)]).astype(np.int64))
                ctx.couple(x, pick, y, big_j[0], index_map)
                for k in big_i:
                    if k != pick:
                        ctx.block(x, k, f"axis {k} is merged with the channel axis {pick} into axis {big_j[0]}")
        elif len(big_i) == 1:  # split
            if _is_shuffle_split(ctx, y, big_j):
                outer, inner_axis = big_j
                ctx.couple(y, inner_axis, x, big_i[0], Stride(ys[inner_axis], ys[outer]))
                ctx.block(y, outer, f"axis {outer} is the group factor of a channel shuffle")
            else:
                inner = math.prod(ys[k] for k in big_j[1:])
                ctx.couple(y, big_j[0], x, big_i[0], Block(inner))
                for k in big_j[1:]:
                    ctx.block(y, k, f"axis {k} is an inner factor of split axis {big_i[0]}")
        else:
            for k in big_i:
                ctx.block(x, k, "reshape regroups axes")
            for k in big_j:
                ctx.block(y, k, "reshape regroups axes")


def runtime_runs(node: ir.Node) -> tuple[_runtime_shape.Resolved, list[Run]]:
    """A Reshape with a run-time target: its resolved target and paired runs; :class:`Decline` says why not.

    ``_runtime_shape.shape_reads`` asks this too: a dim read only for a target the rule accepts is
    coupled by the rule; one read for a target it refuses is read as data.
    """
    res = _runtime_shape.resolve_reshape(node)
    if res is None:
        raise Decline("target shape is computed at run time from ops other than "
                      "Shape/Gather/Slice/Unsqueeze/Concat/Cast and constants")
    x = node.inputs[0]
    xt = _runtime_shape._tokens(x) if x is not None else None
    xd = _shapes.dims(x)
    if xt is None or xd is None:
        raise Decline("input rank unknown")
    yd = tuple(d if isinstance(d, int) else None for d in res.out)
    runs = align_dims(list(xd), list(yd))
    if runs is None:
        raise Decline("cannot pair input and output axes")
    for ai, aj in runs:  # an unknown dim may only pair with the same unknown dim
        if len(ai) == 1 and len(aj) == 1 and xd[ai[0]] is None and xt[ai[0]] != res.out[aj[0]]:
            raise Decline(f"cannot tell which output axis input axis {ai[0]} becomes")
    return res, runs


class TransposeRule(OpRule):
    op_types = ("Transpose",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r = ctx.rank(x)
        if x is None or y is None or r is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        perm = ctx.attr_ints("perm") or tuple(reversed(range(r)))
        for k, p in enumerate(perm):
            ctx.couple(x, p, y, k)
        return None


class FlattenRule(OpRule):
    op_types = ("Flatten",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        xd = ctx.dims(x)
        if x is None or y is None or xd is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        a = _shapes.norm_axis(ctx.attr_int("axis", 1), len(xd))

        def prod(ds):
            return None if any(d is None for d in ds) else math.prod(ds)

        runs_out = [prod(xd[:a]), prod(xd[a:])]
        runs = align_dims(list(xd), runs_out)
        if runs is None:
            raise Decline(f"{ctx.describe()}: cannot pair flattened axes")
        couple_runs(ctx, x, y, runs)
        return None


class ReshapeRule(OpRule):
    op_types = ("Reshape",)
    since = 5

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, target, y = ctx.input(0), ctx.input(1), ctx.output(0)
        if x is None or target is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        if ctx.constant_ints(target) is None:
            self._couple_runtime(node, ctx, x, target, y)
            return None
        xd, yd = ctx.dims(x), ctx.dims(y)
        if xd is None or yd is None:
            raise Decline(f"{ctx.describe()}: shapes unknown")
        runs = align_dims(list(xd), list(yd))
        if runs is None:
            raise Decline(f"{ctx.describe()}: cannot pair input and output axes")
        ctx.handled_all(target)
        couple_runs(ctx, x, y, runs)
        return None

    def _couple_runtime(self, node: ir.Node, ctx: CoupleContext, x: ir.Value, target: ir.Value,
                        y: ir.Value) -> None:
        """A target built at run time from Shape reads and constants (see ``runtime_shape``); declines if not."""
        try:
            res, runs = runtime_runs(node)
        except Decline as exc:
            raise Decline(f"{ctx.describe()}: {exc}", subject=node.name) from None
        _runtime_shape.set_shape(y, res.out)
        yd = tuple(d if isinstance(d, int) else None for d in res.out)
        ctx.handled_all(target)
        couple_runs(ctx, x, y, runs)
        for j, entry in enumerate(res.entries):
            if (read := entry.read) is not None and read[0] is not x:
                d = ctx.dims(read[0])
                size = None if d is None else d[read[1]]
                if size is not None and size * entry.scale == yd[j]:
                    # the size read is the size written (times a constant: each unit owns a block)
                    ctx.couple(read[0], read[1], y, j, *((Block(entry.scale),) if entry.scale != 1 else ()))

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        y = ctx.required_output(0)
        target = ctx.constant(ctx.input(1))
        if target is None:
            res = _runtime_shape.resolve_reshape(node)
            if res is None:  # pragma: no cover - couple() accepted it
                raise AssertionError(f"{node.name}: run-time target no longer traceable")
            edits = {k: kept for k, e in enumerate(res.entries)
                     if (kept := ctx.kept_size(y, k)) is not None and not e.is_dim and e.const and e.const > 0}
            _runtime_shape.rewrite_entries(ctx, node, 1, res.entries, edits)
            return
        new = np.array(target, copy=True)
        changed = False
        for k in range(new.size):
            kept = ctx.kept_size(y, k)
            if kept is not None and new[k] > 0:
                new[k] = kept
                changed = True
        if changed:
            ctx.set_input_constant(1, new)


def _axes_arg(ctx, index: int) -> tuple[int, ...] | None:
    """The ``axes`` attribute or constant input (``None``: not given); :class:`Decline` if computed at run time."""
    if ctx.version < 13:
        return ctx.attr_ints("axes")
    v = ctx.input(index)
    if v is None:
        return None
    axes = ctx.constant_ints(v)
    if axes is None:
        raise Decline(f"{ctx.describe()}: axes are not constant")
    return axes


class SqueezeRule(OpRule):
    op_types = ("Squeeze",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        xd = ctx.dims(x)
        if x is None or y is None or xd is None:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        axes = _axes_arg(ctx, 1)
        ctx.handled_all(ctx.input(1))
        r = len(xd)
        if axes is None:
            if any(d is None for d in xd):
                raise Decline(f"{ctx.describe()}: cannot tell which axes are squeezed")
            squeezed = {k for k, d in enumerate(xd) if d == 1}
        else:
            squeezed = {_shapes.norm_axis(a, r) for a in axes}
        j = 0
        for k in range(r):
            if k in squeezed:
                ctx.handled(x, k)
            else:
                ctx.couple(x, k, y, j)
                j += 1
        return None


class UnsqueezeRule(OpRule):
    op_types = ("Unsqueeze",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        r, ry = ctx.rank(x), ctx.rank(y)
        if x is None or y is None or r is None or ry is None:
            raise Decline(f"{ctx.describe()}: ranks unknown")
        axes = _axes_arg(ctx, 1)
        if axes is None:
            raise Decline(f"{ctx.describe()}: axes are not constant")
        ctx.handled_all(ctx.input(1))
        inserted = {_shapes.norm_axis(a, ry) for a in axes}
        k = 0
        for j in range(ry):
            if j in inserted:
                ctx.handled(y, j)
            else:
                ctx.couple(x, k, y, j)
                k += 1
        return None


class ExpandRule(OpRule):
    op_types = ("Expand",)

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, shape, y = ctx.input(0), ctx.input(1), ctx.output(0)
        if x is None or shape is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        if ctx.constant_ints(shape) is None:
            res = _runtime_shape.resolve_expand(node)
            if res is None:
                raise Decline(f"{ctx.describe()}: target shape is computed at run time from ops other than "
                        "Shape/Gather/Slice/Unsqueeze/Concat/Cast and constants")
            _runtime_shape.set_shape(y, res.out)
            ctx.handled_all(shape)
            ctx.broadcast([x], y)
            yd = ctx.dims(y)
            if yd is None:
                raise Decline(f"{ctx.describe()}: output rank unknown")
            offset = len(yd) - len(res.entries)
            for i, entry in enumerate(res.entries):
                if (read := entry.read) is not None:
                    d = ctx.dims(read[0])
                    size = None if d is None else d[read[1]]
                    if size is not None and size * entry.scale == yd[offset + i] != 1:
                        ctx.couple(read[0], read[1], y, offset + i,
                                   *((Block(entry.scale),) if entry.scale != 1 else ()))
            return None
        ctx.handled_all(shape)
        ctx.broadcast([x], y)
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        y = ctx.required_output(0)
        ry = ctx.rank(y)
        if ry is None:  # pragma: no cover - couple() broadcast onto it
            raise AssertionError(f"{ctx.describe()}: output rank no longer known")
        if ctx.constant(ctx.input(1)) is None:
            res = _runtime_shape.resolve_expand(node)
            if res is None:  # pragma: no cover - couple() accepted it
                raise AssertionError(f"{node.name}: run-time shape no longer traceable")
            offset = ry - len(res.entries)
            edits = {i: kept for i, e in enumerate(res.entries)
                     if i + offset >= 0 and (kept := ctx.kept_size(y, i + offset)) is not None and not e.is_dim
                     and e.const not in (None, 1)}
            _runtime_shape.rewrite_entries(ctx, node, 1, res.entries, edits)
            return
        shape = np.array(ctx.constant(ctx.input(1)), copy=True)
        offset = ry - shape.size
        changed = False
        for k in range(ry):
            i = k - offset
            if i >= 0 and (kept := ctx.kept_size(y, k)) is not None and shape[i] != 1:
                shape[i] = kept
                changed = True
        if changed:
            ctx.set_input_constant(1, shape)


RULES: tuple[OpRule, ...] = (
    TransposeRule(),
    FlattenRule(),
    ReshapeRule(),
    SqueezeRule(),
    UnsqueezeRule(),
    ExpandRule(),
)
