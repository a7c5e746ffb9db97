"""Fused attention ops: one unit is one attention head, or one KV group (a KV head and its query heads).

Every rule ties the head axes of the op to one node-local virtual slot of ``H``
positions (``H`` = heads, or KV heads for grouped-query attention) and
declares it a head axis (:meth:`CoupleContext.head_axis`).  A ``[B, S, H*D]``
hidden axis couples to it with ``Block(D)`` (``Block(G*D)`` for the query and
output of grouped attention, ``G = num_heads / kv_num_heads`` query heads per KV
head: query head ``h`` reads KV head ``h // G``); a ``[B, H, S, D]`` head axis
with identity (``Block(G)`` for the query side).  The op computes each head
from that head's own query/key/value columns only, so removing a unit removes
its columns everywhere and changes nothing else; the removed heads stop
mattering at the output projection (a Gemm/MatMul contraction), which is where
:func:`~onnxsparse.graph.masked_copy` zeroes them.  ``rewrite()`` sets the
head-count attributes to the kept counts.

* ``com.microsoft::MultiHeadAttention``: 3-D query/key/value; the packed bias
  ``[Dq | Dk | Dv]`` couples piece by piece (``Offset``) to the three hidden
  axes; ``attention_bias`` ``[B|1, H|1, S, T]`` and ``past_key``/``past_value`` /
  ``present_*`` ``[B, H, T, D]`` follow the heads.  Declined: packed QKV
  (5-D query), packed KV or past-as-key (key/value not 3-D), ``cache_indirection``,
  a used ``output_qk``.
* ``com.microsoft::Attention``: the packed weight ``[E, Dq | Dk | Dv]`` (sizes
  from ``qkv_hidden_sizes`` or three equal thirds) couples to the heads through
  a ``Table`` (head ``h`` owns its columns in each of the three pieces), with
  ``PRODUCE`` on that axis and ``CONSUME`` plus a contraction on ``E`` as in
  Gemm, so the residual stream keeps coupling through it; the bias like the
  weight's columns.  Declined: ``past`` input, a used ``present`` output,
  ``do_rotary``.
* ``com.microsoft::GroupQueryAttention``: one unit per KV head; past/present KV
  ``[B, Hkv, T, D]`` axis 1 identity; ``attention_bias`` and ``head_sink`` follow
  the query heads.  Packed QKV (no key/value input: ``[B, S, (Hq + 2*Hkv)*D]``)
  couples through a ``Table`` (a group's query heads, key head and value head).
  ``do_rotary`` is accepted: the rotation acts inside each head with
  ``cos_cache``/``sin_cache`` shared by all heads (no head axis).  Declined: a
  used ``output_qk``.
* ONNX ``Attention`` (opset 23+): 3-D inputs with ``q_num_heads`` /
  ``kv_num_heads`` (as GroupQueryAttention), or 4-D ``[B, H, S, D]`` inputs (head
  counts read off the shapes; the Reshape that split the heads carries the
  ``Block(D)``).  ``attn_mask`` broadcasts to ``[B, Hq, S, T]``; a used
  ``qk_matmul_output`` is declined.

Batch and sequence axes of query and output couple identity; masks' batch and
sequence axes and every head-size axis are left unmapped (blocked), which no
weight group goes through.  onnx's shape inference does not know the
com.microsoft ops, so the rules fill in their output shapes from the op's
definition (the output ``[B, S, H*Dv]``, present KV ``[B, H, ?, D]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from ...errors import Decline
from ..context import CoupleContext, RewriteContext, Virtual
from ..index_maps import Block, Identity, Offset, Table
from ..registry import OpRule
from ..slots import Role

if TYPE_CHECKING:  # typing_extensions ships with every type checker; TypeIs is in typing only from 3.13
    from typing_extensions import TypeIs

__all__ = [
    "MultiHeadAttentionRule",
    "MsAttentionRule",
    "GroupQueryAttentionRule",
    "OnnxAttentionRule",
    "RULES",
]

MS = "com.microsoft"
_UNIT = "heads"  # name of the virtual slot (heads, or KV groups)


def _present(value: ir.Value | None) -> TypeIs[ir.Value]:
    return value is not None and bool(value.name)


def _used(value: ir.Value | None) -> bool:
    return value is not None and (bool(value.uses()) or value.is_graph_output())


def _dim(value: ir.Value | None, axis: int):
    """Dim ``axis`` of ``value`` as stored (int or symbolic) for building an output shape."""
    if value is None or value.shape is None or not -len(value.shape) <= axis < len(value.shape):
        return ir.SymbolicDim(None)
    return value.shape[axis]


def _fill(y: ir.Value | None, dims: Sequence, like: ir.Value | None) -> None:
    """Give an output the shape/type onnx's inference leaves out (com.microsoft ops), by the op's definition."""
    if y is None:
        return
    if y.shape is None:
        y.shape = ir.Shape(list(dims))
    if y.dtype is None and like is not None and like.dtype is not None:
        y.dtype = like.dtype


def _heads(ctx: CoupleContext, size: int, queries: int = 1) -> Virtual:
    """The op's unit slot: ``size`` heads, or KV heads each read by ``queries`` query heads."""
    unit = ctx.virtual(_UNIT, size)
    ctx.head_axis(unit, 0, queries)
    return unit


def _unreached(ctx: CoupleContext, units: int | None, values: Sequence[ir.Value | None]) -> bool:
    """Shapes of the op's inputs unknown (inference stopped upstream): accept, with the heads blocked.

    Nothing can be coupled without ranks, so the op touches no slot; its head slot is declared and
    blocked so :meth:`~onnxsparse.graph.DependencyGraph.unattached_heads` reports this attention
    instead of it going missing silently.  Returns ``False`` when the shapes are known (go on).
    This is not a decline: the op is accepted, only its heads are blocked.
    """
    unknown = [v.name for v in values if v is not None and ctx.rank(v) is None]
    if not unknown:
        return False
    if units and units > 1:
        reason = f"shape of {', '.join(repr(n) for n in unknown)} unknown (shape inference did not reach it)"
        ctx.block(_heads(ctx, units), 0, reason)  # type: ignore[arg-type]  # a Virtual is a slot too
    return True


def _couple_bcast(ctx: CoupleContext, x: ir.Value, axis: int, other: ir.Value, other_axis: int) -> None:
    """``axis`` of ``x`` broadcasts against ``other_axis`` of ``other`` (a size-1 axis stays free)."""
    xd, od = ctx.dims(x), ctx.dims(other)
    if xd is None or od is None:
        return
    if xd[axis] == 1 and od[other_axis] != 1:
        ctx.handled(x, axis)
    else:
        ctx.couple(x, axis, other, other_axis)


def _head_bias(ctx: CoupleContext, bias: ir.Value | None, unit: Virtual, hq: int, g: int, what: str,
               q: ir.Value | None = None) -> None:
    """An additive bias/mask broadcast to ``[B, Hq, S, T]``: its head axis follows the units (``Block(G)``).

    ``q``: a 3-D ``[B, S, .]`` query whose batch/sequence axes it broadcasts against.  The last axis
    (the total key length, past included) is left unmapped (blocked), like everything else not named.
    Declines when the bias does not fit the heads.
    """
    if bias is None:
        return
    bd = ctx.dims(bias)
    if bd is None:
        raise Decline(f"{ctx.describe()}: rank of {what} '{bias.name}' unknown")
    r = len(bd)
    if r > 4:
        raise Decline(f"{ctx.describe()}: {what} '{bias.name}' has rank {r} > 4")
    if r == 4 or r == 3:
        k = r - 3  # the head axis
        if bd[k] is None:
            raise Decline(f"{ctx.describe()}: head axis of {what} '{bias.name}' has unknown size")
        if bd[k] == hq and hq > 1:
            ctx.couple(unit, 0, bias, k, Block(g))
        elif bd[k] == 1:
            ctx.handled(bias, k)
        else:
            raise Decline(f"{ctx.describe()}: {what} '{bias.name}' has {bd[k]} heads, the op {hq}")
        if r == 4 and q is not None:
            _couple_bcast(ctx, bias, 0, q, 0)
    if q is not None and r >= 2:
        _couple_bcast(ctx, bias, r - 2, q, 1)


def _couple_3d(ctx: CoupleContext, q: ir.Value, k: ir.Value, v: ir.Value, y: ir.Value, hq: int, hkv: int,
               ) -> tuple[Virtual, int, int]:
    """Couple 3-D ``[B, S, H*D]`` query/key/value and output to one unit per KV head.

    Returns ``(units, head size, value head size)``; raises :class:`Decline` with the reason if it cannot.
    """
    qd, kd, vd = ctx.dims(q), ctx.dims(k), ctx.dims(v)
    if qd is None or kd is None or vd is None or len(qd) != 3 or len(kd) != 3 or len(vd) != 3:
        raise Decline(f"{ctx.describe()}: query/key/value are not all [batch, seq, hidden] (packed or 4-D forms)")
    if qd[2] is None or kd[2] is None or vd[2] is None:
        raise Decline(f"{ctx.describe()}: hidden size of query/key/value unknown")
    if not hq or not hkv or hq % hkv:
        raise Decline(f"{ctx.describe()}: head counts {hq}/{hkv} (query/KV) do not group")
    if qd[2] % hq or kd[2] % hkv or vd[2] % hkv:
        raise Decline(f"{ctx.describe()}: hidden sizes {qd[2]}/{kd[2]}/{vd[2]} do not divide into "
                      f"{hq}/{hkv}/{hkv} heads")
    dq, dk, dv = qd[2] // hq, kd[2] // hkv, vd[2] // hkv
    if dq != dk:
        raise Decline(f"{ctx.describe()}: query head size {dq} differs from key head size {dk}")
    g = hq // hkv
    _fill(y, [_dim(q, 0), _dim(q, 1), hq * dv], q)
    yd = ctx.dims(y)
    if yd is None or len(yd) != 3 or yd[2] != hq * dv:
        raise Decline(f"{ctx.describe()}: output is not [batch, seq, {hq * dv}]")
    unit = _heads(ctx, hkv, g)
    ctx.couple(unit, 0, q, 2, Block(g * dq))
    ctx.couple(unit, 0, k, 2, Block(dk))
    ctx.couple(unit, 0, v, 2, Block(dv))
    ctx.couple(unit, 0, y, 2, Block(g * dv))
    ctx.couple(q, 0, y, 0)
    ctx.couple(q, 1, y, 1)
    ctx.couple(k, 0, q, 0)
    ctx.couple(v, 0, q, 0)
    ctx.couple(k, 1, v, 1)
    return unit, dq, dv


def _couple_packed_gqa(ctx: CoupleContext, qkv: ir.Value, y: ir.Value, hq: int, hkv: int,
                       ) -> tuple[Virtual, int, int]:
    """GroupQueryAttention's packed ``[B, S, (Hq + 2*Hkv) * D]`` query (no key/value inputs).

    KV group ``j`` owns, in that one axis, its ``G`` query heads ``[j*G*D, (j+1)*G*D)``, its key head
    at ``Hq*D + j*D`` and its value head at ``(Hq + Hkv)*D + j*D`` (a ``Table``).  Raises :class:`Decline`
    with the reason if it cannot.
    """
    qd = ctx.dims(qkv)
    if qd is None or len(qd) != 3 or qd[2] is None:
        raise Decline(f"{ctx.describe()}: packed QKV is not [batch, seq, hidden] with a known hidden size")
    if hq % hkv or qd[2] % (hq + 2 * hkv):
        raise Decline(f"{ctx.describe()}: packed QKV width {qd[2]} does not divide into {hq} + 2 x {hkv} heads")
    d, g = qd[2] // (hq + 2 * hkv), hq // hkv
    rows = np.concatenate([Block(g * d).table(hkv), hq * d + Block(d).table(hkv),
                           (hq + hkv) * d + Block(d).table(hkv)], axis=1)
    _fill(y, [_dim(qkv, 0), _dim(qkv, 1), hq * d], qkv)
    yd = ctx.dims(y)
    if yd is None or len(yd) != 3 or yd[2] != hq * d:
        raise Decline(f"{ctx.describe()}: output is not [batch, seq, {hq * d}]")
    unit = _heads(ctx, hkv, g)
    ctx.couple(unit, 0, qkv, 2, Table(rows))
    ctx.couple(unit, 0, y, 2, Block(g * d))
    ctx.couple(qkv, 0, y, 0)
    ctx.couple(qkv, 1, y, 1)
    return unit, d, d


def _couple_kv_state(ctx: CoupleContext, unit: Virtual, values: Sequence[ir.Value | None], hkv: int,
                     d: int | None, what: str, *, head_axis: int = 1, like: ir.Value | None = None,
                     fill: Sequence | None = None) -> None:
    """Past/present KV ``[B, Hkv, T, D]``: axis ``head_axis`` is the unit index (identity); ``d`` ``None``:
    any head size.  Declines when a state does not have that shape."""
    for value in values:
        if not _present(value):
            continue
        if fill is not None:
            _fill(value, fill, like)
        vd = ctx.dims(value)
        if vd is None or len(vd) <= head_axis or vd[head_axis] != hkv or vd[-1] not in (d, None):
            raise Decline(f"{ctx.describe()}: {what} '{value.name}' is not [B, {hkv}, T, {d}] (shape {vd})")
        ctx.couple(unit, 0, value, head_axis, Identity())


def _couple_kv_cache(ctx: CoupleContext, unit: Virtual, past: tuple[ir.Value | None, ...], q: ir.Value,
                     hkv: int, d: int, dv: int) -> None:
    """Past key/value inputs and present key/value outputs 1, 2 (``[B, Hkv, T, D]``): the unit on axis 1
    (present shapes filled in from the query's batch when inference left them out)."""
    _couple_kv_state(ctx, unit, past, hkv, d, "past state")
    b = _dim(q, 0)
    for i, dd in ((1, d), (2, dv)):
        _couple_kv_state(ctx, unit, (ctx.output(i),), hkv, dd, "present state", like=q,
                         fill=[b, hkv, ir.SymbolicDim(None), dd])


class MultiHeadAttentionRule(OpRule):
    """``com.microsoft::MultiHeadAttention`` with separate 3-D query/key/value."""

    op_types = ("MultiHeadAttention",)
    domain = MS

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        q, k, v, bias = ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(3)
        y = ctx.output(0)
        if q is None or y is None:
            raise Decline(f"{ctx.describe()}: missing query or output")
        if k is None or v is None:
            raise Decline(f"{ctx.describe()}: packed QKV (no separate key/value input) is not supported")
        if _unreached(ctx, ctx.attr_int("num_heads"), (q, k, v)):
            return None
        if ctx.rank(q) != 3 or ctx.rank(k) != 3 or ctx.rank(v) != 3:
            raise Decline(f"{ctx.describe()}: query/key/value ranks {ctx.rank(q)}/{ctx.rank(k)}/{ctx.rank(v)}: only "
                    "separate [batch, seq, hidden] inputs are supported (not packed QKV/KV or past-as-key)")
        if _present(ctx.input(9)):
            raise Decline(f"{ctx.describe()}: cache_indirection (beam search) is not supported")
        if _used(ctx.output(3)):
            raise Decline(f"{ctx.describe()}: its output_qk is used")
        h = ctx.attr_int("num_heads")
        if not h:
            raise Decline(f"{ctx.describe()}: num_heads missing")
        unit, d, dv = _couple_3d(ctx, q, k, v, y, h, h)
        if bias is not None:
            bd = ctx.dims(bias)
            hidden = [xd[2] for x in (q, k, v) if (xd := ctx.dims(x)) is not None and xd[2] is not None]
            if bd is None or len(bd) != 1 or len(hidden) != 3 or bd[0] != sum(hidden):
                raise Decline(f"{ctx.describe()}: bias shape {bd} is not [{sum(hidden)}] (query | key | value)")
            offset = 0
            for x, n in zip((q, k, v), hidden):
                ctx.couple(x, 2, bias, 0, Offset(offset))
                offset += n
            ctx.role(bias, 0, Role.BIAS)
        _head_bias(ctx, ctx.input(5), unit, h, 1, "attention_bias", q=q)
        _couple_kv_cache(ctx, unit, (ctx.input(6), ctx.input(7)), q, h, d, dv)
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        keep = ctx.keep_virtual(_UNIT)
        if keep is not None:
            ctx.set_attr_int("num_heads", int(keep.sum()))


class MsAttentionRule(OpRule):
    """``com.microsoft::Attention``: input ``[B, S, E]``, packed weight ``[E, Dq | Dk | Dv]`` on the node."""

    op_types = ("Attention",)
    domain = MS

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, w, bias, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        if x is None or w is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input, weights or output")
        if ctx.attr_int("do_rotary", 0):
            raise Decline(f"{ctx.describe()}: do_rotary is not supported (unproven)")
        if _present(ctx.input(4)):
            raise Decline(f"{ctx.describe()}: past state input is not supported")
        if _used(ctx.output(1)):
            raise Decline(f"{ctx.describe()}: its present output is used")
        h = ctx.attr_int("num_heads")
        if _unreached(ctx, h, (x,)):
            return None
        xd, wd = ctx.dims(x), ctx.dims(w)
        if not h:
            raise Decline(f"{ctx.describe()}: num_heads missing")
        if xd is None or len(xd) != 3 or xd[2] is None:
            raise Decline(f"{ctx.describe()}: input is not [batch, seq, hidden] with a known hidden size")
        w_in, width = (wd[0], wd[1]) if wd is not None and len(wd) == 2 else (None, None)
        if w_in is None or width is None or w_in != xd[2]:
            raise Decline(f"{ctx.describe()}: weights are not a [{xd[2]}, 3*hidden] matrix (shape {wd})")
        sizes = ctx.attr_ints("qkv_hidden_sizes")
        if sizes is None:
            if width % 3:
                raise Decline(f"{ctx.describe()}: weight width {width} is not 3 equal pieces (no qkv_hidden_sizes)")
            sizes = (width // 3,) * 3
        if len(sizes) != 3 or sum(sizes) != width or any(s <= 0 or s % h for s in sizes):
            raise Decline(f"{ctx.describe()}: qkv sizes {sizes} do not fill width {width} or divide into {h} heads")
        dq, dk, dv = (s // h for s in sizes)
        if dq != dk:
            raise Decline(f"{ctx.describe()}: query head size {dq} differs from key head size {dk}")
        offsets = (0, sizes[0], sizes[0] + sizes[1])
        rows = np.concatenate([off + Block(dd).table(h) for off, dd in zip(offsets, (dq, dk, dv))], axis=1)
        columns = Table(rows)
        _fill(y, [_dim(x, 0), _dim(x, 1), h * dv], x)
        yd = ctx.dims(y)
        if yd is None or len(yd) != 3 or yd[2] != h * dv:
            raise Decline(f"{ctx.describe()}: output is not [batch, seq, {h * dv}]")
        unit = _heads(ctx, h)
        ctx.couple(unit, 0, w, 1, columns)
        ctx.couple(unit, 0, y, 2, Block(dv))
        ctx.couple(x, 2, w, 0)
        ctx.couple(x, 0, y, 0)
        ctx.couple(x, 1, y, 1)
        ctx.role(w, 0, Role.CONSUME)
        ctx.role(w, 1, Role.PRODUCE)
        ctx.contract(0, 2, weight=(1, 0))
        if bias is not None:
            bd = ctx.dims(bias)
            if bd is None or len(bd) != 1 or bd[0] != width:
                raise Decline(f"{ctx.describe()}: bias shape {bd} is not [{width}]")
            ctx.couple(unit, 0, bias, 0, columns)
            ctx.role(bias, 0, Role.BIAS)
        _head_bias(ctx, ctx.input(5), unit, h, 1, "attention_bias", q=x)
        present = ctx.output(1)
        if _present(present):  # [2, B, H, T, Dk], unused (checked above)
            _fill(present, [2, _dim(x, 0), h, ir.SymbolicDim(None), dk], x)
            _couple_kv_state(ctx, unit, (present,), h, dk, "present state", head_axis=2)
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        keep = ctx.keep_virtual(_UNIT)
        if keep is None:
            return
        old, kept = ctx.attr_int("num_heads") or 0, int(keep.sum())
        ctx.set_attr_int("num_heads", kept)
        sizes = ctx.attr_ints("qkv_hidden_sizes")
        if sizes is not None and old:
            ctx.set_attr_ints("qkv_hidden_sizes", [s // old * kept for s in sizes])


class GroupQueryAttentionRule(OpRule):
    """``com.microsoft::GroupQueryAttention`` (separate or packed query/key/value): one unit per KV head."""

    op_types = ("GroupQueryAttention",)
    domain = MS

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        q, k, v, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        if q is None or y is None:
            raise Decline(f"{ctx.describe()}: missing query or output")
        if (k is None) != (v is None):
            raise Decline(f"{ctx.describe()}: only one of key/value is given")
        if _used(ctx.output(3)):
            raise Decline(f"{ctx.describe()}: its output_qk is used")
        hq, hkv = ctx.attr_int("num_heads"), ctx.attr_int("kv_num_heads")
        if not hq or not hkv:
            raise Decline(f"{ctx.describe()}: num_heads/kv_num_heads missing")
        if _unreached(ctx, hkv, (q, k, v)):
            return None
        if k is None or v is None:
            unit, d, dv = _couple_packed_gqa(ctx, q, y, hq, hkv)
        else:
            unit, d, dv = _couple_3d(ctx, q, k, v, y, hq, hkv)
        g = hq // hkv
        _couple_kv_cache(ctx, unit, (ctx.input(3), ctx.input(4)), q, hkv, d, dv)
        _head_bias(ctx, ctx.input(10), unit, hq, g, "attention_bias", q=q)
        sink = ctx.input(11)
        if sink is not None:
            sd = ctx.dims(sink)
            if sd is None or len(sd) != 1 or sd[0] != hq:
                raise Decline(f"{ctx.describe()}: head_sink shape {sd} is not [{hq}]")
            ctx.couple(unit, 0, sink, 0, Block(g))
            ctx.role(sink, 0, Role.CONST)
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        keep = ctx.keep_virtual(_UNIT)
        if keep is None:
            return
        hq, hkv = ctx.attr_int("num_heads") or 0, ctx.attr_int("kv_num_heads") or 1
        kept = int(keep.sum())
        ctx.set_attr_int("kv_num_heads", kept)
        ctx.set_attr_int("num_heads", kept * (hq // hkv))


class OnnxAttentionRule(OpRule):
    """ONNX ``Attention`` (opset 23+): 3-D inputs with head-count attributes, or 4-D ``[B, H, S, D]`` inputs."""

    op_types = ("Attention",)
    since = 23

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        q, k, v, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        if q is None or k is None or v is None or y is None:
            raise Decline(f"{ctx.describe()}: missing query/key/value or output")
        if _used(ctx.output(3)):
            raise Decline(f"{ctx.describe()}: its qk_matmul_output is used")
        if len(node.inputs) > 6 and _present(ctx.input(6)):
            raise Decline(f"{ctx.describe()}: nonpad_kv_seqlen input is not supported (unproven)")
        if _unreached(ctx, ctx.attr_int("kv_num_heads"), (q, k, v)):
            return None
        rq, rk, rv = ctx.rank(q), ctx.rank(k), ctx.rank(v)
        d: int | None  # head sizes (``None``: unknown, any size)
        dv: int | None
        if rq == rk == rv == 3:
            hq, hkv = ctx.attr_int("q_num_heads"), ctx.attr_int("kv_num_heads")
            if not hq or not hkv:
                raise Decline(f"{ctx.describe()}: 3-D inputs without q_num_heads/kv_num_heads")
            unit, d, dv = _couple_3d(ctx, q, k, v, y, hq, hkv)
            qb = q
        elif rq == rk == rv == 4:
            qd, kd, vd, yd = ctx.dims(q), ctx.dims(k), ctx.dims(v), ctx.dims(y)
            if qd is None or kd is None or vd is None:  # pragma: no cover - all three ranks are 4
                raise Decline(f"{ctx.describe()}: query/key/value ranks unknown")
            hq, hkv = qd[1], kd[1]
            if hq is None or hkv is None or vd[1] != hkv:
                raise Decline(f"{ctx.describe()}: head counts of 4-D query/key/value unknown or unequal ({qd}, {kd}, {vd})")
            if hq % hkv:
                raise Decline(f"{ctx.describe()}: {hq} query heads do not group over {hkv} KV heads")
            d, dv = qd[3], vd[3]
            if yd is None or len(yd) != 4 or yd[1] != hq:
                raise Decline(f"{ctx.describe()}: output is not [B, {hq}, S, Dv] (shape {yd})")
            unit = _heads(ctx, hkv, hq // hkv)
            g = hq // hkv
            ctx.couple(unit, 0, q, 1, Block(g))
            ctx.couple(unit, 0, k, 1)
            ctx.couple(unit, 0, v, 1)
            ctx.couple(unit, 0, y, 1, Block(g))
            for x in (q, k, v, y):
                ctx.head_axis(x, 1)
            ctx.couple(q, 0, y, 0)
            ctx.couple(q, 2, y, 2)
            ctx.couple(k, 0, q, 0)
            ctx.couple(v, 0, q, 0)
            ctx.couple(k, 2, v, 2)
            qb = None  # the mask's batch/sequence axes are left unmapped
        else:
            raise Decline(f"{ctx.describe()}: query/key/value ranks {rq}/{rk}/{rv} are neither all 3 nor all 4")
        g = hq // hkv
        _head_bias(ctx, ctx.input(3), unit, hq, g, "attn_mask", q=qb)
        _couple_kv_state(ctx, unit, (ctx.input(4), ctx.input(5)), hkv, d, "past state")
        for i, dd in ((1, d), (2, dv)):
            _couple_kv_state(ctx, unit, (ctx.output(i),), hkv, dd, "present state", like=q,
                             fill=[_dim(q, 0), hkv, ir.SymbolicDim(None), dd])
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        keep = ctx.keep_virtual(_UNIT)
        if keep is None:
            return
        hq, hkv = ctx.attr_int("q_num_heads"), ctx.attr_int("kv_num_heads")
        kept = int(keep.sum())
        if hkv:
            ctx.set_attr_int("kv_num_heads", kept)
        if hq:
            ctx.set_attr_int("q_num_heads", kept * (hq // (hkv or hq)))


RULES: tuple[OpRule, ...] = (
    MultiHeadAttentionRule(),
    MsAttentionRule(),
    GroupQueryAttentionRule(),
    OnnxAttentionRule(),
)
