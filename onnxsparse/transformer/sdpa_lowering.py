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
``Shape``/``Slice``/``Gather``/``Unsqueeze``/``Concat``, or the one ``-1``),
replaces the pattern by that Transpose, and removes the shape reads nothing
uses any more.  Anything else is left alone.  Like the packed-QKV split, the
rewrite is kept even when no head is then removed.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph import _runtime_shape
from ._graph import (
    attr_int,
    attr_ints,
    const_ints,
    new_initializer,
    onnx_domain,
    rank_of,
    remove_dead,
    rewrite_matches,
)

__all__ = ["shape_entries", "simplify_repeat_kv", "unlower_sdpa_transposes"]

_SHAPE_READS = ("Shape", "Slice", "Gather", "Unsqueeze", "Concat", "Cast", "Transpose", "Reshape")

#: An entry of a 1-D shape vector: a constant, or ``(value, axis)`` = the size of ``value``'s axis.
Entry = int | tuple[ir.Value, int]


def shape_entries(value: ir.Value | None, depth: int = 0) -> list[Entry] | None:
    """The entries of a 1-D int shape vector, followed through Shape/Slice/Gather/Unsqueeze/Concat/Cast.

    ``None`` when any entry cannot be named exactly.
    """
    if value is None or depth > 12:
        return None
    ints = const_ints(value)
    if ints is not None:
        return list(ints)
    node = value.producer()
    if node is None or not onnx_domain(node):
        return None
    op = node.op_type
    if op == "Shape":
        x = node.inputs[0]
        rank = rank_of(x)
        if rank is None:
            return None
        start = attr_int(node, "start", 0) or 0
        end = attr_int(node, "end", rank)
        start = min(rank, max(0, start + rank if start < 0 else start))
        end = rank if end is None else min(rank, max(0, end + rank if end < 0 else end))
        return [(x, i) for i in range(start, end)]  # type: ignore[misc]
    if op in ("Cast", "Identity"):
        if op == "Cast" and attr_int(node, "to", 0) not in (int(ir.DataType.INT64), int(ir.DataType.INT32)):
            return None
        return shape_entries(node.inputs[0], depth + 1)
    if op == "Concat":
        if attr_int(node, "axis", 0) not in (0, -1):
            return None
        out: list[Entry] = []
        for inp in node.inputs:
            part = shape_entries(inp, depth + 1)
            if part is None:
                return None
            out.extend(part)
        return out
    if op == "Unsqueeze":
        axes = attr_ints(node, "axes")
        if axes is None and len(node.inputs) > 1:
            axes = const_ints(node.inputs[1])
        inner = shape_entries(node.inputs[0], depth + 1)
        if axes not in ([0], [-1]) or inner is None or len(inner) != 1 or rank_of(node.inputs[0]) != 0:
            return None
        return inner
    if op == "Gather":
        if (attr_int(node, "axis", 0) or 0) != 0:
            return None
        inner = shape_entries(node.inputs[0], depth + 1)
        idx = const_ints(node.inputs[1])
        if inner is None or idx is None:
            return None
        n = len(inner)
        if any(not -n <= i < n for i in idx):
            return None
        return [inner[i % n] for i in idx]
    if op == "Reshape" and const_ints(node.inputs[1]) == [-1] and rank_of(node.inputs[0]) == 1:
        return shape_entries(node.inputs[0], depth + 1)
    if op == "Where":
        # TorchScript's ``expand(.., -1, ..)``: Where(Equal(t, -1 * ones), ones, t) turns -1 into 1
        t = node.inputs[2]
        if _ones_like(node.inputs[1], t) and _minus_ones_eq(node.inputs[0], t):
            inner = shape_entries(t, depth + 1)
            return None if inner is None else [1 if e == -1 else e for e in inner]
        return None
    if op == "Slice":
        inner = shape_entries(node.inputs[0], depth + 1)
        starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
        axes = const_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
        steps = const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
        if inner is None or starts is None or ends is None or axes not in ([0], [-1]) or steps != [1]:
            return None
        n = len(inner)
        s = starts[0] + n if starts[0] < 0 else starts[0]
        e = ends[0] + n if ends[0] < 0 else ends[0]
        return inner[max(0, min(n, s)):max(0, min(n, e))]
    return None


def _filled_like(value: ir.Value | None, t: ir.Value | None, fill: int) -> bool:
    """``value`` is a constant of ``t``'s length holding only ``fill`` (a folded ``ConstantOfShape``)."""
    ints = const_ints(value)
    shape = t.shape if t is not None else None
    return (ints is not None and shape is not None and len(shape) == 1 and shape[0] == len(ints)
            and all(i == fill for i in ints))


def _ones_like(value: ir.Value | None, t: ir.Value | None) -> bool:
    """``value`` is ``ConstantOfShape(Shape(t), value=1)`` (or that folded to a constant)."""
    if _filled_like(value, t, 1):
        return True
    cos = _producer(value, "ConstantOfShape")
    shape = _producer(cos.inputs[0] if cos is not None else None, "Shape")
    if cos is None or shape is None or shape.inputs[0] is not t or shape.attributes.get("start") is not None:
        return False
    attr = cos.attributes.get("value")
    fill = attr.as_tensor().numpy().reshape(-1) if attr is not None else None
    return fill is not None and fill.size == 1 and int(fill[0]) == 1


def _minus_ones_eq(value: ir.Value | None, t: ir.Value | None) -> bool:
    """``value`` is ``Equal(t, Mul(ones_like(t), -1))``."""
    eq = _producer(value, "Equal")
    if eq is None or eq.inputs[0] is not t:
        return False
    if _filled_like(eq.inputs[1], t, -1):
        return True
    mul = _producer(eq.inputs[1], "Mul")
    if mul is None:
        return False
    a, b = mul.inputs[0], mul.inputs[1]
    if const_ints(b) == [-1]:
        return _ones_like(a, t)
    return const_ints(a) == [-1] and _ones_like(b, t)


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = None if value is None else value.producer()
    if node is None or node.op_type != op or not onnx_domain(node):
        return None
    return node


def _dims_read(value: ir.Value | None) -> list[int | tuple[ir.Value, int] | None] | None:
    """A shape vector as :func:`~onnxsparse.graph._runtime_shape.trace` reads it: constants as ints,
    ``(x, axis)`` for the size of ``x``'s axis read through ``Shape`` (``None`` for a multiple of one)."""
    entries = _runtime_shape.trace(value)
    if entries is None:
        return None
    return [e.const if not e.is_dim else (e.dim_of, e.axis) if e.scale == 1 else None for e in entries]


def _match(r2: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
    """``r2`` is the final Reshape of the pattern: returns (K, pattern nodes)."""
    if r2.op_type != "Reshape" or not onnx_domain(r2) or attr_int(r2, "allowzero", 0):
        return None
    tr = _producer(r2.inputs[0], "Transpose")
    if tr is None or attr_ints(tr, "perm") != [0, 2, 1]:
        return None
    r1 = _producer(tr.inputs[0], "Reshape")
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
    out.name, out.dtype = f"{name}:0", k.dtype
    if k.shape is not None:
        out.shape = ir.Shape([k.shape.dims[p] for p in perm])
    graph.insert_before(r2, new)
    r2.outputs[0].replace_all_uses_with(out)
    return name, pattern


def unlower_sdpa_transposes(graph: ir.Graph) -> list[str]:
    """Replace every batch-folded ``K^T`` of the dynamo SDPA lowering by one Transpose; returns their names."""
    return rewrite_matches(graph, _match, _rewrite, _SHAPE_READS)


# ----------------------------------------------------------------------------------------
# TorchScript's repeat_kv (grouped-query attention) with run-time shapes
# ----------------------------------------------------------------------------------------

def _same_dims(x: ir.Value, i: int, depth: int = 0) -> set[tuple[ir.Value, int]]:
    """``(value, axis)`` pairs known to have the size of axis ``i`` of ``x`` (through Unsqueeze/Identity)."""
    out = {(x, i)}
    node = x.producer()
    if node is None or not onnx_domain(node) or depth > 4:
        return out
    if node.op_type == "Identity" and node.inputs[0] is not None:
        out |= _same_dims(node.inputs[0], i, depth + 1)
    elif node.op_type == "Unsqueeze" and node.inputs[0] is not None:
        rank = rank_of(x)
        axes = attr_ints(node, "axes")
        if axes is None and len(node.inputs) > 1:
            axes = const_ints(node.inputs[1])
        if rank is None or axes is None:
            return out
        axes = [a % rank for a in axes]
        if i not in axes:
            out |= _same_dims(node.inputs[0], i - sum(1 for a in axes if a < i), depth + 1)
    return out


def _const_expand(node: ir.Node) -> list[int] | None:
    """``Expand(x, s)`` whose entries are x's own dims (or constants): the constant target that does the same.

    Broadcasting a dim against 1 keeps it, so each entry equal to x's dim becomes 1.
    """
    x = node.inputs[0]
    rank = rank_of(x)
    if x is None or rank is None or len(node.inputs) < 2 or const_ints(node.inputs[1]) is not None:
        return None
    entries = shape_entries(node.inputs[1])
    if entries is None or len(entries) < rank:
        return None
    new = []
    for j, entry in enumerate(entries):
        i = j - (len(entries) - rank)
        if isinstance(entry, int):
            if entry < 1:
                return None
            new.append(entry)
        elif i >= 0 and entry in _same_dims(x, i):
            new.append(1)
        else:
            return None
    return new


def _one_computed_entry(node: ir.Node) -> int | None:
    """For ``Reshape(x, Concat(parts))``: the index of the only part that is neither a constant nor a
    read dim (e.g. ``Unsqueeze(Mul(Gather(Shape(k), 1), n_rep))``), when every other entry is a positive
    constant or a read dim; ``None`` otherwise."""
    concat = _producer(node.inputs[1], "Concat")
    if concat is None or attr_int(concat, "axis", 0) not in (0, -1) or attr_int(node, "allowzero", 0):
        return None
    computed = []
    for k, part in enumerate(concat.inputs):
        entries = shape_entries(part)
        if entries is None:
            shape = part.shape if part is not None else None
            if shape is None or list(shape.dims) != [1]:
                return None
            computed.append(k)
        elif any(isinstance(e, int) and e < 1 for e in entries):
            return None
    return computed[0] if len(computed) == 1 else None


def simplify_repeat_kv(graph: ir.Graph) -> list[str]:
    """TorchScript's ``repeat_kv`` (``k[:, :, None].expand(b, h_kv, n_rep, s, d).reshape(b, h_kv * n_rep, s, d)``)
    builds both shapes from ``Shape(k)`` reads, the head count among them.  Rewrite, exactly:

    * ``Expand(x, s)`` whose entries are x's own dims (read through Shape) or constants ->
      ``Expand(x, const)`` with 1 for every dim of x (broadcasting keeps it);
    * the ``Reshape`` after it, whose target has one computed entry (``h_kv * n_rep``) and read dims
      or positive constants elsewhere -> that entry becomes ``-1`` (the same number whenever the
      other entries are not 0: an empty batch or sequence is the one case that changes, from an
      empty result to a Reshape error).

    Returns the names of the nodes changed; the shape reads left unused are removed.
    """
    done: list[str] = []
    for node in list(graph):
        if node.graph is not graph or node.op_type != "Expand" or not onnx_domain(node):
            continue
        try:
            new = _const_expand(node)
        except Exception:  # noqa: BLE001 - "not this pattern"
            new = None
        if new is None:
            continue
        old = node.inputs[1]
        value = new_initializer(graph, f"{node.name or 'expand'}.shape", np.array(new, dtype=np.int64))
        node.replace_input_with(1, value)
        done.append(node.name)
        for use in list(node.outputs[0].uses()):
            reshape = use.node
            if reshape.op_type != "Reshape" or use.idx != 0 or not onnx_domain(reshape):
                continue
            k = _one_computed_entry(reshape)
            if k is None:
                continue
            concat = reshape.inputs[1].producer()  # type: ignore[union-attr]
            if len(reshape.inputs[1].uses()) > 1:  # type: ignore[union-attr]
                continue  # shared target: leave it
            dead = concat.inputs[k].producer()  # type: ignore[union-attr]
            minus = new_initializer(graph, f"{reshape.name or 'reshape'}.heads", np.array([-1], dtype=np.int64))
            concat.replace_input_with(k, minus)  # type: ignore[union-attr]
            if dead is not None:
                remove_dead(graph, [dead], ops=(*_SHAPE_READS, "Mul"))
            done.append(reshape.name)
        producer = old.producer() if old is not None else None
        if producer is not None:
            remove_dead(graph, [producer], ops=(*_SHAPE_READS, "Where", "Equal", "Mul", "ConstantOfShape"))
    return done
