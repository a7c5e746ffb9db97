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
from collections.abc import Callable
from typing import TypeGuard

import numpy as np
import onnx_ir as ir

from ..errors import Decline

__all__ = ["rewrite_attention", "fold_static_merge_reads", "unfold_batch_folded_matmuls"]

logger = logging.getLogger(__name__)

def rewrite_attention(model: ir.Model) -> list[str]:
    """Apply every attention rewrite to every graph of ``model``; the names of the rewritten nodes."""
    from ..transformer.packed_qkv import unpack_packed_qkv
    from ..transformer.sdpa_lowering import unlower_sdpa_transposes
    from ..transformer.tf_einsum import unlower_tf_batch_matmuls

    steps: tuple[tuple[Callable[..., list[str]], str], ...] = (
        (unpack_packed_qkv, "split packed Q/K/V (or gate/up) projection(s) into one per piece"),
        (unlower_tf_batch_matmuls, "rewrote tf2onnx batch-flattened MatMul(s) as broadcasting MatMul"),
        (unlower_sdpa_transposes, "rewrote batch-folded K^T as Transpose"),
        (unfold_batch_folded_matmuls, "unfolded heads folded into the batch around 3-D MatMuls"),
        (fold_static_merge_reads, "folded static dims read by heads' merge-back Reshape target(s)"),
    )
    done: list[str] = []
    for graph in model.graphs():
        for step, message in steps:
            rewritten = step(graph, model) if step is unfold_batch_folded_matmuls else step(graph)
            if rewritten:
                logger.info("%s: %d", message, len(rewritten))
            done.extend(str(r) for r in rewritten)
    return done


def _std(node: ir.Node | None) -> TypeGuard[ir.Node]:
    return node is not None and node.domain in ("", "ai.onnx")


def _from_attention(x: ir.Value | None) -> bool:
    """``x`` is ``P @ V`` (a MatMul of two activations), possibly through Transposes."""
    from ..graph.weights import is_weight

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
    from ..graph import runtime_shape as _runtime_shape, value_facts as _shapes

    entries = _runtime_shape.trace(value)
    if not entries or not any(e.is_dim for e in entries) or _shapes.dims(value) != (len(entries),):
        return None
    values = [_runtime_shape._entry_dim(e) for e in entries]
    if any(not isinstance(v, int) or v < 0 for v in values):
        return None
    return np.array(values, dtype=ir.DataType(value.dtype).numpy() if value.dtype is not None else np.int64)


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
            _remove_unused(graph, [p] if (p := piece.producer()) is not None else [])
            changed = True
        if changed:
            done.append(node.name or "Reshape")
    return done


# --------------------------------------------------------------------------------------------
# Heads folded into the batch around a 3-D bmm (DeBERTa-v2: ``view(-1, S, D)`` ... ``bmm`` ...
# ``view(-1, H, S, S)``)
# --------------------------------------------------------------------------------------------

_SCALAR_OPS = ("Div", "Mul", "Add", "Sub")


def _sym(value: ir.Value | None) -> tuple[int | str | None, ...] | None:
    """Dims: ints, symbol names, ``None`` for unknown (onnx's made-up ``unk__N`` names none)."""
    from ..graph import value_facts as _shapes

    dims = _shapes.symbolic_dims(value)
    if dims is None:
        return None
    return tuple(None if isinstance(d, str) and d.startswith("unk__") else d for d in dims)


def _same(a, b) -> bool:
    return a is not None and a == b


def _fold(node: ir.Node) -> bool:
    """``Reshape([B, H, a, b] -> [B*H, a, b])``: the heads merged into the batch, the rest kept."""
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = _sym(x), _sym(y)
    return (xs is not None and ys is not None and len(xs) == 4 and len(ys) == 3
            and all(_same(xs[k + 1], ys[k]) for k in (1, 2)))


def _scalar(value: ir.Value | None) -> bool:
    """A constant with one element, or a run-time scalar (rank 0): broadcasts alike against 3-D and 4-D."""
    from ..graph import value_facts as _shapes

    if value is None:
        return False
    if value.const_value is not None:
        return value.const_value.size == 1
    return _shapes.dims(value) == ()


def _trailing_read(node: ir.Node) -> bool:
    """``Shape(v)`` whose every reader takes only the last two entries, counted from the end (``[-2:-1]``,
    ``[-1:]``, ``Gather(-1)``): the same numbers for ``v`` 3-D ``[B*H, a, b]`` or 4-D ``[B, H, a, b]``."""
    from ..graph import value_facts as _shapes

    if node.op_type != "Shape" or node.attributes.get("start") is not None or node.attributes.get("end") is not None:
        return False
    uses = node.outputs[0].uses()
    if not uses:
        return False
    for use in uses:
        reader, ins = use.node, use.node.inputs
        if not _std(reader) or use.idx != 0:
            return False
        if reader.op_type == "Gather":
            idx = _shapes.constant_ints(ins[1]) if len(ins) > 1 else None
            if (reader.attributes.get_int("axis", 0) or 0) != 0 or not idx or any(i not in (-1, -2) for i in idx):
                return False
        elif reader.op_type == "Slice":
            starts = _shapes.constant_ints(ins[1]) if len(ins) > 1 else None
            ends = _shapes.constant_ints(ins[2]) if len(ins) > 2 else None
            axes = _shapes.constant_ints(ins[3]) if len(ins) > 3 and ins[3] is not None else (0,)
            steps = _shapes.constant_ints(ins[4]) if len(ins) > 4 and ins[4] is not None else (1,)
            if starts is None or ends is None or len(starts) != 1 or axes not in ((0,), (-1,)) or steps != (1,):
                return False
            if not -2 <= starts[0] < 0 or not (ends[0] >= 2**31 or starts[0] < ends[0] <= 0):
                return False
        else:
            return False
    return True


class _UnknownDims(Decline):
    """A Reshape on the way may be a fold but its dims are unknown (the caller may name them and retry)."""


def _folded_region(out: ir.Value) -> tuple[list[ir.Node], list[ir.Node]]:
    """The nodes computing ``out`` (3-D, heads in the batch) from fold Reshapes: (region, folds).

    Declines when another op is on the way; :class:`_UnknownDims` when only unknown dims stand in the way.
    """
    region: list[ir.Node] = []
    folds: list[ir.Node] = []
    stack: list[ir.Value | None] = [out]
    while stack:
        value = stack.pop()
        node = value.producer() if value is not None else None
        if not _std(node):
            raise Decline(f"{value.name if value is not None else 'an input'} is not computed by a standard op")
        if node in region or node in folds:
            continue
        op = node.op_type
        if op == "Reshape":
            if not _fold(node):
                xs, ys = _sym(node.inputs[0]), _sym(node.outputs[0])
                if xs is not None and ys is not None and len(xs) == 4 and len(ys) == 3 and None in (*xs, *ys):
                    raise _UnknownDims(f"Reshape {node.name!r}: dims unknown")
                raise Decline(f"Reshape {node.name!r} is not a fold of heads into the batch")
            folds.append(node)
            continue
        if op == "Transpose" and tuple(node.attributes.get_ints("perm", ()) or ()) == (0, 2, 1):
            stack.append(node.inputs[0])
        elif op in _SCALAR_OPS and len(node.inputs) == 2 and any(_scalar(v) for v in node.inputs):
            stack.extend(v for v in node.inputs if not _scalar(v))
        elif op == "MatMul" and all(len(_sym(v) or ()) == 3 for v in node.inputs):
            stack.extend(node.inputs)
        elif op == "Softmax" and (node.attributes.get_int("axis", -1) or 0) in (-1, 2):
            stack.append(node.inputs[0])
        else:
            raise Decline(f"{op} {node.name!r} is not a MatMul, Softmax, Transpose or scalar op")
        region.append(node)
    return region, folds


def _candidates(graph: ir.Graph):
    for unfold in list(graph):
        if not _std(unfold) or unfold.op_type != "Reshape" or unfold.graph is not graph:
            continue
        x, y = unfold.inputs[0], unfold.outputs[0]
        xs, ys = _sym(x), _sym(y)
        if x is None or xs is None or ys is None or len(xs) != 3 or len(ys) != 4 or y.is_graph_output():
            continue
        producer = x.producer()
        if not _std(producer) or producer.op_type != "MatMul" or any(
                v is None or v.const_value is not None for v in producer.inputs):
            continue  # the region ends in a MatMul of two activations (a bmm)
        yield unfold


def _unfold_one(graph: ir.Graph, unfold: ir.Node) -> bool | None:
    """Rewrite one unfold Reshape; ``None`` when only unknown dims stand in the way."""
    x, y = unfold.inputs[0], unfold.outputs[0]
    xs, ys = _sym(x), _sym(y)
    if x is None or xs is None or ys is None or y.shape is None:
        return False  # not a candidate (``_candidates`` yields none of these)
    if not all(_same(xs[k], ys[k + 1]) for k in (1, 2)):
        return None if None in (*xs, *ys) else False
    try:
        region, folds = _folded_region(x)
    except _UnknownDims:
        return None
    except Decline:
        return False
    if not folds:
        return False
    leads = {tuple((_sym(f.inputs[0]) or ())[:2]) for f in folds}  # 4-D: _fold checked
    if None in ys[:2] or any(None in lead for lead in leads):
        return None
    if len(leads) != 1 or next(iter(leads)) != tuple(ys[:2]):
        return False  # every fold must fold the same (B, H) the unfold restores
    inside = set(region) | {unfold}

    def ok_use(use) -> bool:
        return use.node in inside or _trailing_read(use.node)

    if any(not ok_use(u) for n in region for o in n.outputs for u in o.uses()) or \
            any(o.is_graph_output() for n in region for o in n.outputs):
        return False  # an intermediate is read outside the pattern: leave it
    if any(not ok_use(u) for f in folds for u in f.outputs[0].uses()) or \
            any(f.outputs[0].is_graph_output() for f in folds):
        return False
    lead = list(y.shape.dims[:2])
    for fold in folds:
        for use in list(fold.outputs[0].uses()):
            use.node.replace_input_with(use.idx, fold.inputs[0])
    for node in region:
        if node.op_type == "Transpose":
            node.attributes["perm"] = ir.AttrInt64s("perm", [0, 1, 3, 2])
        elif node.op_type == "Softmax":
            node.attributes["axis"] = ir.AttrInt64("axis", -1)
        for o in node.outputs:
            if o.shape is not None and len(o.shape) == 3:
                o.shape = ir.Shape([*lead, *list(o.shape.dims)[1:]])
    for node in [*region, *folds]:  # Shape reads of the 4-D tensors now give 4 entries
        four_d = node.outputs if node in region else [v for v in node.inputs[:1] if v is not None]
        for v in four_d:
            for use in v.uses():
                if use.node.op_type == "Shape" and use.node not in inside:
                    use.node.outputs[0].shape = ir.Shape([4])
    target = unfold.inputs[1]
    ir.convenience.replace_all_uses_with(y, x)
    graph.remove(unfold, safe=True)
    _remove_unused(graph, [*folds, *([p] if target is not None and (p := target.producer()) else [])])
    return True


def _remove_unused(graph: ir.Graph, start: list[ir.Node]) -> None:
    """Remove ``start`` and the shape computations feeding them once nothing reads them."""
    todo = list(start)
    while todo:
        node = todo.pop()
        if node.graph is not graph or any(o.uses() or o.is_graph_output() for o in node.outputs):
            continue
        feeding = [p for v in node.inputs if v is not None and (p := v.producer()) is not None]
        graph.remove(node, safe=True)
        todo.extend(p for p in feeding
                    if p.op_type in ("Shape", "Gather", "Slice", "Squeeze", "Unsqueeze", "Concat", "Cast"))


def unfold_batch_folded_matmuls(graph: ir.Graph, model: ir.Model | None = None) -> list[str]:
    """``Reshape(f(Reshape(X4, [-1, a, b]), ..), [B, H, c, d])`` -> ``f(X4, ..)`` (exact).

    ``f`` is built from 3-D MatMuls, Transposes of the last two axes, Div/Mul/Add/Sub by a scalar and
    last-axis Softmax, every input a ``[B, H, a, b] -> [B*H, a, b]`` fold; the final Reshape splits
    the batch back into the same ``B, H``.  The same ops on the 4-D tensors compute the same
    numbers (a batched MatMul is one per leading index), and the heads become an axis the MatMul
    rule couples.  Shape reads of the folded tensors that take only their last two dims, counted
    from the end (TorchScript's scale ``sqrt(q.size(-1))`` and its targets), read the 4-D tensors.
    When only unknown dims stand in the way and ``model`` is given, the dims are named by shape
    inference (``_shapes.infer_missing``) and the rewrite retried.  Returns the unfold Reshapes removed.
    """
    done: list[str] = []
    unknown = False
    for unfold in _candidates(graph):
        result = _unfold_one(graph, unfold)
        if result:
            done.append(unfold.name or "Reshape")
        unknown |= result is None
    if unknown and model is not None and any(_candidates(graph)):
        from ..graph import value_facts as _shapes

        try:
            _shapes.infer_missing(model)
        except Exception:  # noqa: BLE001 - best effort: the pattern stays as exported
            logger.debug("shape inference for the batch-folded heads failed", exc_info=True)
            return done
        for unfold in _candidates(graph):
            if _unfold_one(graph, unfold):
                done.append(unfold.name or "Reshape")
    return done
