"""Undo the batch-folded ``K^T`` of the dynamo exporter's SDPA lowering (exact rewrite).

``torch.onnx.export(..., dynamo=True)`` lowers ``scaled_dot_product_attention``'s
``K.transpose(-2, -1)`` on ``K [B, H, S, D]`` as::

    s  = Shape(K)
    k3 = Reshape(K, Concat([-1], s[-2:-1], s[-1:]))        # [B*H, S, D]: heads folded into the batch
    kt = Transpose(k3, perm=[0, 2, 1])                     # [B*H, D, S]
    KT = Reshape(kt, Concat(s[:-2], s[-1:], s[-2:-1]))     # [B, H, D, S]

Folding ``H`` into the batch hides the head axis from the propagation (a
``Reshape`` that merges it with the batch, and a ``Shape`` read of it).  The
three nodes are exactly ``Transpose(K, perm=[.., r-1, r-2])``: merging the
leading axes, swapping the last two and splitting the leading axes again moves
no entry between leading indices.  The rewrite checks every entry of both
targets symbolically (each must be the named dim of ``K`` read through
``Shape``, as :func:`onnxsparse.graph.runtime_shape.trace` follows it, or the one ``-1``),
replaces the pattern by that Transpose, and removes the shape reads nothing
uses any more.  Anything else is left alone.  Like the packed-QKV split, the
rewrite is kept even when no head is then removed.
"""

from __future__ import annotations

import onnx_ir as ir

from ..graph import runtime_shape as _runtime_shape, value_facts as _shapes
from ._graph import (
    attr_int,
    attr_ints,
    onnx_domain,
    producer,
    rank_of,
    rewrite_matches,
)

__all__ = ["unlower_sdpa_transposes"]

_SHAPE_READS = ("Shape", "Slice", "Gather", "Unsqueeze", "Concat", "Cast", "Transpose", "Reshape")


def _dims_read(value: ir.Value | None) -> list[int | tuple[ir.Value, int] | None] | None:
    """A shape vector as :func:`~onnxsparse.graph.runtime_shape.trace` reads it: constants as ints,
    ``(x, axis)`` for the size of ``x``'s axis read through ``Shape`` (``None`` for a multiple of one)."""
    entries = _runtime_shape.trace(value)
    if entries is None:
        return None
    return [e.const if (read := e.read) is None else read if e.scale == 1 else None for e in entries]


def _match(r2: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
    """``r2`` is the final Reshape of the pattern: returns (K, pattern nodes)."""
    if r2.op_type != "Reshape" or not onnx_domain(r2) or attr_int(r2, "allowzero", 0):
        return None
    tr = producer(r2.inputs[0], "Transpose")
    if tr is None or attr_ints(tr, "perm") != [0, 2, 1]:
        return None
    r1 = producer(tr.inputs[0], "Reshape")
    if r1 is None or attr_int(r1, "allowzero", 0):
        return None
    k = r1.inputs[0]
    rank = rank_of(k)
    if k is None or rank is None or rank < 3:
        return None
    first = _dims_read(r1.inputs[1])
    if first != [-1, (k, rank - 2), (k, rank - 1)]:
        return None
    second = _dims_read(r2.inputs[1])
    if second != [*((k, i) for i in range(rank - 2)), (k, rank - 1), (k, rank - 2)]:
        return None
    if any(u.node is not tr for u in r1.outputs[0].uses()) or any(u.node is not r2 for u in tr.outputs[0].uses()):
        return None  # an intermediate is read elsewhere: leave the pattern alone
    if r2.outputs[0].is_graph_output():
        return None  # a graph output keeps its name
    return k, [r2, tr, r1]


def _rewrite(graph: ir.Graph, found: tuple[ir.Value, list[ir.Node]]) -> tuple[str, list[ir.Node]]:
    k, pattern = found
    r2 = pattern[0]
    rank = rank_of(k)
    assert rank is not None
    perm = [*range(rank - 2), rank - 1, rank - 2]
    name = f"{r2.name or 'sdpa'}.transpose_k"
    new = ir.Node("", "Transpose", [k], attributes=[ir.AttrInt64s("perm", perm)], name=name)
    out = new.outputs[0]
    out.name = f"{name}:0"
    _shapes.copy_dtype(out, k)
    if k.shape is not None:
        out.shape = ir.Shape([k.shape.dims[p] for p in perm])
    graph.insert_before(r2, new)
    r2.outputs[0].replace_all_uses_with(out)
    return name, pattern


def unlower_sdpa_transposes(graph: ir.Graph) -> list[str]:
    """Replace every batch-folded ``K^T`` of the dynamo SDPA lowering by one Transpose; returns their names."""
    return rewrite_matches(graph, _match, _rewrite, _SHAPE_READS)
