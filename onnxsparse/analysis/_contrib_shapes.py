"""Output shapes of ops onnx shape inference does not know (onnxruntime contrib ops).

onnx leaves the outputs of ``com.microsoft`` ops untyped, and everything
downstream with them.  These rules give the main outputs' shapes from the
input shapes so inference can continue past fused attention, SkipLayerNorm,
Gelu, MatMulNBits, ...  A rule returns ``None`` when it cannot tell.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx

__all__ = ["register_shape_rule", "contrib_value_info"]

Dims = tuple[int, ...]
ShapeRule = Callable[[onnx.NodeProto, list["Dims | None"]], "list[Dims | None] | None"]

_RULES: dict[tuple[str, str], ShapeRule] = {}


def register_shape_rule(op_type: str, domain: str = "com.microsoft") -> Callable[[ShapeRule], ShapeRule]:
    def decorate(fn: ShapeRule) -> ShapeRule:
        _RULES[("" if domain == "ai.onnx" else domain, op_type)] = fn
        return fn

    return decorate


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _same_as_first(node: onnx.NodeProto, shapes: list[Dims | None]) -> list[Dims | None] | None:
    if not shapes or shapes[0] is None:
        return None
    return [shapes[0]] * len(node.output)


for _op, _domain in (
    ("Gelu", "com.microsoft"), ("FastGelu", "com.microsoft"), ("BiasGelu", "com.microsoft"),
    ("QuickGelu", "com.microsoft"), ("BiasAdd", "com.microsoft"), ("RotaryEmbedding", "com.microsoft"),
    ("SimplifiedLayerNormalization", ""), ("SimplifiedLayerNormalization", "com.microsoft"),
    ("LayerNormalization", "com.microsoft"), ("BiasDropout", "com.microsoft"),
    # scikit-learn preprocessing exported by skl2onnx (elementwise, shape-preserving)
    ("Scaler", "ai.onnx.ml"), ("Normalizer", "ai.onnx.ml"), ("Binarizer", "ai.onnx.ml"), ("Imputer", "ai.onnx.ml"),
):
    register_shape_rule(_op, _domain)(_same_as_first)


@register_shape_rule("SkipLayerNormalization")
def _skip_layer_norm(node, shapes):
    # outputs: output, mean, inv_std_var, input_skip_bias_sum; mean/inv_std are not needed
    if shapes[0] is None:
        return None
    return [shapes[0], None, None, shapes[0]][: len(node.output)]


register_shape_rule("SkipSimplifiedLayerNormalization")(_skip_layer_norm)


@register_shape_rule("Attention")
def _attention(node, shapes):
    x, w = shapes[0], shapes[1] if len(shapes) > 1 else None
    if x is None or w is None or len(x) != 3:
        return None
    sizes = _attr(node, "qkv_hidden_sizes")
    v_hidden = sizes[2] if sizes else w[1] // 3
    return [(x[0], x[1], v_hidden)] + [None] * (len(node.output) - 1)


@register_shape_rule("MultiHeadAttention")
def _mha(node, shapes):
    q = shapes[0]
    k = shapes[1] if len(shapes) > 1 else None
    v = shapes[2] if len(shapes) > 2 else None
    if q is None:
        return None
    if len(q) == 5:  # packed QKV [B, S, NH, 3, H]
        out = (q[0], q[1], q[2] * q[4])
    elif len(q) == 3 and v is not None and len(v) == 3:
        out = (q[0], q[1], v[2])
    elif len(q) == 3 and v is not None and len(v) == 4:
        out = (q[0], q[1], v[1] * v[3])
    elif len(q) == 3 and k is not None and len(k) == 5:  # packed KV [B, L, NH, 2, H]
        out = (q[0], q[1], k[2] * k[4])
    elif len(q) == 3:
        out = q
    else:
        return None
    return [out] + [None] * (len(node.output) - 1)


@register_shape_rule("GroupQueryAttention")
def _gqa(node, shapes):
    q = shapes[0]
    heads = _attr(node, "num_heads", 0)
    kv_heads = _attr(node, "kv_num_heads", 0) or heads
    if q is None or len(q) != 3 or not heads:
        return None
    width = q[2]
    packed = len(node.input) < 2 or not node.input[1]
    if packed:
        width = width // (heads + 2 * kv_heads) * heads
    return [(q[0], q[1], width)] + [None] * (len(node.output) - 1)


@register_shape_rule("MatMulNBits")
def _matmul_nbits(node, shapes):
    a = shapes[0]
    n = _attr(node, "N", 0)
    if a is None or not n:
        return None
    return [a[:-1] + (n,)]


@register_shape_rule("FusedMatMul")
def _fused_matmul(node, shapes):
    a, b = shapes[0], shapes[1] if len(shapes) > 1 else None
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    if _attr(node, "transA", 0):
        a = a[:-2] + (a[-1], a[-2])
    if _attr(node, "transB", 0):
        b = b[:-2] + (b[-1], b[-2])
    batch_a, batch_b = a[:-2], b[:-2]
    rank = max(len(batch_a), len(batch_b))
    batch_a = (1,) * (rank - len(batch_a)) + batch_a
    batch_b = (1,) * (rank - len(batch_b)) + batch_b
    batch = tuple(max(x, y) for x, y in zip(batch_a, batch_b))
    return [batch + (a[-2], b[-1])]


def contrib_value_info(
    graph: onnx.GraphProto,
    shapes: Mapping[str, tuple[int | None, ...]],
    elem_types: Mapping[str, int],
) -> list[onnx.ValueInfoProto]:
    """Value infos for contrib-op outputs whose shapes the rules can now tell.

    Walks the graph in order so chains of contrib ops resolve in one call.
    """
    known: dict[str, Dims] = {k: v for k, v in shapes.items() if v is not None and None not in v}  # type: ignore[misc]
    added: list[onnx.ValueInfoProto] = []
    for node in graph.node:
        rule = _RULES.get(("" if node.domain == "ai.onnx" else node.domain, node.op_type))
        if rule is None or all(name in known for name in node.output if name):
            continue
        ins = [known.get(name) if name else None for name in node.input]
        try:
            outs = rule(node, ins)
        except Exception:  # noqa: BLE001 - a rule that cannot tell says nothing
            outs = None
        if not outs:
            continue
        elem = elem_types.get(node.input[0], onnx.TensorProto.FLOAT) if node.input else onnx.TensorProto.FLOAT
        for name, dims in zip(node.output, outs):
            if not name or dims is None or name in known:
                continue
            known[name] = tuple(int(d) for d in dims)
            added.append(onnx.helper.make_tensor_value_info(name, elem, list(known[name])))
    return added
