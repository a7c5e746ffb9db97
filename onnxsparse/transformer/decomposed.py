"""Decomposed multi-head attention: MatMul / Reshape / Transpose / Softmax as exporters write it.

Anchored at each ``Softmax``: the scores come from a MatMul of two activations
(``Q K^T``, possibly scaled, masked, soft-capped), the probabilities feed a
second MatMul (``P V``).  Q, K and V are traced back to their constant-weight
projections; the head count and head size come from the Reshape that splits
each projection's columns into ``(heads, head size)``.  The propagation engine
(:mod:`._track`) then proves the rest -- TorchScript's run-time Reshape targets
(``Shape -> Gather -> Unsqueeze -> Concat`` with a constant head count), the
dynamo exporter's constant targets (shared between layers), tf2onnx's
``Mul``-by-scale and 2-D dense layers, KV-cache Concats, grouped-query repeats
(``Unsqueeze -> Tile/Expand -> Reshape``), rotary embeddings -- and finds the
output projection whose rows belong to each head.
"""

from __future__ import annotations

from collections import deque

import onnx_ir as ir

from ._graph import Skip, is_const, onnx_domain, rank_of, static_shape
from ._targets import ShapeTarget
from ._track import BINARY, UNARY, Region, head_units, is_projection
from .blocks import Block, SkippedBlock, block_name
from .packed_qkv import fold_own_dim_targets, unpack_packed_qkv
from .registry import register_matcher
from .sdpa_lowering import simplify_repeat_kv, unlower_sdpa_transposes
from .tf_einsum import unlower_tf_batch_matmuls

__all__ = ["match_decomposed", "find_projections", "split_of"]

#: Ops allowed between ``Q K^T`` and Softmax (scale, mask, soft-cap, dtype casts).
_SCORE_OPS = {"Div", "Mul", "Add", "Sub", "Where", "Cast", "Identity", "Tanh", "Clip", "Dropout", "Max", "Min"}
#: Ops followed backwards from an attention MatMul operand to its projection.
_BACK_OPS = {
    "Transpose", "Reshape", "Mul", "Div", "Add", "Sub", "Concat", "Unsqueeze", "Squeeze", "Tile", "Expand",
    "Slice", "Neg", "Cast", "Identity", "Where", "Split", "LayerNormalization", "SimplifiedLayerNormalization",
    "RMSNormalization", "Pow", "ReduceMean", "Sqrt", "Reciprocal",
}
#: Ops the forward walk from a projection to its head split may cross.
_BIAS_OPS = {"Add", "Sub", "Mul", "Div", "Cast", "Identity"}


class NotAttention(Skip):
    """This Softmax is not the middle of an attention block (e.g. a classifier's output)."""


#: Layout ops some exporters put between ``Q K^T`` and Softmax (tf2onnx's Einsum lowering:
#: ``MatMul -> Reshape -> Squeeze -> Mul -> Softmax``); not followed, but never silently ignored.
_LAYOUT_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Einsum"}


def _find_qk(softmax: ir.Node) -> ir.Node:
    start = softmax.inputs[0]
    queue: deque[tuple[ir.Value, int, ir.Node | None]] = deque([(start, 0, None)]) if start is not None else deque()
    seen: set[ir.Value] = set()
    while queue:
        value, depth, layout = queue.popleft()
        if value in seen or depth > 8:
            continue
        seen.add(value)
        node = value.producer()
        if node is None or not onnx_domain(node):
            continue
        if node.op_type == "Einsum":
            raise Skip(f"the scores come from Einsum {node.name!r} (Einsum attention is not supported)")
        if node.op_type == "MatMul" and not is_const(node.inputs[0]) and not is_const(node.inputs[1]):
            if layout is not None:
                raise Skip(f"the scores MatMul {node.name!r} reaches Softmax through {layout.op_type} "
                           f"{layout.name!r} (e.g. tf2onnx's Einsum lowering); this layout is not supported")
            return node
        if node.op_type in _SCORE_OPS or node.op_type in _LAYOUT_OPS:
            if node.op_type in _LAYOUT_OPS and layout is None:
                layout = node
            for inp in node.inputs[:1] if node.op_type in _LAYOUT_OPS else node.inputs:
                if inp is not None and not is_const(inp):
                    queue.append((inp, depth + 1, layout))
    raise NotAttention("Softmax is not fed by a MatMul of two activations")


#: Element-wise ops the probabilities may cross on their way to ``P V``: dtype casts, dropout,
#: and guards such as PyTorch's SDPA lowering ``Softmax -> IsNaN -> Where(isnan, 0, p) -> MatMul``.
_PROB_OPS = frozenset({*UNARY, *BINARY, "Dropout"}) - {"Shape", "Size"}


def _same_shape(value: ir.Value, ref: ir.Value) -> bool:
    """``value`` has the probabilities' shape as far as it is known (same rank; no static dim differs)."""
    a, b = static_shape(value), static_shape(ref)
    if a is None or b is None:
        return rank_of(value) is None or rank_of(ref) is None or rank_of(value) == rank_of(ref)
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _find_av(softmax: ir.Node) -> ir.Node:
    """The ``P V`` MatMul: the first MatMul that reads the probabilities as its first operand, directly
    or through a chain of element-wise ops that keep the probabilities' shape (found by structure:
    any op in ``_PROB_OPS``, whatever its side inputs; the propagation then proves each of them)."""
    start = softmax.outputs[0]
    queue: deque[tuple[ir.Value, int]] = deque([(start, 0)])
    seen: set[ir.Value] = set()
    while queue:
        value, depth = queue.popleft()
        if value in seen or depth > 8:
            continue
        seen.add(value)
        for use in value.uses():
            node, idx = use.node, use.idx
            if not onnx_domain(node):
                continue
            if node.op_type == "MatMul" and idx == 0:
                return node
            if node.op_type in _PROB_OPS and node.outputs and _same_shape(node.outputs[0], start):
                queue.append((node.outputs[0], depth + 1))
    raise Skip("the attention probabilities do not feed a MatMul with V (directly or through element-wise ops)")


def find_projections(value: ir.Value | None, limit: int = 24) -> set[ir.Node]:
    """Constant-weight MatMul/Gemm nodes ``value`` is computed from, through head-preserving ops."""
    found: set[ir.Node] = set()
    seen: set[ir.Value] = set()
    stack = [(value, 0)] if value is not None else []
    while stack:
        v, depth = stack.pop()
        if v is None or v in seen or depth > limit:
            continue
        seen.add(v)
        node = v.producer()
        if node is None:
            continue
        if is_projection(node):
            found.add(node)
            continue
        if not onnx_domain(node) or node.op_type not in _BACK_OPS:
            continue
        inputs = node.inputs[:1] if node.op_type in ("Reshape", "Expand", "Tile", "Slice", "Unsqueeze", "Squeeze",
                                                     "LayerNormalization", "SimplifiedLayerNormalization",
                                                     "RMSNormalization") else node.inputs
        for inp in inputs:
            if inp is not None and not is_const(inp) and not inp.is_graph_input():
                stack.append((inp, depth + 1))
    return found


def split_of(proj: ir.Node) -> tuple[int, int, ir.Node]:
    """(heads, head size, Reshape) of the Reshape that splits ``proj``'s columns into heads."""
    value = proj.outputs[0]
    for _ in range(6):
        consumers = [u.node for u in value.uses() if u.node.op_type != "Shape"]
        if len(consumers) != 1:
            raise Skip(f"projection {proj.name!r}: its output is used by {len(consumers)} nodes before the head split")
        node = consumers[0]
        if node.op_type == "Reshape":
            target = ShapeTarget(node, 1)
            width = int(proj_width(proj))
            eh, ed = target.const(len(target) - 2), target.const(len(target) - 1)
            if ed == width and len(target) <= 3:
                # [B*S, N] <-> [B, S, N] (GPT-2's Conv1D on a flattened view): the columns stay whole
                # on the last axis; the head split comes after (the propagation proves this Reshape).
                value = node.outputs[0]
                continue
            if eh not in (None, -1, 0) and ed not in (None, -1, 0):
                h, d = eh, ed
            elif eh == -1 and ed not in (None, -1, 0):
                h, d = width // ed, ed
            elif ed == -1 and eh not in (None, -1, 0):
                h, d = eh, width // eh
            else:
                shape = node.outputs[0].shape
                dims = list(shape.dims) if shape is not None else []
                if len(dims) < 2 or not isinstance(dims[-2], int) or not isinstance(dims[-1], int):
                    raise Skip(f"Reshape {node.name!r}: head count and size are not known ({target.describe()})")
                h, d = dims[-2], dims[-1]
            if h * d != width:
                raise Skip(f"Reshape {node.name!r} splits {width} columns into {target.describe()}")
            return int(h), int(d), node
        if node.op_type not in _BIAS_OPS or not onnx_domain(node):
            raise Skip(f"projection {proj.name!r} reaches {node.op_type} {node.name!r} before any head split")
        value = node.outputs[0]
    raise Skip(f"projection {proj.name!r}: no head split found")  # pragma: no cover


def proj_width(proj: ir.Node) -> int:
    from ._track import projection_weight

    weight, axis = projection_weight(proj)
    return int(weight.const_value.shape[axis])  # type: ignore[union-attr]


def _one(found: set[ir.Node], role: str) -> ir.Node:
    if not found:
        raise Skip(f"no constant-weight projection found for {role}")
    if len(found) > 1:
        names = ", ".join(sorted(n.name or n.op_type for n in found))
        raise Skip(f"{role} is computed from several projections ({names})")
    return next(iter(found))


def _match(graph: ir.Graph, softmax: ir.Node) -> Block:
    qk = _find_qk(softmax)
    av = _find_av(softmax)
    q = _one(find_projections(qk.inputs[0]), "Q")
    k = _one(find_projections(qk.inputs[1]), "K")
    v = _one(find_projections(av.inputs[1]), "V")
    if len({q, k, v}) < 3:
        raise Skip("Q, K and V come from one packed projection; split it into separate MatMuls first")
    hq, dq, _ = split_of(q)
    hk, dk, _ = split_of(k)
    hv, dv, _ = split_of(v)
    if dq != dk:
        raise Skip(f"Q head size {dq} differs from K head size {dk}")
    if hk != hv:
        raise Skip(f"K has {hk} heads but V has {hv}")
    if hq % hk:
        raise Skip(f"{hq} query heads are not a multiple of {hk} key/value heads")
    region = Region(graph)
    region.seed_projection(q, "q", head_units(hq, dq))
    region.seed_projection(k, "kv", head_units(hk, dk))
    region.seed_projection(v, "kv", head_units(hv, dv))
    region.propagate()
    if qk not in region.attention_nodes or av not in region.attention_nodes:
        raise Skip("Q, K and V do not meet in the attention MatMuls along their head axes")
    if sorted(region.kv_of_q) != list(range(hq)):
        raise Skip("not every query head is paired with a key/value head")
    name = block_name([q, k, v, *region.sinks], softmax.name or "attention", region)
    return Block(
        name=name, kind="attention", form="decomposed", region=region, anchor=softmax, n_units=hk,
        q_heads=hq, kv_heads=hk, head_size=dq,
        details={"v_head_size": dv, "projections": [q.name, k.name, v.name],
                 "output_projections": [s.name for s in region.sinks]},
    )


@register_matcher("decomposed")
def match_decomposed(graph: ir.Graph) -> list[Block | SkippedBlock]:
    found: list[Block | SkippedBlock] = []
    unpack_packed_qkv(graph)  # GPT-2 / timm packed QKV -> separate projections (exact rewrite)
    unlower_tf_batch_matmuls(graph)  # tf2onnx Einsum lowering (Keras MHA) -> broadcasting MatMul (exact)
    unlower_sdpa_transposes(graph)  # dynamo SDPA's batch-folded K^T -> one Transpose (exact)
    simplify_repeat_kv(graph)  # TorchScript repeat_kv's Shape-read Expand/Reshape targets -> constants / -1
    fold_own_dim_targets(graph)  # TorchScript x.view(-1, x.size(-1)) with a static last dim -> constant target
    for node in list(graph):
        if node.op_type != "Softmax" or not onnx_domain(node):
            continue
        try:
            found.append(_match(graph, node))
        except NotAttention:
            continue
        except Skip as exc:
            found.append(SkippedBlock(node.name or "Softmax", "attention", "decomposed", str(exc)))
    return found
