"""Exact rewrites that put exported attention into the form the dependency graph reads.

Exporters lower attention in ways that hide the head axis from a per-op rule:
dynamo folds the heads into the batch for ``K^T``, Hugging Face packs Q/K/V into
one projection, tf2onnx writes Einsums, TorchScript sizes the heads' merge-back
``Reshape`` with dims read off another tensor.  Each rewrite here replaces such a
pattern with an equivalent graph (same outputs, bit for bit where the ops allow)
whose heads are an axis the rules couple.  They run before the dependency
analysis (``prune`` calls :func:`rewrite_attention`), so heads, KV groups and
channels are all found by the one engine in :mod:`onnxsparse.graph`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

__all__ = ["rewrite_attention", "fold_static_merge_reads", "unfold_batch_folded_matmuls"]

logger = logging.getLogger(__name__)

_VECTOR_OPS = ("Concat", "Unsqueeze", "Squeeze", "Cast", "Identity")


def rewrite_attention(model: ir.Model) -> list[str]:
    """Apply every attention rewrite to every graph of ``model``; the names of the rewritten nodes."""
    from ..transformer.packed_qkv import unpack_packed_qkv
    from ..transformer.sdpa_lowering import unlower_sdpa_transposes
    from ..transformer.tf_einsum import unlower_tf_batch_matmuls

    steps = (
        (unpack_packed_qkv, "split packed Q/K/V (or gate/up) projection(s) into one per piece"),
        (unlower_tf_batch_matmuls, "rewrote tf2onnx batch-flattened MatMul(s) as broadcasting MatMul"),
        (unlower_sdpa_transposes, "rewrote batch-folded K^T as Transpose"),
        (unfold_batch_folded_matmuls, "unfolded heads folded into the batch around 3-D MatMuls"),
        (fold_static_merge_reads, "folded static dims read by heads' merge-back Reshape target(s)"),
    )
    done: list[str] = []
    for graph in model.graphs():
        for step, message in steps:
            rewritten = step(graph)
            if rewritten:
                logger.info("%s: %d", message, len(rewritten))
            done.extend(str(r) for r in rewritten)
    return done


def _std(node: ir.Node | None) -> bool:
    return node is not None and node.domain in ("", "ai.onnx")


def _from_attention(x: ir.Value | None) -> bool:
    """``x`` is ``P @ V`` (a MatMul of two activations), possibly through Transposes."""
    from ..graph._weights import is_weight

    for _ in range(4):
        node = x.producer() if x is not None else None
        if not _std(node):
            return False
        if node.op_type == "MatMul":
            return not is_weight(node.inputs[0]) and not is_weight(node.inputs[1])
        if node.op_type not in ("Transpose", "Identity"):
            return False
        x = node.inputs[0]
    return False


def _initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """A fresh initializer holding ``array`` (a scalar stays a scalar)."""
    name, k = base, 0
    while name in graph.initializers:
        k += 1
        name = f"{base}_{k}"
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def _static_piece(value: ir.Value) -> np.ndarray | None:
    """A 1-D piece of a shape vector whose entries are all constants or static dims read by ``Shape``."""
    from ..graph import _runtime_shape

    entries = _runtime_shape.trace(value)
    if not entries or not any(e.is_dim for e in entries) or _shapes_dims(value) != (len(entries),):
        return None
    values = [_runtime_shape._entry_dim(e) for e in entries]
    if any(not isinstance(v, int) or v < 0 for v in values):
        return None
    return np.array(values, dtype=ir.DataType(value.dtype).numpy() if value.dtype is not None else np.int64)


def _shapes_dims(value: ir.Value):
    from ..graph import _shapes

    return _shapes.dims(value)


def fold_static_merge_reads(graph: ir.Graph) -> list[str]:
    """``Reshape(P @ V [-> Transpose], Concat(.., Unsqueeze(Shape(h)[k]), ..))`` with ``h``'s dim ``k``
    static -> that Concat input a constant (exact: the same number at any batch and sequence).

    TorchScript's ``attn.transpose(1, 2).reshape(B, S, E)`` with ``B, S, E = h.size()`` reads the
    embedding width off the block's input ``h``: read at run time, it ties the heads to ``h``'s
    channels (and to a graph input or a LayerNorm); as a constant it is one the Reshape rule rewrites
    when heads go.  Only merge-back Reshapes of an attention output are touched; run-time dims
    (batch, sequence) stay reads.  Returns the names of the Reshapes changed.
    """
    done: list[str] = []
    for node in list(graph):
        if not _std(node) or node.op_type != "Reshape" or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        if node.inputs[1].const_value is not None or not _from_attention(node.inputs[0]):
            continue
        concat = node.inputs[1].producer()
        while _std(concat) and concat.op_type in ("Cast", "Identity"):
            concat = concat.inputs[0].producer() if concat.inputs[0] is not None else None
        if not _std(concat) or concat.op_type != "Concat":
            continue
        if len(concat.outputs[0].uses()) != 1:
            continue  # shared with another consumer: leave it alone
        changed = False
        for index, piece in enumerate(concat.inputs):
            if piece is None or piece.const_value is not None:
                continue
            array = _static_piece(piece)
            if array is None:
                continue
            concat.replace_input_with(index, _initializer(graph, f"{piece.name}_static", array))
            changed = True
        if changed:
            done.append(node.name or "Reshape")
    return done


# --------------------------------------------------------------------------------------------
# Heads folded into the batch around a 3-D bmm (DeBERTa-v2: ``view(-1, S, D)`` ... ``bmm`` ...
# ``view(-1, H, S, S)``)
# --------------------------------------------------------------------------------------------

_SCALAR_OPS = ("Div", "Mul", "Add", "Sub")


def _sym(value: ir.Value | None) -> tuple | None:
    from ..graph import _shapes

    return _shapes.symbolic_dims(value)


def _same(a, b) -> bool:
    return a is not None and a == b


def _fold(node: ir.Node) -> bool:
    """``Reshape([B, H, a, b] -> [B*H, a, b])``: the heads merged into the batch, the rest kept."""
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = _sym(x), _sym(y)
    return (xs is not None and ys is not None and len(xs) == 4 and len(ys) == 3
            and all(_same(xs[k + 1], ys[k]) for k in (1, 2)))


def _scalar_const(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and value.const_value.size == 1


def _folded_region(out: ir.Value) -> tuple[list[ir.Node], list[ir.Node]] | None:
    """The nodes computing ``out`` (3-D, heads in the batch) from fold Reshapes: (region, folds)."""
    region: list[ir.Node] = []
    folds: list[ir.Node] = []
    stack = [out]
    while stack:
        value = stack.pop()
        node = value.producer()
        if not _std(node) or node in region or node in folds:
            if node is None:
                return None
            continue
        op = node.op_type
        if op == "Reshape" and _fold(node):
            folds.append(node)
            continue
        if op == "Transpose" and tuple(node.attributes.get_ints("perm", ()) or ()) == (0, 2, 1):
            stack.append(node.inputs[0])
        elif op in _SCALAR_OPS and len(node.inputs) == 2 and any(_scalar_const(v) for v in node.inputs):
            stack.extend(v for v in node.inputs if not _scalar_const(v))
        elif op == "MatMul" and all(len(_sym(v) or ()) == 3 for v in node.inputs):
            stack.extend(node.inputs)
        elif op == "Softmax" and (node.attributes.get_int("axis", -1) or 0) in (-1, 2):
            stack.append(node.inputs[0])
        else:
            return None
        region.append(node)
    return region, folds


def unfold_batch_folded_matmuls(graph: ir.Graph) -> list[str]:
    """``Reshape(f(Reshape(X4, [-1, a, b]), ..), [B, H, c, d])`` -> ``f(X4, ..)`` (exact).

    ``f`` is built from 3-D MatMuls, Transposes of the last two axes, scalar Div/Mul/Add/Sub and
    last-axis Softmax, every input a ``[B, H, a, b] -> [B*H, a, b]`` fold; the final Reshape splits
    the batch back into the same ``B, H``.  The same ops on the 4-D tensors compute the same
    numbers (a batched MatMul is one per leading index), and the heads become an axis the MatMul
    rule couples.  Returns the names of the unfolding Reshapes removed.
    """
    done: list[str] = []
    for unfold in list(graph):
        if not _std(unfold) or unfold.op_type != "Reshape" or unfold.graph is not graph:
            continue
        x, y = unfold.inputs[0], unfold.outputs[0]
        xs, ys = _sym(x), _sym(y)
        if xs is None or ys is None or len(xs) != 3 or len(ys) != 4 or y.is_graph_output():
            continue
        if not all(_same(xs[k], ys[k + 1]) for k in (1, 2)):
            continue
        found = _folded_region(x)
        if found is None or not found[1]:
            continue
        region, folds = found
        leads = {tuple(_sym(f.inputs[0])[:2]) for f in folds}
        if len(leads) != 1 or None in next(iter(leads)) or next(iter(leads)) != tuple(ys[:2]):
            continue  # every fold must fold the same (B, H) the unfold restores
        inside = set(region) | {unfold}
        if any(u.node not in inside for n in region for o in n.outputs for u in o.uses()) or \
                any(o.is_graph_output() for n in region for o in n.outputs):
            continue  # an intermediate is read outside the pattern: leave it
        lead = list(y.shape.dims[:2])
        for fold in folds:
            for use in list(fold.outputs[0].uses()):
                if use.node in inside:
                    use.node.replace_input_with(use.idx, fold.inputs[0])
        for node in region:
            if node.op_type == "Transpose":
                node.attributes["perm"] = ir.AttrInt64s("perm", [0, 1, 3, 2])
            elif node.op_type == "Softmax":
                node.attributes["axis"] = ir.AttrInt64("axis", -1)
            for o in node.outputs:
                if o.shape is not None and len(o.shape) == 3:
                    o.shape = ir.Shape([*lead, *list(o.shape.dims)[1:]])
        ir.convenience.replace_all_uses_with(y, x)
        graph.remove(unfold, safe=True)
        for fold in folds:
            if fold.graph is graph and not fold.outputs[0].uses() and not fold.outputs[0].is_graph_output():
                graph.remove(fold, safe=True)
        done.append(unfold.name or "Reshape")
    return done
