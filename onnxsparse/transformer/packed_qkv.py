"""Packed QKV projections, split into separate Q, K and V projections before the analysis.

GPT-2 (``c_attn``) and timm's ViT compute Q, K and V with one ``Linear(d, 3d)``:

* **split**: ``MatMul(x, W[E, 3E]) (+ Add(b)) -> Split(last axis, [E, E, E])`` (GPT-2);
* **stacked**: ``MatMul (+ Add) -> Reshape(.., 3, H, D) -> Transpose(2, 0, 3, 1, 4)`` and the three
  pieces taken along axis 0 by ``Split + Squeeze`` (TorchScript ``unbind``), ``Slice + Squeeze``
  (dynamo) or ``Gather(i)`` (``qkv[0]``) (timm).

* **column pieces** (Hugging Face exports, see ``_unpack_columns``): ``MatMul`` (+ ``Add``) or
  ``Gemm`` (GPT-2's Conv1D on a flattened ``[B*S, E]`` view), an optional Reshape that keeps or
  splits the last axis (``[B, S, N]``; GPT-NeoX's per-head interleaved ``[B, S, H, 3D]``), an
  optional Transpose that keeps the last axis last, then ``Split`` or ``Slice`` nodes cutting the
  last axis into contiguous column ranges (any number >= 2, unequal widths allowed: Phi-3's GQA
  ``qkv_proj`` and its ``gate_up_proj``).  TorchScript's ``torch.chunk`` bounds computed from
  ``Shape`` are evaluated from static dims.  An interleaved piece takes the columns
  ``h*3D + s .. h*3D + e`` of every head ``h`` -- a column permutation of the weight.

The first two are rewritten into three projections with the column slices of ``W`` and ``b``
(``W[:, i*E:(i+1)*E]``) -- exactly the same products, column for column -- and, for the
stacked form, a ``Reshape(0, 0, H, D) -> Transpose(0, 2, 1, 3)`` per piece, which is what
the piece was.  The dependency graph then sees ordinary separate projections.
Anything that does not match completely is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from collections.abc import Iterable

from ..graph import runtime_shape as _runtime_shape, value_facts as _shapes
from ..graph.linear import linear_op
from ._graph import const_array, const_ints, drop_if_unused, is_const, new_constant, onnx_domain

__all__ = ["unpack_packed_qkv", "unpack_packed_columns", "fold_own_dim_targets"]


def _target_consts(node: ir.Node, index: int) -> list[int | None] | None:
    """The entries of ``node``'s shape input ``index`` (:func:`~onnxsparse.graph._runtime_shape.trace`):
    constants as ints, run-time dims as ``None``; ``None`` when the target cannot be read."""
    target = node.inputs[index]
    if target is None or target.is_graph_input():
        return None  # an overridable input is no constant
    entries = _runtime_shape.trace(target)
    return None if entries is None else [None if e.is_dim else e.const for e in entries]


def _ints_arg(node: ir.Node, index: int, attr: str) -> list[int] | None:
    """Ints a node takes as constant input ``index`` (newer opsets) or else as attribute ``attr`` (older)."""
    arr = const_array(node.inputs[index]) if len(node.inputs) > index and node.inputs[index] is not None else None
    if arr is not None:
        return [int(v) for v in arr.reshape(-1)]
    ints = node.attributes.get_ints(attr, None)
    return None if ints is None else [int(v) for v in ints]


def _slice_consts(node: ir.Node) -> tuple[int, int, int, int] | None:
    """(start, end, axis, step) of a one-axis ``Slice`` whose bounds are constants (axis 0, step 1 by default)."""
    ins = node.inputs

    def one(index: int, default: int | None) -> int | None:
        if index >= len(ins) or ins[index] is None:
            return default
        arr = const_array(ins[index])
        return None if arr is None or arr.size != 1 else int(arr.reshape(-1)[0])

    start, end, axis, step = one(1, None), one(2, None), one(3, 0), one(4, 1)
    if start is None or end is None or axis is None or step is None:
        return None
    return start, end, axis, step


def _earliest_producer(graph: ir.Graph, values: Iterable[ir.Value]) -> ir.Node:
    """The producer of ``values`` that comes first in ``graph``: new nodes go before it, so before every reader."""
    order = {n: k for k, n in enumerate(graph)}
    producers = [p for v in values if (p := v.producer()) is not None]
    return min(producers, key=order.__getitem__)


def _single_use(value: ir.Value) -> ir.Node | None:
    uses = [u for u in value.uses() if u.node.op_type != "Shape"]
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def _projection(node: ir.Node) -> tuple[ir.Value, ir.Value, np.ndarray, np.ndarray | None, ir.Node | None] | None:
    """(x, output, W [E, 3E'], bias or None, bias Add node) of a packed MatMul (+ Add)."""
    if node.op_type != "MatMul" or not onnx_domain(node) or len(node.inputs) != 2:
        return None
    x, w = node.inputs
    if x is None or is_const(x) or not is_const(w):
        return None
    weight = const_array(w)
    if weight is None or weight.ndim != 2 or weight.shape[1] % 3:
        return None
    out = node.outputs[0]
    nxt = _single_use(out)
    if nxt is not None and nxt.op_type == "Add" and onnx_domain(nxt):
        other = nxt.inputs[1] if nxt.inputs[0] is out else nxt.inputs[0]
        bias = const_array(other)
        if bias is not None and bias.shape == (weight.shape[1],):
            return x, nxt.outputs[0], weight, bias, nxt
    return x, out, weight, None, None


def _axis0_pieces(value: ir.Value) -> list[ir.Value] | None:
    """The three ``[..]`` pieces taken from axis 0 of a ``[3, ..]`` value, in order."""
    uses = [u.node for u in value.uses()]
    if len(uses) == 1 and uses[0].op_type == "Split" and onnx_domain(uses[0]):
        split = uses[0]
        if (split.attributes.get_int("axis", 0) or 0) != 0 or len(split.outputs) != 3:
            return None
        sizes = _ints_arg(split, 1, "split")
        if sizes is not None and sizes != [1, 1, 1]:
            return None
        pieces = []
        for out in split.outputs:
            squeeze = _single_use(out)
            if squeeze is None or squeeze.op_type != "Squeeze" or not _squeezes_axis0(squeeze):
                return None
            pieces.append(squeeze.outputs[0])
        return pieces
    found: dict[int, ir.Value] = {}
    for node in uses:
        if not onnx_domain(node):
            return None
        if node.op_type == "Gather" and (node.attributes.get_int("axis", 0) or 0) == 0:
            idx = const_array(node.inputs[1])
            if idx is None or idx.ndim != 0:
                return None
            found[int(idx) % 3] = node.outputs[0]
        elif node.op_type == "Slice":
            bounds = _slice_consts(node)
            if bounds is None or bounds[2] != 0 or bounds[3] != 1:
                return None
            start = bounds[0] % 3
            if bounds[1] not in (start + 1, start + 1 - 3):
                return None
            squeeze = _single_use(node.outputs[0])
            if squeeze is None or squeeze.op_type != "Squeeze" or not _squeezes_axis0(squeeze):
                return None
            found[start] = squeeze.outputs[0]
        else:
            return None
    return [found[i] for i in range(3)] if sorted(found) == [0, 1, 2] else None


def _squeezes_axis0(node: ir.Node) -> bool:
    return _ints_arg(node, 1, "axes") == [0]


def _split_pieces(value: ir.Value, width: int) -> list[ir.Value] | None:
    node = _single_use(value)
    if node is None or node.op_type != "Split" or not onnx_domain(node) or len(node.outputs) != 3:
        return None
    rank = len(value.shape) if value.shape is not None else None
    axis = node.attributes.get_int("axis", 0) or 0
    if rank is None or axis not in (-1, rank - 1):
        return None
    sizes = _ints_arg(node, 1, "split")
    if sizes is not None and sizes != [width] * 3:
        return None
    return list(node.outputs)


def _stacked(value: ir.Value, width: int) -> tuple[int, int, list[ir.Value]] | None:
    """(heads, head size, pieces) of ``Reshape(.., 3, H, D) -> Transpose(2, 0, 3, 1, 4) -> pieces``."""
    reshape = _single_use(value)
    if reshape is None or reshape.op_type != "Reshape" or not onnx_domain(reshape):
        return None
    in_rank = len(value.shape) if value.shape is not None else None
    out_shape = reshape.outputs[0].shape
    if in_rank != 3 or out_shape is None or len(out_shape) != 5:
        return None
    consts = _target_consts(reshape, 1)
    three, h, d = consts[2:5] if consts is not None and len(consts) >= 5 else (None, None, None)
    dims = [dim if isinstance(dim, int) else None for dim in out_shape]
    three = three if three not in (None, 0, -1) else dims[2]
    h = h if h not in (None, 0, -1) else dims[3]
    d = d if d not in (None, 0, -1) else dims[4]
    if h == -1 and isinstance(d, int):
        h = width // d
    if d == -1 and isinstance(h, int):
        d = width // h
    if three != 3 or not isinstance(h, int) or not isinstance(d, int) or h * d != width:
        return None
    transpose = _single_use(reshape.outputs[0])
    if transpose is None or transpose.op_type != "Transpose" or not onnx_domain(transpose):
        return None
    perm = transpose.attributes.get_ints("perm", None)
    if perm is None or list(perm) != [2, 0, 3, 1, 4]:
        return None
    pieces = _axis0_pieces(transpose.outputs[0])
    return None if pieces is None else (h, d, pieces)


def _dims(value: ir.Value) -> list:
    return list(value.shape) if value.shape is not None else []


def _unpack_one(graph: ir.Graph, matmul: ir.Node) -> str | None:
    try:  # matching only reads the graph; anything unexpected means "not this pattern"
        found = _projection(matmul)
        if found is None:
            return None
        x, packed, weight, bias, add = found
        width = weight.shape[1] // 3
        split = _split_pieces(packed, width)
        stacked = None if split is not None else _stacked(packed, width)
    except Exception:  # noqa: BLE001
        return None
    if split is not None:
        targets = split
    elif stacked is not None:
        targets = stacked[2]
    else:
        return None
    if any(t.is_graph_output() for t in targets):
        return None  # a graph output keeps its name: not rewritten
    w_value = matmul.inputs[1]
    if w_value is None:  # pragma: no cover - _projection read the weight from it
        return None
    b_value = None if add is None else (add.inputs[1] if add.inputs[0] is packed or add.inputs[0] is matmul.outputs[0] else add.inputs[0])
    # the bias with its Add and its value (_projection returns them together)
    bias_add = (bias, add, b_value) if bias is not None and add is not None and b_value is not None else None
    names = ("q", "k", "v")
    anchor = _earliest_producer(graph, targets)  # before every reader of a piece
    base_shape = _dims(packed)[:-1]
    for i, (role, old) in enumerate(zip(names, targets)):
        cols = slice(i * width, (i + 1) * width)
        w_i = new_constant(graph, f"{w_value.name}.{role}", weight[:, cols])
        mm = ir.Node("", "MatMul", [x, w_i], name=f"{matmul.name}.{role}")
        out = mm.outputs[0]
        out.name = f"{packed.name}.{role}"
        _shapes.copy_dtype(out, packed)
        out.shape = ir.Shape([*base_shape, width]) if base_shape else None
        new_nodes = [mm]
        if bias_add is not None:
            b_i = new_constant(graph, f"{bias_add[2].name}.{role}", bias_add[0][cols])
            ad = ir.Node("", "Add", [out, b_i], name=f"{bias_add[1].name}.{role}")
            ad.outputs[0].name = f"{packed.name}.{role}.biased"
            _shapes.copy_dtype(ad.outputs[0], packed)
            ad.outputs[0].shape = out.shape
            out = ad.outputs[0]
            new_nodes.append(ad)
        if stacked is not None:
            h, d = stacked[0], stacked[1]
            target = new_constant(graph, f"{matmul.name}.{role}.heads_shape", np.array([0, 0, h, d], dtype=np.int64))
            rs = ir.Node("", "Reshape", [out, target], name=f"{matmul.name}.{role}.split_heads")
            rs.outputs[0].name = f"{packed.name}.{role}.heads"
            _shapes.copy_dtype(rs.outputs[0], packed)
            rs.outputs[0].shape = ir.Shape([*base_shape, h, d]) if len(base_shape) == 2 else None
            tr = ir.Node("", "Transpose", [rs.outputs[0]], attributes=[ir.AttrInt64s("perm", [0, 2, 1, 3])],
                         name=f"{matmul.name}.{role}.transpose")
            tr.outputs[0].name = f"{packed.name}.{role}.bhsd"
            _shapes.copy_dtype(tr.outputs[0], packed)
            tr.outputs[0].shape = old.shape
            out = tr.outputs[0]
            new_nodes += [rs, tr]
        graph.insert_before(anchor, new_nodes)
        old.replace_all_uses_with(out)
    _remove_dead(graph, matmul)
    for value in (w_value, b_value):
        drop_if_unused(graph, value)
    return matmul.name


def _remove_dead(graph: ir.Graph, start: ir.Node | None, chain: tuple[ir.Node, ...] = ()) -> None:
    """Remove ``start`` and what it fed that nothing reads any more (consumers first)."""
    pending = [start] if start is not None else []
    order: list[ir.Node] = []
    seen: set[ir.Node] = set()
    while pending:
        node = pending.pop()
        if node in seen:
            continue
        seen.add(node)
        order.append(node)
        for out in node.outputs:
            pending.extend(u.node for u in out.uses())
    for node in reversed(order):
        if all(not out.uses() and not out.is_graph_output() for out in node.outputs):
            graph.remove(node, safe=True)
    # Shape nodes that read the packed value (TorchScript) and fed only removed nodes are dead too.
    changed = True
    while changed:
        changed = False
        for node in list(graph):
            shape_op = node.op_type in ("Shape", "Gather", "Unsqueeze", "Concat", "Slice", "Squeeze", "Cast") or (
                node.op_type in ("Add", "Sub", "Mul", "Div")
                and node.outputs and node.outputs[0].dtype in (ir.DataType.INT64, ir.DataType.INT32))
            if (shape_op or node in chain) and all(
                not out.uses() and not out.is_graph_output() for out in node.outputs
            ) and node.outputs:
                graph.remove(node, safe=True)
                changed = True


def unpack_packed_qkv(graph: ir.Graph) -> list[str]:
    """Rewrite every packed QKV projection in ``graph`` (in place); returns their node names."""
    done = []
    for node in list(graph):
        if node.graph is not graph:
            continue  # removed by an earlier rewrite
        name = _unpack_one(graph, node)
        if name:
            done.append(name)
    return done + unpack_packed_columns(graph)


# --------------------------------------------------------------------------------------------
# Column pieces: HF exports (GPT-2 Conv1D, Phi-3 qkv_proj / gate_up_proj, GPT-NeoX query_key_value)
# --------------------------------------------------------------------------------------------
#
#   P = x W (+ b)                       MatMul (+ Add), or Gemm(transA=0, alpha=beta=1, C = b)
#   [R = Reshape(P, [.., G*?, L])]      optional; its last entry is the constant L with N % L == 0
#   [T = Transpose(R, perm)]            optional; perm keeps the last axis last
#   pieces = Split / Slice of the last axis into contiguous column ranges [s_i, e_i) of L
#
# Row-major Reshape keeps the flat order, so the last axis of R holds column g*L + c of P in
# row g (G = N / L groups: 1 for GPT-2 / Phi-3, the heads for GPT-NeoX's [B, S, H, 3*D]).
# Piece i is then exactly Transpose(Reshape(x W_i (+ b_i), target with last entry e_i - s_i))
# with W_i = W[:, [g*L + c for g in range(G) for c in range(s_i, e_i)]]: the leading entries of
# the target are the same inputs, and resolve to the same sizes (a -1 absorbs the same count).

_INT_MAX = 2**62


def _gemm_weight(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(W [K, N], bias [N] or None) of a Gemm that is exactly ``x W + b``."""
    a = node.attributes
    view = linear_op(node, 1, weight_rank=2)
    if view.data_axis != 1 or (a.get_float("alpha", 1.0) or 1.0) != 1.0:  # transA, or scaled
        return None
    weight = const_array(node.inputs[1])
    if weight is None or weight.ndim != 2:
        return None
    if not view.transposed:  # stored [N, K] (transB)
        weight = weight.T
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        if a.get_float("beta", 1.0) != 1.0:
            return None
        bias = const_array(node.inputs[2])
        if bias is None or bias.shape != (weight.shape[1],):
            return None
    return weight, bias


def _packed_projection(node: ir.Node) -> tuple[ir.Value, ir.Value, np.ndarray, np.ndarray | None, list[ir.Node]] | None:
    """(x, output, W [K, N], bias or None, nodes of the projection) or None."""
    if not onnx_domain(node) or node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    x = node.inputs[0]
    if x is None or is_const(x) or not is_const(node.inputs[1]):
        return None
    if node.op_type == "Gemm":
        found = _gemm_weight(node)
        if found is None:
            return None
        weight, bias = found
    else:
        matrix = const_array(node.inputs[1])
        if matrix is None or matrix.ndim != 2:
            return None
        weight, bias = matrix, None
    nodes = [node]
    out = node.outputs[0]
    if bias is None:
        nxt = _single_use(out)
        if nxt is not None and nxt.op_type == "Add" and onnx_domain(nxt):
            other = nxt.inputs[1] if nxt.inputs[0] is out else nxt.inputs[0]
            b = const_array(other)
            if b is not None and b.shape == (weight.shape[1],):
                bias, out = b, nxt.outputs[0]
                nodes.append(nxt)
    return x, out, weight, bias, nodes


def _shape_ints(value: ir.Value | None, depth: int = 0) -> tuple[list[int | None], bool] | None:
    """(entries, is_scalar) of a small integer tensor computed from constants and static dims.

    TorchScript writes ``torch.chunk`` bounds as ``k * ((Shape(x)[-1] + n - 1) / n)``; with ``x``'s
    last dim known from shape inference they are constants.  Unknown entries are ``None``.
    """
    if value is None or depth > 12:
        return None
    arr = const_array(value)
    if arr is not None:
        if arr.dtype.kind not in "iu" or arr.ndim > 1:
            return None
        return [int(v) for v in arr.reshape(-1)], arr.ndim == 0
    node = value.producer()
    if node is None or not onnx_domain(node):
        return None
    op = node.op_type
    if op == "Shape":
        dims = _shapes.dims(node.inputs[0])
        if dims is None:
            return None
        rank = len(dims)
        start = node.attributes.get_int("start", 0) or 0
        end = node.attributes.get_int("end", rank)
        end = rank if end is None else end
        start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else end)
        return [None if d is None else int(d) for d in dims[max(0, start):min(rank, end)]], False
    ins = [_shape_ints(i, depth + 1) if i is not None else None for i in node.inputs]
    if op in ("Add", "Sub", "Mul", "Div"):
        if len(ins) != 2 or ins[0] is None or ins[1] is None:
            return None
        (a, sa), (b, sb) = ins[0], ins[1]
        if len(a) != len(b):
            if len(a) == 1:
                a = a * len(b)
            elif len(b) == 1:
                b = b * len(a)
            else:
                return None
        def f(x, y):
            if x is None or y is None:
                return None
            if op == "Add":
                return x + y
            if op == "Sub":
                return x - y
            if op == "Mul":
                return x * y
            if y == 0:
                return None
            q = abs(x) // abs(y)
            return q if (x >= 0) == (y >= 0) else -q  # ONNX integer Div truncates
        return [f(x, y) for x, y in zip(a, b)], sa and sb
    if op == "Gather" and len(ins) == 2 and ins[0] is not None and (node.attributes.get_int("axis", 0) or 0) == 0:
        idx = const_array(node.inputs[1])
        data = ins[0][0]
        if idx is None or idx.ndim > 1:
            return None
        try:
            return [data[int(i)] for i in idx.reshape(-1)], idx.ndim == 0
        except IndexError:
            return None
    if op in ("Unsqueeze", "Squeeze", "Identity", "Cast") and ins and ins[0] is not None:
        if op == "Cast" and node.attributes.get_int("to", 0) not in (int(ir.DataType.INT64), int(ir.DataType.INT32)):
            return None
        scalar = {"Unsqueeze": False, "Squeeze": True}.get(op, ins[0][1])
        if op == "Squeeze" and len(ins[0][0]) != 1:
            return None
        return ins[0][0], scalar
    if op == "Slice" and len(ins) >= 3 and ins[0] is not None:
        bounds = _slice_consts(node)
        if bounds is None or bounds[2] not in (0, -1) or bounds[3] != 1:
            return None
        data = ins[0][0]
        n = len(data)
        st, en = bounds[0], bounds[1]
        st, en = (st + n if st < 0 else st), (en + n if en < 0 else en)
        return data[max(0, min(st, n)):max(0, min(en, n))], False
    if op == "Concat":
        parts = [i for i in ins if i is not None]
        if len(parts) != len(ins):
            return None
        return [v for i in parts for v in i[0]], False
    return None


def _bound(value: ir.Value | None) -> int | None:
    got = _shape_ints(value)
    if got is None or len(got[0]) != 1 or got[0][0] is None:
        return None
    return int(got[0][0])


def _depends_on(value: ir.Value, target: ir.Value, graph: ir.Graph, limit: int = 2000) -> bool:
    """True when ``value`` may be computed from ``target`` (nodes before target's producer cannot)."""
    order = {nd: k for k, nd in enumerate(graph)}
    origin = target.producer()
    start = -1 if origin is None else order.get(origin, -1)
    seen, stack = set(), [value]
    while stack:
        v = stack.pop()
        if v is target:
            return True
        if id(v) in seen:
            continue
        seen.add(id(v))
        if len(seen) > limit:
            return True  # too far to tell: assume it does
        p = v.producer()
        if p is not None and order.get(p, start + 1) > start:
            stack.extend(i for i in p.inputs if i is not None)
    return False


def _last_axis_pieces(value: ir.Value, rank: int, width: int) -> list[tuple[int, int, ir.Value]] | None:
    """[(start, end, piece)] of the last axis of ``value``, contiguous over [0, width), >= 2 pieces."""
    uses = [u.node for u in value.uses() if u.node.op_type != "Shape"]
    if not uses or value.is_graph_output():
        return None
    found: list[tuple[int, int, ir.Value]] = []
    if len(uses) == 1 and uses[0].op_type == "Split":
        split = uses[0]
        if not onnx_domain(split) or split.inputs[0] is not value:
            return None
        axis = split.attributes.get_int("axis", 0) or 0
        if axis % rank != rank - 1:
            return None
        n = len(split.outputs)
        sizes = _ints_arg(split, 1, "split")
        if sizes is None:
            if width % n:
                return None
            sizes = [width // n] * n
        if len(sizes) != n or sum(sizes) != width:
            return None
        start = 0
        for size, out in zip(sizes, split.outputs):
            found.append((start, start + size, out))
            start += size
    else:
        for node in uses:
            if node.op_type != "Slice" or not onnx_domain(node) or node.inputs[0] is not value:
                return None
            ins = list(node.inputs) + [None] * (5 - len(node.inputs))
            s, e = _bound(ins[1]), _bound(ins[2])
            slice_axis = _bound(ins[3]) if ins[3] is not None else 0
            step = _bound(ins[4]) if ins[4] is not None else 1
            if s is None or e is None or slice_axis is None or step != 1 or slice_axis % rank != rank - 1:
                return None
            s = s + width if s < 0 else s
            e = e + width if e < 0 else e
            s, e = max(0, min(s, width)), max(0, min(e, width))
            if e <= s:
                return None
            found.append((s, e, node.outputs[0]))
        found.sort(key=lambda t: t[0])
        if found[0][0] != 0 or found[-1][1] != width or any(a[1] != b[0] for a, b in zip(found, found[1:])):
            return None
    if any(p[2].is_graph_output() for p in found):
        return None  # a graph output keeps its name: not rewritten
    return found if len(found) >= 2 else None


def _last_settable(target: ir.Value | None) -> bool:
    """The last entry of a shape target is a constant :func:`_retarget` can set."""
    if const_ints(target) is not None:
        return True
    entries = _runtime_shape.trace(target)
    if not entries or entries[-1].source is None:
        return False
    src_node, index, _ = entries[-1].source
    return is_const(src_node.inputs[index])


def _retarget(graph: ir.Graph, rs: ir.Node, last: int, name: str) -> None:
    """Give ``rs`` (in the graph, reading its original's target) that target with the last entry set to
    ``last``: a new constant, or for a run-time target a copy of its nodes
    (:func:`~onnxsparse.graph._runtime_shape.set_entries`)."""
    target = rs.inputs[1]
    ints = const_ints(target)
    if ints is not None:
        rs.replace_input_with(1, new_constant(graph, name, np.array([*ints[:-1], last], dtype=np.int64)))
        return
    entries = _runtime_shape.trace(target)
    if entries is None or not _runtime_shape.set_entries(rs, 1, entries, {len(entries) - 1: last}, suffix=f"__{name}"):
        raise RuntimeError("unreachable: the target was read above")  # pragma: no cover


def _unpack_columns(graph: ir.Graph, first: ir.Node) -> str | None:
    try:
        found = _packed_projection(first)
        if found is None:
            return None
        x, packed, weight, bias, proj_nodes = found
        n = weight.shape[1]
        value, reshape, transpose = packed, None, None
        reshape_rank: int | None = None
        last = n
        nxt = _single_use(value)
        if nxt is not None and nxt.op_type == "Reshape" and onnx_domain(nxt) and nxt.inputs[0] is value:
            entries = _target_consts(nxt, 1)
            shape_target = nxt.inputs[1]
            if entries is None or shape_target is None or not _last_settable(shape_target):
                return None
            reshape_rank = len(entries)
            in_rank = len(value.shape) if value.shape is not None else None
            L = entries[-1] if entries else None
            if in_rank is None or not isinstance(L, int) or L <= 0 or n % L:
                return None
            if (nxt.attributes.get_int("allowzero", 0) or 0) == 0 and len(entries) > in_rank - 1 \
                    and entries[in_rank - 1] == 0:
                return None  # a 0 entry would copy the packed width
            if _depends_on(shape_target, packed, graph):
                return None
            reshape, value, last = nxt, nxt.outputs[0], L
            nxt = _single_use(value)
            if nxt is not None and nxt.op_type == "Transpose" and onnx_domain(nxt):
                perm = nxt.attributes.get_ints("perm", None)
                if perm is None or perm[-1] != len(perm) - 1:
                    return None
                transpose, value = nxt, nxt.outputs[0]
        rank = len(value.shape) if value.shape is not None else (
            len(list(transpose.attributes.get_ints("perm"))) if transpose is not None else None)
        if rank is None:
            rank = reshape_rank
        if rank is None:
            return None
        pieces = _last_axis_pieces(value, rank, last)
        if pieces is None:
            return None
    except Exception:  # noqa: BLE001 - matching only reads the graph; anything unexpected: not this form
        return None
    groups = n // last
    roles = ("q", "k", "v") if len(pieces) == 3 else tuple(f"p{i}" for i in range(len(pieces)))
    anchor = _earliest_producer(graph, (p[2] for p in pieces))
    w_value = first.inputs[1]
    if w_value is None:  # pragma: no cover - _packed_projection read the weight from it
        return None
    b_value = None
    if first.op_type == "Gemm" and len(first.inputs) > 2:
        b_value = first.inputs[2]
    elif len(proj_nodes) > 1:
        add = proj_nodes[1]
        b_value = add.inputs[1] if add.inputs[0] is first.outputs[0] else add.inputs[0]
    out_dims = _dims(packed)
    b_name = None if b_value is None else b_value.name
    for role, (s, e, old) in zip(roles, pieces):
        cols = np.array([g * last + c for g in range(groups) for c in range(s, e)], dtype=np.int64)
        w_i = weight[:, cols]
        base = f"{first.name}.{role}"
        if first.op_type == "Gemm":
            w_store = w_i if linear_op(first, 1).transposed else w_i.T  # back to the Gemm's own layout
            ins = [x, new_constant(graph, f"{w_value.name}.{role}", w_store)]
            if bias is not None:
                ins.append(new_constant(graph, f"{b_name}.{role}", bias[cols]))
            mm = ir.Node("", "Gemm", ins, attributes=list(first.attributes.values()), name=base)
        else:
            mm = ir.Node("", "MatMul", [x, new_constant(graph, f"{w_value.name}.{role}", w_i)], name=base)
        out = mm.outputs[0]
        out.name = f"{packed.name}.{role}"
        _shapes.copy_dtype(out, packed)
        out.shape = ir.Shape([*out_dims[:-1], len(cols)]) if out_dims else None
        new_nodes = [mm]
        if bias is not None and first.op_type != "Gemm":
            ad = ir.Node("", "Add", [out, new_constant(graph, f"{b_name}.{role}", bias[cols])], name=f"{base}.bias")
            ad.outputs[0].name = f"{packed.name}.{role}.biased"
            _shapes.copy_dtype(ad.outputs[0], packed)
            ad.outputs[0].shape = out.shape
            out = ad.outputs[0]
            new_nodes.append(ad)
        rs = None
        if reshape is not None:
            rs = ir.Node("", "Reshape", [out, reshape.inputs[1]], attributes=list(reshape.attributes.values()),
                         name=f"{base}.reshape")
            rs.outputs[0].name = f"{packed.name}.{role}.reshaped"
            _shapes.copy_dtype(rs.outputs[0], packed)
            r_dims = _dims(reshape.outputs[0])
            rs.outputs[0].shape = ir.Shape([*r_dims[:-1], e - s]) if r_dims else None
            new_nodes.append(rs)
            out = rs.outputs[0]
            if transpose is not None:
                tr = ir.Node("", "Transpose", [out], attributes=list(transpose.attributes.values()),
                             name=f"{base}.transpose")
                tr.outputs[0].name = f"{packed.name}.{role}.transposed"
                _shapes.copy_dtype(tr.outputs[0], packed)
                new_nodes.append(tr)
                out = tr.outputs[0]
        out.shape = old.shape
        graph.insert_before(anchor, new_nodes)
        if rs is not None:
            _retarget(graph, rs, e - s, f"{base}.shape")
        old.replace_all_uses_with(out)
    chain = (*proj_nodes, *(nd for nd in (reshape, transpose) if nd is not None))
    _remove_dead(graph, first, chain)
    for v in (w_value, b_value):
        drop_if_unused(graph, v)
    return first.name or first.op_type


def unpack_packed_columns(graph: ir.Graph) -> list[str]:
    """Split every packed projection whose pieces are column ranges (see above); in place."""
    done = []
    for node in list(graph):
        if node.graph is not graph:
            continue
        name = _unpack_columns(graph, node)
        if name:
            done.append(name)
    return done


def _reads_own_shape(target: ir.Value, x: ir.Value, depth: int = 0) -> bool:
    node = target.producer()
    if node is None or depth > 12:
        return False
    if node.op_type == "Shape":
        return node.inputs[0] is x
    return any(i is not None and _reads_own_shape(i, x, depth + 1) for i in node.inputs)


def fold_own_dim_targets(graph: ir.Graph) -> list[str]:
    """``Reshape(x, Concat([-1], Shape(x)[-1:]))`` (TorchScript's ``x.view(-1, x.size(-1))``, GPT-2's
    Conv1D) -> ``Reshape(x, [-1, N])`` when ``x``'s last dim is the static ``N`` (exact: the same
    numbers).  The propagation can then rewrite the constant instead of refusing the Shape read."""
    done = []
    for node in list(graph):
        if node.op_type != "Reshape" or not onnx_domain(node) or len(node.inputs) < 2:
            continue
        x, target = node.inputs[0], node.inputs[1]
        if x is None or target is None or is_const(target) or not _reads_own_shape(target, x):
            continue
        try:
            got = _shape_ints(target)
        except Exception:  # noqa: BLE001 - not an expression we can read
            got = None
        if got is None or got[1] or len(got[0]) != 2 or got[0][0] != -1 or got[0][1] is None:
            continue  # only the 2-D flatten [-1, N]: other targets are left to their own rewrites
        dims = _shapes.dims(x)
        if not dims or dims[-1] != got[0][1]:
            continue
        value = new_constant(graph, f"{node.name}.shape", np.array(got[0], dtype=np.int64))
        node.replace_input_with(1, value)
        done.append(node.name or node.op_type)
    if done:
        _remove_dead(graph, None)
    return done
