"""Packed QKV projections, split into separate Q, K and V projections before matching.

GPT-2 (``c_attn``) and timm's ViT compute Q, K and V with one ``Linear(d, 3d)``:

* **split**: ``MatMul(x, W[E, 3E]) (+ Add(b)) -> Split(last axis, [E, E, E])`` (GPT-2);
* **stacked**: ``MatMul (+ Add) -> Reshape(.., 3, H, D) -> Transpose(2, 0, 3, 1, 4)`` and the three
  pieces taken along axis 0 by ``Split + Squeeze`` (TorchScript ``unbind``), ``Slice + Squeeze``
  (dynamo) or ``Gather(i)`` (``qkv[0]``) (timm).

Both are rewritten into three projections with the column slices of ``W`` and ``b``
(``W[:, i*E:(i+1)*E]``) -- exactly the same products, column for column -- and, for the
stacked form, a ``Reshape(0, 0, H, D) -> Transpose(0, 2, 1, 3)`` per piece, which is what
the piece was.  The decomposed matcher then sees ordinary separate projections.
Anything that does not match completely is left as it is (the matcher reports why).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._graph import const_array, is_const, onnx_domain
from ._targets import ShapeTarget

__all__ = ["unpack_packed_qkv"]


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
        sizes = const_array(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else None
        if sizes is None:
            sizes = split.attributes.get_ints("split", None)
        if sizes is not None and list(np.asarray(sizes).reshape(-1)) != [1, 1, 1]:
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
            starts, ends = const_array(node.inputs[1]), const_array(node.inputs[2])
            axes = const_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.array([0])
            steps = const_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else np.array([1])
            if any(a is None or a.size != 1 for a in (starts, ends, axes, steps)):
                return None
            if int(axes.reshape(-1)[0]) != 0 or int(steps.reshape(-1)[0]) != 1:
                return None
            start = int(starts.reshape(-1)[0]) % 3
            if int(ends.reshape(-1)[0]) not in (start + 1, start + 1 - 3):
                return None
            squeeze = _single_use(node.outputs[0])
            if squeeze is None or squeeze.op_type != "Squeeze" or not _squeezes_axis0(squeeze):
                return None
            found[start] = squeeze.outputs[0]
        else:
            return None
    return [found[i] for i in range(3)] if sorted(found) == [0, 1, 2] else None


def _squeezes_axis0(node: ir.Node) -> bool:
    axes = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if axes is None:
        axes = node.attributes.get_ints("axes", None)
    return axes is not None and list(np.asarray(axes).reshape(-1)) == [0]


def _split_pieces(value: ir.Value, width: int) -> list[ir.Value] | None:
    node = _single_use(value)
    if node is None or node.op_type != "Split" or not onnx_domain(node) or len(node.outputs) != 3:
        return None
    rank = len(value.shape) if value.shape is not None else None
    axis = node.attributes.get_int("axis", 0) or 0
    if rank is None or axis not in (-1, rank - 1):
        return None
    sizes = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if sizes is None:
        sizes = node.attributes.get_ints("split", None)
    if sizes is not None and list(np.asarray(sizes).reshape(-1)) != [width] * 3:
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
    try:
        target = ShapeTarget(reshape, 1)
        three, h, d = target.const(2), target.const(3), target.const(4)
    except Exception:  # noqa: BLE001 - not a target we can read
        three = h = d = None
    dims = list(out_shape)
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


def _const(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    base, k = name, 0
    while name in graph.initializers:
        k += 1
        name = f"{base}.{k}"
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.Tensor(np.ascontiguousarray(array), name=name))
    graph.register_initializer(value)
    return value


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
    if split is None and stacked is None:
        return None
    targets = split if split is not None else stacked[2]
    w_value = matmul.inputs[1]
    b_value = None if add is None else (add.inputs[1] if add.inputs[0] is packed or add.inputs[0] is matmul.outputs[0] else add.inputs[0])
    names = ("q", "k", "v")
    order = {n: k for k, n in enumerate(graph)}
    anchor = min((t.producer() for t in targets), key=order.__getitem__)  # before every reader of a piece
    base_shape = _dims(packed)[:-1]
    for i, (role, old) in enumerate(zip(names, targets)):
        cols = slice(i * width, (i + 1) * width)
        w_i = _const(graph, f"{w_value.name}.{role}", weight[:, cols])
        mm = ir.Node("", "MatMul", [x, w_i], name=f"{matmul.name}.{role}")
        out = mm.outputs[0]
        out.name = f"{packed.name}.{role}"
        out.dtype = packed.dtype
        out.shape = ir.Shape([*base_shape, width]) if base_shape else None
        new_nodes = [mm]
        if bias is not None:
            b_i = _const(graph, f"{b_value.name}.{role}", bias[cols])
            ad = ir.Node("", "Add", [out, b_i], name=f"{add.name}.{role}")
            ad.outputs[0].name = f"{packed.name}.{role}.biased"
            ad.outputs[0].dtype, ad.outputs[0].shape = packed.dtype, out.shape
            out = ad.outputs[0]
            new_nodes.append(ad)
        if stacked is not None:
            h, d = stacked[0], stacked[1]
            target = _const(graph, f"{matmul.name}.{role}.heads_shape", np.array([0, 0, h, d], dtype=np.int64))
            rs = ir.Node("", "Reshape", [out, target], name=f"{matmul.name}.{role}.split_heads")
            rs.outputs[0].name = f"{packed.name}.{role}.heads"
            rs.outputs[0].dtype = packed.dtype
            rs.outputs[0].shape = ir.Shape([*base_shape, h, d]) if len(base_shape) == 2 else None
            tr = ir.Node("", "Transpose", [rs.outputs[0]], attributes=[ir.AttrInt64s("perm", [0, 2, 1, 3])],
                         name=f"{matmul.name}.{role}.transpose")
            tr.outputs[0].name = f"{packed.name}.{role}.bhsd"
            tr.outputs[0].dtype = packed.dtype
            tr.outputs[0].shape = old.shape
            out = tr.outputs[0]
            new_nodes += [rs, tr]
        graph.insert_before(anchor, new_nodes)
        old.replace_all_uses_with(out)
    _remove_dead(graph, matmul)
    for value in (w_value, b_value):
        if value is not None and not value.uses() and not value.is_graph_output() and value.name in graph.initializers:
            graph.initializers.pop(value.name)
    return matmul.name


def _remove_dead(graph: ir.Graph, start: ir.Node) -> None:
    """Remove ``start`` and what it fed that nothing reads any more (consumers first)."""
    pending = [start]
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
            if node.op_type in ("Shape", "Gather", "Unsqueeze", "Concat", "Slice", "Squeeze", "Cast") and all(
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
    return done
