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

__all__ = ["rewrite_attention", "fold_static_merge_reads"]

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
