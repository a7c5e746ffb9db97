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
blocks per byte, or when scales / zero points are flat.  ``g_idx`` / bias inputs and
``bits`` other than 4/8 decline the node.  Criteria score ``B`` dequantized to
``[N, K/block, block]``.

**QOperator** (``QLinearConv``, ``QLinearMatMul``, ``MatMulInteger``, ``ConvInteger``,
``QGemm``, ``QLinear*`` element-wise ops): decline with a reason (prune the QDQ form).
"""

from __future__ import annotations

import onnx_ir as ir

from ..context import CoupleContext, RewriteContext
from ..index_maps import Block
from ..registry import OpRule
from ..slots import Role

__all__ = ["QOPERATOR_OPS", "QDQRule", "MicrosoftQDQRule", "MatMulNBitsRule", "QOperatorRule", "RULES"]


def _per_tensor(dims: tuple[int | None, ...] | None) -> bool:
    return dims is not None and all(d == 1 for d in dims)


class QDQRule(OpRule):
    op_types = ("DequantizeLinear", "QuantizeLinear")
    since = 10

    def couple(self, node: ir.Node, ctx: CoupleContext) -> str | None:
        x, scale, zp, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        if x is None or scale is None or y is None:
            return f"{ctx.describe()}: missing input"
        ctx.same_shape(x, y)
        rank = ctx.rank(x)
        if rank is None:
            return f"{ctx.describe()}: rank of '{x.name}' unknown"
        sd = ctx.dims(scale)
        if sd is None:
            return f"{ctx.describe()}: shape of the scale '{scale.name}' unknown"
        block = ctx.attr_int("block_size", 0) or 0
        axis = None
        if not _per_tensor(sd):
            if block:
                return (f"{ctx.describe()}: blocked quantization (block_size={block}) is not sliced "
                        "(per-tensor and per-axis scales are)")
            if len(sd) != 1:
                return f"{ctx.describe()}: scale of shape {list(sd)} is neither per-tensor nor per-axis"
            axis = ctx.attr_int("axis", 1)
            axis = axis + rank if axis < 0 else axis
            if not 0 <= axis < rank:
                return f"{ctx.describe()}: axis {axis} out of range"
        zd = ctx.dims(zp) if zp is not None else None
        if zp is not None and (zd is None or (axis is None) != _per_tensor(zd)):
            return f"{ctx.describe()}: zero point shape {zd} does not match the scale's {list(sd)}"
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

    def couple(self, node: ir.Node, ctx: CoupleContext) -> str | None:
        return (f"{ctx.describe()}: the scale is computed over the whole tensor at run time, so removing "
                "channels would change the kept ones (dynamic quantization: prune the float model, then quantize)")


class MatMulNBitsRule(OpRule):
    op_types = ("MatMulNBits",)
    domain = "com.microsoft"

    def couple(self, node: ir.Node, ctx: CoupleContext) -> str | None:
        a, b, scales, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
        zp = ctx.input(3)
        if a is None or b is None or scales is None or y is None:
            return f"{ctx.describe()}: missing input"
        if any(v is not None for v in node.inputs[4:]):
            return f"{ctx.describe()}: g_idx / bias inputs are not supported"
        if b.const_value is None or scales.const_value is None or (zp is not None and zp.const_value is None):
            return f"{ctx.describe()}: B, scales and zero points must be constants"
        n, k = ctx.attr_int("N"), ctx.attr_int("K")
        bits, block = ctx.attr_int("bits", 4), ctx.attr_int("block_size")
        if n is None or k is None or block is None:
            return f"{ctx.describe()}: attributes N, K and block_size are required"
        if bits not in (4, 8):
            return f"{ctx.describe()}: bits={bits} not supported (4, 8)"
        n_blocks = -(-k // block)
        blob = block * bits // 8
        bd, sd = ctx.dims(b), ctx.dims(scales)
        if bd != (n, n_blocks, blob):
            return f"{ctx.describe()}: B of shape {bd} is not [N, K/block, blob] = {[n, n_blocks, blob]}"
        if sd not in ((n * n_blocks,), (n, n_blocks)):
            return f"{ctx.describe()}: scales of shape {sd} not [N * K/block]"
        if y.shape is None and a.shape is not None:  # onnx's inference does not know com.microsoft ops
            y.shape = ir.Shape([*list(a.shape)[:-1], n])
        if y.dtype is None and a.dtype is not None:
            y.dtype = a.dtype
        ra, ry = ctx.rank(a), ctx.rank(y)
        ad = ctx.dims(a)
        if ra is None or ry is None or ra != ry or ad is None:
            return f"{ctx.describe()}: ranks of A and Y unknown"
        if ad[-1] is not None and ad[-1] != k:
            return f"{ctx.describe()}: A's last axis {ad[-1]} is not K={k}"
        for axis in range(ra - 1):
            ctx.couple(a, axis, y, axis)
        # output channels: rows of B, of the scales, of the zero points
        ctx.couple(b, 0, y, ry - 1)
        ctx.role(b, 0, Role.PRODUCE)
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
                return f"{ctx.describe()}: zero points of shape {zd} not understood"
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


_QOPERATOR = (
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
)
_QOPERATOR_MS = (
    "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSoftmax", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QAttention", "QOrderedMatMul",
)  # fmt: skip

#: op types of the QOperator form (either domain): fused quantized nodes no rule slices
QOPERATOR_OPS: frozenset[str] = frozenset((*_QOPERATOR, *_QOPERATOR_MS))

_QOPERATOR_REASON = ("QOperator form ({op}): weights, scales and zero points are fused into one node "
                     "and no rule slices them yet; prune the QDQ model (onnxsparse quantize --mode static "
                     "writes QDQ) or the float model, then quantize")


class QOperatorRule(OpRule):
    op_types = _QOPERATOR

    def couple(self, node: ir.Node, ctx: CoupleContext) -> str | None:
        return f"{ctx.describe()}: " + _QOPERATOR_REASON.format(op=node.op_type)


class MicrosoftQOperatorRule(QOperatorRule):
    op_types = _QOPERATOR_MS
    domain = "com.microsoft"


RULES: tuple[OpRule, ...] = (
    QDQRule(),
    MicrosoftQDQRule(),
    DynamicQuantizeRule(),
    MatMulNBitsRule(),
    QOperatorRule(),
    MicrosoftQOperatorRule(),
)
