"""Quantized graphs: QDQ (``QuantizeLinear`` / ``DequantizeLinear``), ``MatMulNBits``, QOperator ops.

**QDQ.** ``DequantizeLinear(x, scale, zero_point)`` and ``QuantizeLinear`` are element-wise
with a parameter vector: every axis of ``x`` couples to the same axis of ``y`` (identity), and
a per-axis scale / zero point (``axis`` attribute, 1-D) couples to that axis, so it is sliced
with it; a per-tensor (scalar or ``[1]``) scale / zero point is untouched.  That one rule
covers

* constant weights ``DQ(int8 W, per-channel scale, zp) -> Conv/Gemm/MatMul``: the DQ output
  is a weight (:func:`onnxsparse.graph._weights.is_weight`), the consumer's rule gives it its
  roles and contraction, and pruning slices the int8 initializer and the per-axis scale/zp;
  criteria score the dequantized values;
* int32 biases ``DQ(int32 b, x_scale * w_scale per channel)``: sliced with the output channel;
* activation ``Q -> DQ`` pairs: per-tensor is a pass-through, per-axis is sliced like a weight.

The result keeps the QDQ structure (smaller tensors, same scales for the kept channels).
Blocked quantization (opset 21 ``block_size``) and ``DynamicQuantizeLinear`` (its scale is
computed over the whole tensor, so removing channels changes the kept ones) decline.

**MatMulNBits** (com.microsoft): ``Y = A @ dequant(B)^T``, ``B`` ``[N, K/block, blob]`` uint8,
``scales`` ``[N, K/block]`` (or flat ``[N * K/block]``), optional ``zero_points``.  Output
channels ``N`` are rows of every constant (attribute ``N`` rewritten; onnx's inference does
not know the op, so the rule fills in ``Y``'s shape).  Input features ``K`` are pruned only
in whole quantization blocks: a virtual slot of ``K/block`` units couples ``Block(block)``
positions of ``A``'s last axis to axis 1 of ``B``, of 2-D scales and zero points (attribute
``K`` rewritten); the contraction is masked on the activation.  ``K`` declines (with the
reason) when it is not a multiple of ``block_size``, when uint8 zero points pack several
blocks per byte, or when scales / zero points are flat.  ``g_idx`` and
``bits`` other than 4/8 decline the node; a constant ``[N]`` bias is sliced with ``N``.  Criteria score ``B`` dequantized to
``[N, K/block, block]``.

**QOperator**: ``QLinearConv`` (group 1 or depthwise), ``QLinearMatMul`` with a constant ``B``
and com.microsoft ``QGemm`` are sliced like Conv/MatMul/Gemm: the int8 weight, a per-channel
weight scale / zero point and the int32 bias follow the output channel; activation scales
must be per-tensor.  ``QLinearAdd``/``QLinearMul`` (broadcast), ``QLinearSigmoid``/
``QLinearLeakyRelu`` and ``QLinearGlobalAveragePool``/``QLinearAveragePool`` pass channels
through (onnx's inference does not know the com.microsoft ones: the rules fill in their
output shapes).  Criteria score dequantized weights; the oracle masks weight codes at their
zero point.  ``QLinearMatMul`` of two activations, ``MatMulInteger``/``ConvInteger``
(dynamic quantization), ``QLinearConcat``, ``QLinearSoftmax``, ``QAttention``... decline.
"""

from __future__ import annotations

from ...errors import Decline

from typing import ClassVar

import onnx_ir as ir

from ..context import CoupleContext, RewriteContext
from ..index_maps import Block
from ..linear import linear_op
from ..registry import OpRule
from ..slots import Role
from .conv import couple_filter_inputs

__all__ = [
    "UNSLICED_QUANTIZED_OPS", "QDQRule", "MicrosoftQDQRule", "DynamicQuantizeRule", "MatMulNBitsRule", "QLinearConvRule",
    "QLinearMatMulRule", "QGemmRule", "QLinearElementwiseRule", "QLinearPoolRule", "QOperatorRule", "RULES",
]


def _per_tensor(dims: tuple[int | None, ...] | None) -> bool:
    return dims is not None and all(d == 1 for d in dims)


class QDQRule(OpRule):
    op_types = ("DequantizeLinear", "QuantizeLinear")
    since = 10

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, scale, zp, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        if x is None or scale is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        ctx.same_shape(x, y)
        rank = ctx.rank(x)
        if rank is None:
            raise Decline(f"{ctx.describe()}: rank of '{x.name}' unknown")
        sd = ctx.dims(scale)
        if sd is None:
            raise Decline(f"{ctx.describe()}: shape of the scale '{scale.name}' unknown")
        block = ctx.attr_int("block_size", 0) or 0
        axis = None
        if not _per_tensor(sd):
            if block:
                raise Decline(f"{ctx.describe()}: blocked quantization (block_size={block}) is not sliced "
                        "(per-tensor and per-axis scales are)")
            if len(sd) != 1:
                raise Decline(f"{ctx.describe()}: scale of shape {list(sd)} is neither per-tensor nor per-axis")
            axis = ctx.attr_int("axis", 1)
            axis = axis + rank if axis < 0 else axis
            if not 0 <= axis < rank:
                raise Decline(f"{ctx.describe()}: axis {axis} out of range")
        zd = ctx.dims(zp) if zp is not None else None
        if zp is not None and (zd is None or (axis is None) != _per_tensor(zd)):
            raise Decline(f"{ctx.describe()}: zero point shape {zd} does not match the scale's {list(sd)}")
        for k in range(rank):
            ctx.couple(x, k, y, k)
        if axis is None:
            ctx.handled_all(scale)
            ctx.handled_all(zp)
        else:
            ctx.couple(scale, 0, y, axis)
            if zp is not None:
                ctx.couple(zp, 0, y, axis)
            ctx.role(scale, 0, Role.CONST)
        return None


class MicrosoftQDQRule(QDQRule):
    """The com.microsoft ``QuantizeLinear`` / ``DequantizeLinear`` (older onnxruntime exports)."""

    domain = "com.microsoft"
    since = 1


class DynamicQuantizeRule(OpRule):
    op_types = ("DynamicQuantizeLinear",)
    since = 11

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        raise Decline(f"{ctx.describe()}: the scale is computed over the whole tensor at run time, so removing "
                "channels would change the kept ones (dynamic quantization: prune the float model, then quantize)")


class MatMulNBitsRule(OpRule):
    op_types = ("MatMulNBits",)
    domain = "com.microsoft"

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        a, b, scales, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        zp = ctx.input(3)
        if a is None or b is None or scales is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        if len(node.inputs) > 4 and node.inputs[4] is not None:
            raise Decline(f"{ctx.describe()}: g_idx (act-order) input is not supported")
        bias = node.inputs[5] if len(node.inputs) > 5 else None
        if bias is not None and (bias.const_value is None or ctx.dims(bias) != (ctx.attr_int("N"),)):
            raise Decline(f"{ctx.describe()}: bias must be a constant [N]")
        if b.const_value is None or scales.const_value is None or (zp is not None and zp.const_value is None):
            raise Decline(f"{ctx.describe()}: B, scales and zero points must be constants")
        n, k = ctx.attr_int("N"), ctx.attr_int("K")
        bits, block = ctx.attr_int("bits", 4), ctx.attr_int("block_size")
        if n is None or k is None or block is None:
            raise Decline(f"{ctx.describe()}: attributes N, K and block_size are required")
        if bits not in (4, 8):
            raise Decline(f"{ctx.describe()}: bits={bits} not supported (4, 8)")
        n_blocks = -(-k // block)
        blob = block * bits // 8
        bd, sd = ctx.dims(b), ctx.dims(scales)
        if bd != (n, n_blocks, blob):
            raise Decline(f"{ctx.describe()}: B of shape {bd} is not [N, K/block, blob] = {[n, n_blocks, blob]}")
        if sd not in ((n * n_blocks,), (n, n_blocks)):
            raise Decline(f"{ctx.describe()}: scales of shape {sd} not [N * K/block]")
        if y.shape is None and a.shape is not None:  # onnx's inference does not know com.microsoft ops
            y.shape = ir.Shape([*list(a.shape)[:-1], n])
        if y.dtype is None and a.dtype is not None:
            y.dtype = a.dtype
        ra, ry = ctx.rank(a), ctx.rank(y)
        ad = ctx.dims(a)
        if ra is None or ry is None or ra != ry or ad is None:
            raise Decline(f"{ctx.describe()}: ranks of A and Y unknown")
        if ad[-1] is not None and ad[-1] != k:
            raise Decline(f"{ctx.describe()}: A's last axis {ad[-1]} is not K={k}")
        for axis in range(ra - 1):
            ctx.couple(a, axis, y, axis)
        # output channels: rows of B, of the scales, of the zero points
        ctx.couple(b, 0, y, ry - 1)
        ctx.role(b, 0, Role.PRODUCE)
        if bias is not None:
            ctx.couple(bias, 0, y, ry - 1)
            ctx.role(bias, 0, Role.BIAS)
        if len(sd) == 2:
            ctx.couple(scales, 0, y, ry - 1)
            ctx.handled(scales, 1)
        else:
            ctx.couple(scales, 0, y, ry - 1, Block(n_blocks))
        zd = ctx.dims(zp) if zp is not None else None
        if zp is not None:
            zp_per_row = -(-n_blocks * bits // 8) if zp.dtype == ir.DataType.UINT8 else n_blocks
            if zd == (n * zp_per_row,):
                ctx.couple(zp, 0, y, ry - 1, Block(zp_per_row))
            elif zd == (n, zp_per_row):
                ctx.couple(zp, 0, y, ry - 1)
            else:
                raise Decline(f"{ctx.describe()}: zero points of shape {zd} not understood")
        # input features K: only whole quantization blocks (a virtual slot of K/block units)
        packed_zp = zp is not None and zp.dtype == ir.DataType.UINT8 and 8 // bits > 1 and n_blocks > 1
        why = None
        if k % block:
            why = f"K={k} is not a multiple of block_size={block}"
        elif packed_zp:
            why = "the zero points pack several K blocks per byte"
        elif len(sd) == 1 or (zd is not None and len(zd) == 1):
            why = "flat [N * K/block] scales / zero points interleave rows and K blocks"
        if why:
            ctx.block(a, ra - 1, f"input features are not pruned: {why}")
            ctx.handled(b, 1)
            ctx.handled(scales, len(sd) - 1)
            if zp is not None:
                ctx.handled_all(zp)
        else:
            blocks = ctx.virtual("k_blocks", n_blocks)
            ctx.couple(blocks, 0, a, ra - 1, Block(block))
            ctx.couple(blocks, 0, b, 1)
            ctx.couple(blocks, 0, scales, 1)
            if zp is not None:
                ctx.couple(blocks, 0, zp, 1)
            ctx.role(b, 1, Role.CONSUME)
            ctx.contract(0, ra - 1)  # masked on the activation: a block is removed whole
        ctx.handled(b, 2)
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        """B, scales and zero points are sliced through their slots; N and K follow."""
        y = ctx.output(0)
        keep_n = ctx.keep(y, -1)
        if keep_n is not None:
            ctx.set_attr_int("N", int(keep_n.sum()))
        keep_kb = ctx.keep_virtual("k_blocks")
        if keep_kb is not None:
            ctx.set_attr_int("K", int(keep_kb.sum()) * (ctx.attr_int("block_size") or 0))


def _fill(y: ir.Value | None, dims: list | None, like: ir.Value | None, dtype: ir.DataType | None = None) -> None:
    """Give a com.microsoft op's output the shape/type onnx's inference cannot (known from the op's definition)."""
    if y is None:
        return
    if y.shape is None and dims is not None:
        y.shape = ir.Shape(dims)
    dtype = dtype if dtype is not None else (like.dtype if like is not None else None)
    if y.dtype is None and dtype is not None:
        y.dtype = dtype


def _scalars(ctx: CoupleContext, *values: ir.Value | None) -> None:
    """Per-tensor quantization parameters are left alone; anything else declines."""
    for v in values:
        if v is None:
            continue
        if not _per_tensor(ctx.dims(v)):
            raise Decline(f"{ctx.describe()}: quantization parameter '{v.name}' is not per-tensor")
        ctx.handled_all(v)


def _per_channel(ctx: CoupleContext, value: ir.Value | None, y: ir.Value, y_axis: int) -> None:
    """A weight scale / zero point: per-tensor (left alone) or one per output channel (sliced with it)."""
    if value is None:
        return None
    d = ctx.dims(value)
    if _per_tensor(d):
        ctx.handled_all(value)
        return None
    if d is None or len(d) != 1:
        raise Decline(f"{ctx.describe()}: '{value.name}' is neither per-tensor nor per output channel")
    ctx.couple(value, 0, y, y_axis)


class QLinearConvRule(OpRule):
    """``QLinearConv(x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp, B)``: a Conv whose int8 filters, per-channel
    ``w_s``/``w_zp`` and int32 bias are sliced with the output channel (``group`` 1 or depthwise)."""

    op_types = ("QLinearConv",)
    since = 10

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, w, b, y = ctx.input(0), ctx.input(3), ctx.input(8), ctx.output(0)
        if x is None or w is None or y is None or w.const_value is None:
            raise Decline(f"{ctx.describe()}: needs a constant weight")
        xd, yd, wd = ctx.dims(x), ctx.dims(y), ctx.dims(w)
        if xd is None or yd is None or len(xd) < 3 or len(xd) != len(yd) or xd[1] is None:
            raise Decline(f"{ctx.describe()}: input/output ranks unknown")
        _scalars(ctx, ctx.input(1), ctx.input(2), ctx.input(6), ctx.input(7))
        g = linear_op(node).groups
        ci = xd[1]
        co, ci_g = (wd[0], wd[1]) if wd is not None and len(wd) >= 2 else (None, None)
        if co is None or ci_g is None:
            raise Decline(f"{ctx.describe()}: weight shape unknown")
        if ci != ci_g * g or co % g:
            raise Decline(f"{ctx.describe()}: inconsistent group {g}")
        if g > 1 and ci_g != 1:
            raise Decline(f"{ctx.describe()}: grouped QLinearConv (group={g}) is not sliced (group 1 and depthwise are)")
        ctx.couple(x, 0, y, 0)
        ctx.couple(w, 0, y, 1)
        ctx.role(w, 0, Role.PRODUCE)
        for extra in (ctx.input(4), ctx.input(5)):
            _per_channel(ctx, extra, y, 1)
        couple_filter_inputs(ctx, x, w, b, y, group=g, co=co, ci_g=ci_g, weight_input=3)  # grouped: depthwise only
        return None

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        g = linear_op(node).groups
        kept = ctx.kept_size(ctx.input(0), 1)
        if g > 1 and kept is not None:  # depthwise (couple() refuses other groups): one group per channel
            ctx.set_attr_int("group", kept)


class QLinearMatMulRule(OpRule):
    """``QLinearMatMul(a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp)`` with a constant int8 ``b`` ``[K, N]``
    (``b_s``/``b_zp`` per-tensor or per column ``N``)."""

    op_types = ("QLinearMatMul",)
    since = 10

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        a, b, y = ctx.input(0), ctx.input(3), ctx.output(0)
        if a is None or b is None or y is None:
            raise Decline(f"{ctx.describe()}: missing input")
        if b.const_value is None or ctx.rank(b) != 2:
            raise Decline(f"{ctx.describe()}: only a constant 2-D B is sliced (masking a quantized activation "
                    "at its zero point is not supported)")
        ra, ry = ctx.rank(a), ctx.rank(y)
        if ra is None or ry is None or ra != ry or ra < 2:
            raise Decline(f"{ctx.describe()}: operand ranks unknown")
        _scalars(ctx, ctx.input(1), ctx.input(2), ctx.input(6), ctx.input(7))
        for axis in range(ra - 1):
            ctx.couple(a, axis, y, axis)
        ctx.couple(a, ra - 1, b, 0)
        ctx.couple(b, 1, y, ry - 1)
        ctx.role(b, 0, Role.CONSUME)
        ctx.role(b, 1, Role.PRODUCE)
        ctx.contract(0, ra - 1, weight=(3, 0))
        for extra in (ctx.input(4), ctx.input(5)):
            _per_channel(ctx, extra, y, ry - 1)
        return None


class QGemmRule(OpRule):
    """com.microsoft ``QGemm(A, a_s, a_zp, B, b_s, b_zp, C, y_s, y_zp)`` with a constant int8 ``B``."""

    op_types = ("QGemm",)
    domain = "com.microsoft"

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        a, b, c, y = ctx.input(0), ctx.input(3), ctx.input(6), ctx.output(0)
        if a is None or b is None or y is None or b.const_value is None or ctx.rank(a) != 2 or ctx.rank(b) != 2:
            raise Decline(f"{ctx.describe()}: needs a 2-D A and a constant 2-D B")
        view = linear_op(node, 3, weight_rank=2)
        if view.data_axis != 1:
            raise Decline(f"{ctx.describe()}: transA is not supported")
        b_k, b_n = view.matrix_axes()
        ad, bd = ctx.dims(a), ctx.dims(b)
        if ad is None or bd is None:  # pragma: no cover - both ranks are 2
            raise Decline(f"{ctx.describe()}: needs a 2-D A and a constant 2-D B")
        y_s, y_zp = ctx.input(7), ctx.input(8)
        _fill(y, [ad[0], bd[b_n]], None, y_zp.dtype if y_s is not None and y_zp is not None
              else (ir.DataType.FLOAT if y_s is None else a.dtype))
        _scalars(ctx, ctx.input(1), ctx.input(2), y_s, ctx.input(8))
        ctx.couple(a, 1, b, b_k)
        ctx.couple(a, 0, y, 0)
        ctx.couple(b, b_n, y, 1)
        ctx.role(b, b_k, Role.CONSUME)
        ctx.role(b, b_n, Role.PRODUCE)
        ctx.contract(0, 1, weight=(3, b_k))
        for extra in (ctx.input(4), ctx.input(5)):
            _per_channel(ctx, extra, y, 1)
        if c is not None:
            ctx.broadcast([c], y)
            cd = ctx.dims(c)
            if c.const_value is not None and cd and cd[-1] not in (None, 1):
                ctx.role(c, len(cd) - 1, Role.BIAS)
        return None


class QLinearElementwiseRule(OpRule):
    """QLinearAdd / QLinearMul (broadcast), QLinearSigmoid / QLinearLeakyRelu (unary): per-tensor scales."""

    op_types = ("QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu")
    domain = "com.microsoft"

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        y = ctx.output(0)
        binary = node.op_type in ("QLinearAdd", "QLinearMul")
        inputs = [ctx.input(0), ctx.input(3)] if binary else [ctx.input(0)]
        params = [ctx.input(i) for i in ((1, 2, 4, 5, 6, 7) if binary else (1, 2, 3, 4))]
        data = [v for v in inputs if v is not None]
        if y is None or len(data) != len(inputs):
            raise Decline(f"{ctx.describe()}: missing input")
        shapes = [v.shape for v in data if v.shape is not None]
        if y.shape is None and len(shapes) == len(data):
            rank = max(len(s) for s in shapes)
            dims: list = []
            for k in range(rank):  # numpy broadcasting on possibly symbolic dims: a dim other than 1 wins
                cands = [s[k - rank + len(s)] for s in shapes if k - rank + len(s) >= 0]
                dims.append(next((d for d in cands if d != 1), 1))
            _fill(y, dims, data[0])
        _fill(y, None, data[0])
        _scalars(ctx, *params)
        ctx.broadcast(data, y)
        for v in data:
            if v.const_value is not None:
                for k, d in enumerate(ctx.dims(v) or ()):
                    if d not in (None, 1):
                        ctx.role(v, k, Role.CONST)
        return None


class QLinearPoolRule(OpRule):
    """QLinearGlobalAveragePool / QLinearAveragePool: per channel, per-tensor scales."""

    op_types = ("QLinearGlobalAveragePool", "QLinearAveragePool")
    domain = "com.microsoft"

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x, y = ctx.input(0), ctx.output(0)
        xd = ctx.dims(x)
        if x is None or y is None or xd is None or len(xd) < 3:
            raise Decline(f"{ctx.describe()}: input rank unknown")
        last = bool(ctx.attr_int("channels_last", 0))
        if node.op_type == "QLinearGlobalAveragePool" and y.shape is None and x.shape is not None:
            dims = list(x.shape)
            spatial = range(1, len(dims) - 1) if last else range(2, len(dims))
            for k in spatial:
                dims[k] = 1
            _fill(y, dims, x)
        if ctx.rank(y) != len(xd):
            raise Decline(f"{ctx.describe()}: output rank unknown")
        _scalars(ctx, *(ctx.input(i) for i in range(1, 5)))
        ctx.couple(x, 0, y, 0)
        ctx.couple(x, len(xd) - 1 if last else 1, y, len(xd) - 1 if last else 1)
        return None


_QOPERATOR = ("MatMulInteger", "ConvInteger")
_QOPERATOR_MS = (
    "QLinearConcat", "QLinearSoftmax", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention",
    "QOrderedMatMul",
)  # fmt: skip

#: quantized op types no rule slices (they decline with the reason): dynamic quantization, other fused QOperator ops
UNSLICED_QUANTIZED_OPS: frozenset[str] = frozenset((*_QOPERATOR, *_QOPERATOR_MS, "DynamicQuantizeLinear"))

_QOPERATOR_REASON = ("QOperator form ({op}): no rule slices it (QLinearConv, QLinearMatMul, QGemm and "
                     "per-tensor QLinear element-wise/pooling ops are); prune the QDQ model "
                     "(onnxsparse quantize --format qdq) or the float model, then quantize")


class QOperatorRule(OpRule):
    op_types: ClassVar[tuple[str, ...]] = _QOPERATOR

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        raise Decline(f"{ctx.describe()}: " + _QOPERATOR_REASON.format(op=node.op_type))


class MicrosoftQOperatorRule(QOperatorRule):
    op_types = _QOPERATOR_MS
    domain = "com.microsoft"

    def couple(self, node: ir.Node, ctx: CoupleContext) -> None:
        x = ctx.input(0)
        if node.op_type == "QLinearSoftmax" and x is not None and x.shape is not None:
            _fill(ctx.output(0), list(x.shape), x)  # declined, but the shapes downstream stay known
        super().couple(node, ctx)  # declines (raises) with the reason
        return None


RULES: tuple[OpRule, ...] = (
    QDQRule(),
    MicrosoftQDQRule(),
    DynamicQuantizeRule(),
    MatMulNBitsRule(),
    QLinearConvRule(),
    QLinearMatMulRule(),
    QGemmRule(),
    QLinearElementwiseRule(),
    QLinearPoolRule(),
    QOperatorRule(),
    MicrosoftQOperatorRule(),
)
