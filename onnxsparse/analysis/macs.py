"""Multiply-accumulate counts per node, from a registry of counters keyed by op type.

Only multiply-accumulates of the linear-algebra ops are counted (the usual
convention of fvcore/thop/ptflops): element-wise ops, normalisations, pooling
and activations contribute 0 and are listed as "not counted".  Bias additions
are not counted.

* Conv: ``N * Cout * prod(out spatial) * (Cin/group) * prod(kernel)``
* ConvTranspose: ``N * Cin * prod(in spatial) * (Cout/group) * prod(kernel)``
* Gemm: ``M * N * K``; MatMul: ``prod(broadcast batch dims) * M * N * K`` —
  including MatMuls between two activations (attention ``Q K^T`` and ``P V``)
* LSTM / GRU / RNN: ``seq * batch * (numel(W) + numel(R))``
* Einsum: ``prod(output) * prod(contracted dims) * (operands - 1)``
* fused attention (``com.microsoft`` Attention / MultiHeadAttention /
  GroupQueryAttention, ONNX Attention): input projections where the op holds
  them, plus ``Q K^T`` and ``P V``
* quantized forms (QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger,
  MatMulNBits, FusedMatMul) like their float ops.

A node whose dims are not all known (a dynamic dim not fixed by ``--shape``)
has ``macs=None`` and makes the model total ``None``: no partial totals.

Control flow: an ``If`` costs its more expensive branch; ``Loop``/``Scan``
bodies are counted once (the trip count is a run-time value).

Add a counter with::

    @register_macs("MyOp", domain="my.domain")
    def _my_op(node: ir.Node, ctx: MacContext) -> int | None: ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import onnx_ir as ir

from .shapes import Shape, infer_shapes

__all__ = [
    "MacContext",
    "MacCounter",
    "Macs",
    "NodeMacs",
    "register_macs",
    "mac_counters",
    "node_macs",
    "count_macs",
    "macs_table",
]

class Macs(NamedTuple):
    """A counter's answer when part of the work multiplies two activations (attention core)."""

    total: int
    attention: int


MacCounter = Callable[[ir.Node, "MacContext"], "int | Macs | None"]

_REGISTRY: dict[tuple[str, str], MacCounter] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register_macs(op_type: str, domain: str = "") -> Callable[[MacCounter], MacCounter]:
    """Register ``fn(node, ctx) -> int | None`` as the MAC counter of ``(domain, op_type)``."""

    def decorate(fn: MacCounter) -> MacCounter:
        _REGISTRY[(_norm_domain(domain), op_type)] = fn
        return fn

    return decorate


def mac_counters() -> dict[tuple[str, str], MacCounter]:
    """A copy of the registry: ``(domain, op_type) -> counter``."""
    return dict(_REGISTRY)


class MacContext:
    """What a counter may ask about a node's values: shapes and constant values."""

    def __init__(self, shapes: Mapping[str, Shape]) -> None:
        self.shapes = shapes

    def shape(self, value: ir.Value | None) -> Shape | None:
        """Shape of ``value`` (dims may be ``None``), or ``None`` if the rank is unknown."""
        if value is None:
            return None
        if value.name and value.name in self.shapes:
            return self.shapes[value.name]
        tensor = value.const_value
        if tensor is not None:
            return tuple(int(d) for d in tensor.shape.numpy())
        return None

    def known(self, value: ir.Value | None) -> tuple[int, ...] | None:
        """Shape of ``value`` if every dim is known, else ``None``."""
        shape = self.shape(value)
        if shape is None or any(d is None for d in shape):
            return None
        return tuple(int(d) for d in shape)  # type: ignore[arg-type]

    @staticmethod
    def input(node: ir.Node, index: int) -> ir.Value | None:
        return node.inputs[index] if index < len(node.inputs) else None

    @staticmethod
    def output(node: ir.Node, index: int) -> ir.Value | None:
        return node.outputs[index] if index < len(node.outputs) else None


def _prod(dims) -> int:
    return int(math.prod(int(d) for d in dims))


# --------------------------------------------------------------------------- counters


def _conv_like(x_index: int, w_index: int) -> MacCounter:
    def count(node: ir.Node, ctx: MacContext) -> int | None:
        w = ctx.known(ctx.input(node, w_index))
        y = ctx.known(ctx.output(node, 0))
        if w is None or y is None:
            return None
        # Y: [N, Cout, *out]; W: [Cout, Cin/group, *kernel]
        return _prod(y) * _prod(w[1:])

    return count


register_macs("Conv")(_conv_like(0, 1))
register_macs("ConvInteger")(_conv_like(0, 1))
register_macs("QLinearConv")(_conv_like(0, 3))
register_macs("FusedConv", domain="com.microsoft")(_conv_like(0, 1))
register_macs("NhwcConv", domain="com.microsoft")(_conv_like(0, 1))


@register_macs("ConvTranspose")
def _conv_transpose(node: ir.Node, ctx: MacContext) -> int | None:
    x = ctx.known(ctx.input(node, 0))
    w = ctx.known(ctx.input(node, 1))
    if x is None or w is None:
        return None
    # X: [N, Cin, *in]; W: [Cin, Cout/group, *kernel]
    return _prod(x) * _prod(w[1:])


@register_macs("Gemm")
def _gemm(node: ir.Node, ctx: MacContext) -> int | None:
    a = ctx.known(ctx.input(node, 0))
    y = ctx.known(ctx.output(node, 0))
    if a is None or y is None or len(a) != 2:
        return None
    k = a[0] if node.attributes.get_int("transA", 0) else a[1]
    return _prod(y) * k


def _matmul_like(a_index: int, trans_attr: str | None = None) -> MacCounter:
    def count(node: ir.Node, ctx: MacContext) -> int | None:
        a = ctx.known(ctx.input(node, a_index))
        y = ctx.known(ctx.output(node, 0))
        if a is None or y is None or not a:
            return None
        transposed = bool(trans_attr) and bool(node.attributes.get_int(trans_attr or "", 0)) and len(a) >= 2
        k = a[-2] if transposed else a[-1]
        # Y holds the broadcast batch dims and M x N; every element is a K-long dot product.
        return _prod(y) * k

    return count


register_macs("MatMul")(_matmul_like(0))
register_macs("MatMulInteger")(_matmul_like(0))
register_macs("QLinearMatMul")(_matmul_like(0))
register_macs("FusedMatMul", domain="com.microsoft")(_matmul_like(0, "transA"))
register_macs("DynamicQuantizeMatMul", domain="com.microsoft")(_matmul_like(0))
register_macs("MatMulIntegerToFloat", domain="com.microsoft")(_matmul_like(0))


@register_macs("MatMulNBits", domain="com.microsoft")
def _matmul_nbits(node: ir.Node, ctx: MacContext) -> int | None:
    y = ctx.known(ctx.output(node, 0))
    k = node.attributes.get_int("K", 0)
    if y is None or not k:
        return None
    return _prod(y) * k


@register_macs("Einsum")
def _einsum(node: ir.Node, ctx: MacContext) -> int | None:
    equation = node.attributes.get_string("equation", "").replace(" ", "")
    known = [ctx.known(v) for v in node.inputs]
    operands = [o for o in known if o is not None]
    y = ctx.known(ctx.output(node, 0))
    if y is None or len(operands) != len(known):
        return None
    if len(operands) < 2:
        return 0
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    if not rhs and "->" not in equation:
        letters = [c for c in lhs if c.isalpha()]
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, operands):
        labels = term.replace("...", "")
        if "..." in term:
            head, _, tail = term.partition("...")
            dims = list(shape[: len(head)]) + list(shape[len(shape) - len(tail):]) if tail else list(shape[: len(head)])
        else:
            dims = list(shape)
        for label, dim in zip(labels, dims):
            sizes[label] = max(sizes.get(label, 1), int(dim))
    contracted = _prod(sizes[c] for c in sizes if c not in rhs)
    return _prod(y) * contracted * (len(operands) - 1)


def _recurrent(node: ir.Node, ctx: MacContext) -> int | None:
    x = ctx.known(ctx.input(node, 0))
    w = ctx.known(ctx.input(node, 1))
    r = ctx.known(ctx.input(node, 2))
    if x is None or w is None or r is None or len(x) != 3:
        return None
    seq, batch = (x[1], x[0]) if node.attributes.get_int("layout", 0) else (x[0], x[1])
    # W: [dirs, gates*H, I], R: [dirs, gates*H, H]: every step does both products.
    return seq * batch * (_prod(w) + _prod(r))


for _op in ("LSTM", "GRU", "RNN"):
    register_macs(_op)(_recurrent)


def _attention_core(batch: int, q_len: int, kv_len: int, qk_width: int, v_width: int, projection: int = 0) -> Macs:
    """``Q K^T`` plus ``P V``: ``B*S*L*(heads*dk) + B*S*L*(heads*dv)`` (+ fused projections)."""
    core = batch * q_len * kv_len * (qk_width + v_width)
    return Macs(projection + core, core)


@register_macs("Attention", domain="com.microsoft")
def _ms_attention(node: ir.Node, ctx: MacContext) -> int | Macs | None:
    x = ctx.known(ctx.input(node, 0))
    w = ctx.known(ctx.input(node, 1))
    if x is None or w is None or len(x) != 3:
        return None
    batch, seq, _ = x
    sizes = node.attributes.get_ints("qkv_hidden_sizes", None)
    q_h, _, v_h = sizes if sizes else [w[1] // 3] * 3
    past = ctx.input(node, 4)
    past_len = 0
    if past is not None:
        past_shape = ctx.known(past)
        if past_shape is None:
            return None
        past_len = past_shape[3]
    projection = batch * seq * _prod(w)
    return _attention_core(batch, seq, seq + past_len, q_h, v_h, projection)


@register_macs("MultiHeadAttention", domain="com.microsoft")
def _ms_mha(node: ir.Node, ctx: MacContext) -> int | Macs | None:
    q = ctx.known(ctx.input(node, 0))
    if q is None:
        return None
    key, value = ctx.input(node, 1), ctx.input(node, 2)
    if len(q) == 5:  # packed QKV: [B, S, NH, 3, head]
        batch, seq, nh, _, head = q
        width = nh * head
        return _attention_core(batch, seq, seq, width, width)
    if len(q) != 3:
        return None
    batch, seq, q_width = q
    present = ctx.known(ctx.output(node, 1))
    k = ctx.known(key)
    v = ctx.known(value)
    if k is not None and len(k) == 5:  # packed KV: [B, L, NH, 2, head]
        kv_len, v_width = k[1], k[2] * k[4]
    elif k is not None and v is not None:
        if len(k) == 4:  # [B, NH, L, head]
            kv_len, v_width = k[2], v[1] * v[3]
        else:
            kv_len, v_width = k[1], v[2]
    else:
        return None
    if present is not None and len(present) == 4:
        kv_len = present[2]
    return _attention_core(batch, seq, kv_len, q_width, v_width)


@register_macs("GroupQueryAttention", domain="com.microsoft")
def _ms_gqa(node: ir.Node, ctx: MacContext) -> int | Macs | None:
    q = ctx.known(ctx.input(node, 0))
    heads = node.attributes.get_int("num_heads", 0)
    kv_heads = node.attributes.get_int("kv_num_heads", 0) or heads
    if q is None or len(q) != 3 or not heads:
        return None
    batch, seq, width = q
    if ctx.input(node, 1) is None:  # packed QKV: width = (NH + 2 * kvNH) * head
        width = width // (heads + 2 * kv_heads) * heads
    head = width // heads
    present = ctx.known(ctx.output(node, 1))
    if present is not None and len(present) == 4:
        total = present[2]
    else:  # present = past (B, kvNH, P, H) + the new tokens
        past = ctx.input(node, 3)
        past_shape = ctx.known(past) if past is not None else (0, 0, 0, 0)
        if past_shape is None or len(past_shape) != 4:
            return None
        total = past_shape[2] + seq
    return _attention_core(batch, seq, total, heads * head, heads * head)


@register_macs("Attention")
def _onnx_attention(node: ir.Node, ctx: MacContext) -> int | Macs | None:
    q = ctx.known(ctx.input(node, 0))
    k = ctx.known(ctx.input(node, 1))
    v = ctx.known(ctx.input(node, 2))
    present = ctx.known(ctx.output(node, 1))
    if q is None or k is None or v is None:
        return None
    if len(q) == 4:  # [B, NH, S, H]
        batch, q_heads, seq, head = q
    else:  # [B, S, NH*H]
        q_heads = node.attributes.get_int("q_num_heads", 0)
        if not q_heads:
            return None
        batch, seq, width = q
        head = width // q_heads
    if len(v) == 4:
        v_head = v[3]
    else:
        kv_heads = node.attributes.get_int("kv_num_heads", 0)
        if not kv_heads:
            return None
        v_head = v[2] // kv_heads
    kv_len = k[2] if len(k) == 4 else k[1]
    if present is not None and len(present) == 4:
        kv_len = present[2]
    return _attention_core(batch, seq, kv_len, q_heads * head, q_heads * v_head)


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True)
class NodeMacs:
    """MACs of one node.  ``macs`` is ``None`` when dims are unknown (``reason`` says which)."""

    name: str
    op_type: str
    domain: str
    graph: str
    macs: int | None
    counted: bool
    activations_only: bool  # both operands computed at run time (e.g. attention Q K^T)
    reason: str | None = None
    attention_macs: int | None = 0  # part of ``macs`` multiplying two activations


def _is_weight(value: ir.Value | None) -> bool:
    if value is None:
        return True
    if value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type in ("Constant", "ConstantOfShape", "DequantizeLinear") and all(
        _is_weight(v) for v in producer.inputs
    )


def _unknown_reason(node: ir.Node, ctx: MacContext) -> str:
    for value in (*node.inputs, *node.outputs):
        if value is None:
            continue
        shape = ctx.shape(value)
        if shape is None:
            return f"rank of {value.name!r} unknown"
        if None in shape:
            return f"dynamic dim in {value.name!r} {list(shape)} (fix it with --shape)"
    return "shape not supported by the counter"


def _graph_rows(graph: ir.Graph, ctx: MacContext, label: str, rows: list[NodeMacs]) -> int | None:
    """Append rows for ``graph`` (recursively) and return its total (``None``: unknown)."""
    total: int | None = 0
    for node in graph:
        counter = _REGISTRY.get((_norm_domain(node.domain), node.op_type))
        if counter is None:
            macs: int | None = 0
            rows.append(NodeMacs(node.name or "", node.op_type, node.domain, label, 0, False, False))
        else:
            answer = counter(node, ctx)
            dynamic = node.op_type in _DYNAMIC_CANDIDATES and not any(_is_weight(v) for v in node.inputs[:2])
            reason = None if answer is not None else _unknown_reason(node, ctx)
            if answer is None:
                macs, attention = None, None
            elif isinstance(answer, Macs):
                macs, attention = int(answer.total), int(answer.attention)
            else:
                macs = int(answer)
                attention = macs if dynamic else 0
            rows.append(
                NodeMacs(node.name or "", node.op_type, node.domain, label, macs, True,
                         dynamic or bool(attention), reason, attention)
            )
        sub_totals: list[int | None] = []
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                sub_totals.append(_graph_rows(attr.as_graph(), ctx, f"{label}/{node.name}.{attr.name}", rows))
            elif attr.type == ir.AttributeType.GRAPHS:
                for i, sub in enumerate(attr.as_graphs()):
                    sub_totals.append(_graph_rows(sub, ctx, f"{label}/{node.name}.{attr.name}[{i}]", rows))
        known = [t for t in sub_totals if t is not None]
        if total is None or macs is None or len(known) != len(sub_totals):
            total = None
            continue
        total += macs
        if known:
            # An If runs one branch: charge the costlier.  Loop/Scan bodies: once.
            total += max(known) if node.op_type == "If" else sum(known)
    return total


_DYNAMIC_CANDIDATES = frozenset({"MatMul", "Einsum", "FusedMatMul", "MatMulInteger", "QLinearMatMul"})


def macs_table(
    model: ir.Model, value_shapes: Mapping[str, Shape]
) -> tuple[list[NodeMacs], int | None]:
    """Rows for every node (subgraphs included) and the model total, from known shapes."""
    rows: list[NodeMacs] = []
    total = _graph_rows(model.graph, MacContext(value_shapes), "main", rows)
    return rows, total


def node_macs(
    model: ir.Model,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
) -> list[NodeMacs]:
    """One row per node; subgraph nodes included (``graph`` says where they live)."""
    return macs_table(model, infer_shapes(model, shapes, dims=dims))[0]


def count_macs(
    model: ir.Model,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
) -> int | None:
    """Total multiply-accumulates for one run, ``None`` if any counted node has unknown dims."""
    return macs_table(model, infer_shapes(model, shapes, dims=dims))[1]
