"""tf2onnx's Einsum lowering of batched matmuls, folded back into one broadcasting MatMul.

Keras ``MultiHeadAttention`` computes its scores and context with ``Einsum``
(``aecd,abcd->acbe`` and ``acbe,aecd->abcd``); tf2onnx lowers each into::

    A -> Reshape(A, Concat(ReduceProd(Gather(Shape(A), [0..nb-1])), [-1], Gather(Shape(A), [-1])))
    B -> Reshape(B, ... the same for B ...) -> Transpose(0, 2, 1)
    MatMul -> Reshape(Concat(Max(batch dims of A, of B), Gather(Shape(A), [i]), Gather(Shape(B), [j]), [1]))
           -> Squeeze(trailing ones)

which folds the head axis into the batch (``B*H``) through run-time shape reads.
Where every "middle" axis of ``A`` except ``i`` (and of ``B`` except ``j``) is
statically 1, this is exactly::

    MatMul(Squeeze(A, other middle axes), Transpose(Squeeze(B, other middle axes), swap last two))

(the batch axes broadcast per axis instead of flattened, which gives the same
numbers whenever the original runs).  The rewrite is applied before the analysis so
the dependency graph sees an ordinary ``[B, H, S, D]`` attention; anything that
does not match completely is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph import value_facts as _shapes
from ._graph import (
    attr_int,
    attr_ints,
    const_ints,
    is_const,
    new_constant,
    onnx_domain,
    producer,
    rewrite_matches,
)

__all__ = ["unlower_tf_batch_matmuls"]


def _shape_gather(value: ir.Value | None) -> tuple[ir.Value, list[int]] | None:
    """``Gather(Shape(X), const idx, axis=0)`` -> (X, idx)."""
    gather = producer(value, "Gather")
    if gather is None or (attr_int(gather, "axis", 0) or 0) != 0:
        return None
    shape = producer(gather.inputs[0], "Shape")
    idx = const_ints(gather.inputs[1])
    if shape is None or idx is None or "start" in shape.attributes or "end" in shape.attributes:
        return None
    if _shapes.dims(gather.inputs[1]) is None or len(_shapes.dims(gather.inputs[1])) != 1:  # type: ignore[arg-type]
        return None
    return shape.inputs[0], idx  # type: ignore[return-value]


def _flatten_batch(value: ir.Value | None) -> tuple[ir.Value, int, int, list[ir.Node]] | None:
    """``Reshape(X, [prod(X[:nb]), -1, X[-1]])`` -> (X, nb, rank of X, pattern nodes)."""
    reshape = producer(value, "Reshape")
    if reshape is None or attr_int(reshape, "allowzero", 0):
        return None
    x = reshape.inputs[0]
    shape = _shapes.dims(x)
    concat = producer(reshape.inputs[1], "Concat")
    if shape is None or concat is None or attr_int(concat, "axis", 0) not in (0, -1) or len(concat.inputs) != 3:
        return None
    rank = len(shape)
    prod = producer(concat.inputs[0], "ReduceProd")
    if prod is None or not attr_int(prod, "keepdims", 1) or attr_ints(prod, "axes") not in (None, [0], [-1]):
        return None
    if len(prod.inputs) > 1 and prod.inputs[1] is not None and const_ints(prod.inputs[1]) not in ([0], [-1]):
        return None
    batch = _shape_gather(prod.inputs[0])
    last = _shape_gather(concat.inputs[2])
    if batch is None or last is None or const_ints(concat.inputs[1]) != [-1]:
        return None
    nb = len(batch[1])
    if batch[0] is not x or last[0] is not x or batch[1] != list(range(nb)) or last[1] not in ([rank - 1], [-1]):
        return None
    if nb < 1 or rank < nb + 2:
        return None
    return x, nb, rank, [reshape, concat, prod]


def _middle_ok(shape: list[int | None], nb: int, keep: int) -> list[int] | None:
    """Middle axes of ``shape`` other than ``keep`` (all statically 1), or ``None``."""
    rank = len(shape)
    if not nb <= keep <= rank - 2:
        return None
    others = [a for a in range(nb, rank - 1) if a != keep]
    if any(shape[a] != 1 for a in others):
        return None
    return others


def _match(mm: ir.Node) -> tuple | None:
    if mm.op_type != "MatMul" or not onnx_domain(mm) or len(mm.inputs) != 2:
        return None
    if is_const(mm.inputs[0]) or is_const(mm.inputs[1]):
        return None
    fa = _flatten_batch(mm.inputs[0])
    tr = producer(mm.inputs[1], "Transpose")
    if fa is None or tr is None or attr_ints(tr, "perm") != [0, 2, 1] or len(tr.outputs[0].uses()) != 1:
        return None
    fb = _flatten_batch(tr.inputs[0])
    if fb is None or fa[1] != fb[1]:
        return None
    xa, nb, ra, _ = fa
    xb, _, rb, _ = fb
    uses = list(mm.outputs[0].uses())
    if len(uses) != 1 or mm.outputs[0].is_graph_output():
        return None
    out_rs = uses[0].node
    if out_rs.op_type != "Reshape" or not onnx_domain(out_rs) or uses[0].idx != 0 or attr_int(out_rs, "allowzero", 0):
        return None
    concat = producer(out_rs.inputs[1], "Concat")
    if concat is None or attr_int(concat, "axis", 0) not in (0, -1) or len(concat.inputs) < 3:
        return None
    mx = producer(concat.inputs[0], "Max")
    if mx is None or len(mx.inputs) != 2:
        return None
    batches = [_shape_gather(v) for v in mx.inputs]
    if any(b is None for b in batches) or {id(b[0]) for b in batches} != {id(xa), id(xb)} or xa is xb:  # type: ignore[index]
        return None
    if any(b[1] != list(range(nb)) for b in batches):  # type: ignore[index]
        return None
    ga, gb = _shape_gather(concat.inputs[1]), _shape_gather(concat.inputs[2])
    if ga is None or gb is None or ga[0] is not xa or gb[0] is not xb or len(ga[1]) != 1 or len(gb[1]) != 1:
        return None
    ones: list[int] = []
    for inp in concat.inputs[3:]:
        vals = const_ints(inp)
        if vals is None or any(v != 1 for v in vals):
            return None
        ones += vals
    i, j = ga[1][0] % ra, gb[1][0] % rb
    sa, sb = _shapes.dims(xa), _shapes.dims(xb)
    squeeze_a = _middle_ok(sa, nb, i)  # type: ignore[arg-type]
    squeeze_b = _middle_ok(sb, nb, j)  # type: ignore[arg-type]
    if squeeze_a is None or squeeze_b is None:
        return None
    final = out_rs.outputs[0]
    pattern = [mm, tr, out_rs, concat, mx, *fa[3], *fb[3]]
    if ones:
        uses = list(final.uses())
        if len(uses) != 1 or final.is_graph_output():
            return None
        sq = uses[0].node
        if sq.op_type != "Squeeze" or not onnx_domain(sq):
            return None
        axes = attr_ints(sq, "axes")
        if axes is None and len(sq.inputs) > 1:
            axes = const_ints(sq.inputs[1])
        out_rank = nb + 2 + len(ones)
        if axes is None or sorted(a % out_rank for a in axes) != list(range(nb + 2, out_rank)):
            return None
        final = sq.outputs[0]
        pattern.append(sq)
    return xa, xb, nb, squeeze_a, squeeze_b, final, pattern


def _squeeze(graph: ir.Graph, x: ir.Value, axes: list[int], name: str) -> tuple[ir.Value, list[ir.Node]]:
    if not axes:
        return x, []
    unsq = producer(x, "Unsqueeze")
    if unsq is not None:  # Squeeze(Unsqueeze(y, axes), axes) is y
        u_axes = attr_ints(unsq, "axes")
        if u_axes is None and len(unsq.inputs) > 1:
            u_axes = const_ints(unsq.inputs[1])
        rank = len(x.shape) if x.shape is not None else None
        if rank is not None and u_axes is not None and sorted(a % rank for a in u_axes) == axes:
            return unsq.inputs[0], []  # type: ignore[return-value]
    if _shapes.opset_version(graph.opset_imports, "") >= 13:
        axes_v = new_constant(graph, f"{name}.axes", np.array(axes, dtype=np.int64))
        node = ir.Node("", "Squeeze", [x, axes_v], name=name)
    else:
        node = ir.Node("", "Squeeze", [x], attributes=[ir.AttrInt64s("axes", axes)], name=name)
    out = node.outputs[0]
    out.name = f"{name}:0"
    _shapes.copy_dtype(out, x)
    if x.shape is not None:
        out.shape = ir.Shape([d for k, d in enumerate(x.shape.dims) if k not in axes])
    return out, [node]


def _rewrite(graph: ir.Graph, found: tuple) -> tuple[str, list[ir.Node]]:
    xa, xb, nb, squeeze_a, squeeze_b, final, pattern = found
    mm = pattern[0]
    base = mm.name or "einsum_matmul"
    a, nodes = _squeeze(graph, xa, squeeze_a, f"{base}.squeeze_a")
    b, more = _squeeze(graph, xb, squeeze_b, f"{base}.squeeze_b")
    nodes += more
    perm = [*range(nb), nb + 1, nb]
    tr = ir.Node("", "Transpose", [b], attributes=[ir.AttrInt64s("perm", perm)], name=f"{base}.transpose_b")
    tr.outputs[0].name = f"{base}.transpose_b:0"
    _shapes.copy_dtype(tr.outputs[0], b)
    if b.shape is not None:
        tr.outputs[0].shape = ir.Shape([b.shape.dims[p] for p in perm])
    new = ir.Node("", "MatMul", [a, tr.outputs[0]], name=f"{base}.batched")
    new.outputs[0].name, new.outputs[0].shape = f"{base}.batched:0", final.shape
    _shapes.copy_dtype(new.outputs[0], final)
    nodes += [tr, new]
    graph.insert_before(mm, nodes)
    final.replace_all_uses_with(new.outputs[0])
    return mm.name, pattern


_SHAPE_OPS = ("Shape", "Gather", "ReduceProd", "Max", "Concat", "Unsqueeze", "Transpose")


def unlower_tf_batch_matmuls(graph: ir.Graph) -> list[str]:
    """Fold every tf2onnx batched-matmul Einsum lowering in ``graph`` (in place); returns the MatMul names."""
    return rewrite_matches(graph, _match, _rewrite, _SHAPE_OPS)
