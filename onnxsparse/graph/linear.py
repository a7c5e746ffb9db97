"""One description of a linear node: which input is the weight, which data axis it contracts.

MatMul / Gemm / Conv / ConvTranspose and their integer forms (MatMulInteger,
QLinearMatMul, ConvInteger, QLinearConv, com.microsoft QGemm) all multiply a weight by an
activation over one axis.  Graph rules, sparsity, SparseGPT, activation
statistics, calibration capture, packed-projection splitting and the quantize
readers each used to re-derive that from ``transA``/``transB`` / ``group``;
:func:`linear_op` answers it once (:func:`linear_op_proto` for a protobuf
node), and raises :class:`~onnxsparse.errors.Decline` for a node it does not
describe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import onnx
import onnx_ir as ir

from ..errors import Decline

__all__ = ["LinearOp", "linear_op", "linear_op_proto", "LINEAR_KINDS", "MS_LINEAR_KINDS"]


@dataclass(frozen=True)
class _Kind:
    family: str  #: "matmul" | "gemm" | "conv" | "conv_transpose"
    weight: int  #: default weight input
    data: int  #: the data input contracted with it
    scale: int | None = None  #: weight scale input (QLinear*)
    zero_point: int | None = None  #: weight zero-point input (integer forms)
    bias: int | None = None


#: op type (default ONNX domain) -> its inputs.  Only ops the toolkit handles.
LINEAR_KINDS: dict[str, _Kind] = {
    "MatMul": _Kind("matmul", 1, 0),
    "Gemm": _Kind("gemm", 1, 0, bias=2),
    "Conv": _Kind("conv", 1, 0, bias=2),
    "ConvTranspose": _Kind("conv_transpose", 1, 0, bias=2),
    "MatMulInteger": _Kind("matmul", 1, 0, zero_point=3),
    "QLinearMatMul": _Kind("matmul", 3, 0, scale=4, zero_point=5),
    "ConvInteger": _Kind("conv", 1, 0, zero_point=3),
    "QLinearConv": _Kind("conv", 3, 0, scale=4, zero_point=5, bias=8),
}

#: com.microsoft op type -> its inputs (onnxruntime contrib ops the quantized models carry).
MS_LINEAR_KINDS: dict[str, _Kind] = {
    "QGemm": _Kind("gemm", 3, 0, scale=4, zero_point=5, bias=6),  # A, a_s, a_zp, B, b_s, b_zp, C, y_s, y_zp
}


def _kind(node: ir.Node) -> _Kind:
    if node.domain in ("", "ai.onnx"):
        kind = LINEAR_KINDS.get(node.op_type)
    else:
        kind = MS_LINEAR_KINDS.get(node.op_type) if node.domain == "com.microsoft" else None
    if kind is None:
        prefix = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
        raise Decline(f"{prefix}{node.op_type} is not a linear op")
    return kind


@dataclass(frozen=True)
class LinearOp:
    """How ``node`` contracts its weight (input ``weight_input``) with the data (input ``data_input``).

    Axes of the weight are non-negative when its rank is known; ``data_axis`` is
    negative for MatMul (the data may be batched to any rank).
    """

    node: ir.Node
    family: str  #: "matmul" | "gemm" | "conv" | "conv_transpose"
    weight_input: int
    data_input: int
    in_axis: int | None  #: weight axis summed against ``data_axis`` (None: weight rank unknown)
    out_axis: int | None  #: weight axis that indexes the output features (None for a 1-D MatMul weight)
    data_axis: int  #: the data's contracted (channel) axis
    groups: int = 1
    transposed: bool = False  #: weight stored [in, out] (MatMul right weight, Gemm B without transB)
    weight_shape: tuple[int, ...] | None = None
    scale_input: int | None = None
    zero_point_input: int | None = None
    bias_input: int | None = None

    @property
    def quantized(self) -> bool:
        return self.zero_point_input is not None

    @property
    def kernel(self) -> tuple[int, ...]:
        """Spatial kernel dims of a (transposed) convolution; ``()`` for a dense op or unknown shape."""
        if self.family in ("conv", "conv_transpose") and self.weight_shape is not None:
            return self.weight_shape[2:]
        return ()

    def matrix_axes(self) -> tuple[int, int]:
        """``(in_axis, out_axis)`` of a weight with at least two axes; :class:`Decline` otherwise."""
        if self.in_axis is None or self.out_axis is None:
            raise Decline(f"{self.node.op_type} '{self.node.name}': weight rank unknown or below 2")
        return self.in_axis, self.out_axis

    def channels_per_group(self, in_channels: int) -> int:
        """Data channels each group reads."""
        if in_channels % self.groups:
            raise Decline(f"{in_channels} input channels do not split into {self.groups} groups")
        return in_channels // self.groups

    def group_of(self, channel: int, in_channels: int) -> int:
        """The group that reads data channel ``channel``."""
        return channel // self.channels_per_group(in_channels)

    def weight_in_index(self, channel: int, in_channels: int) -> int:
        """Index along ``in_axis`` that multiplies data channel ``channel``.

        A grouped Conv stores only its group's ``C_in/g`` input channels; a
        ConvTranspose's weight ``[C_in, C_out/g, k...]`` keeps every input channel.
        """
        if self.family == "conv":
            return channel % self.channels_per_group(in_channels)
        return channel

    def output_range(self, group: int, out_channels: int) -> range:
        """Output channels written by ``group``."""
        per = out_channels // self.groups
        return range(group * per, (group + 1) * per)


def _shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    shape = value.const_value.shape if value.const_value is not None else value.shape
    if shape is None:
        return None
    dims = [d for d in shape if isinstance(d, int)]
    return tuple(dims) if len(dims) == len(shape) else None


def _rank(value: ir.Value | None) -> int | None:
    if value is None:
        return None
    if value.const_value is not None:
        return len(value.const_value.shape)
    return len(value.shape) if value.shape is not None else None


def _is_const(node: ir.Node, index: int) -> bool:
    value = node.inputs[index] if index < len(node.inputs) else None
    return value is not None and value.const_value is not None


def linear_op(node: ir.Node, weight_input: int | None = None, *, weight_rank: int | None = None) -> LinearOp:
    """The :class:`LinearOp` of ``node`` with ``weight_input`` as its weight, or raise :class:`Decline`.

    Without ``weight_input``: Gemm/Conv/quantized ops use their weight input;
    a MatMul uses whichever operand is a constant (the right one when both are).
    ``weight_rank`` overrides the rank read from the node's input (a weight seen
    through a Cast may carry no shape there).
    """
    kind = _kind(node)
    op = node.op_type
    attrs = node.attributes
    if weight_input is None:
        weight_input = kind.weight
        if op == "MatMul" and not _is_const(node, 1):
            if not _is_const(node, 0):
                raise Decline(f"MatMul '{node.name}' multiplies two activations (no constant weight)")
            weight_input = 0
    weight = node.inputs[weight_input] if weight_input < len(node.inputs) else None
    rank = _rank(weight) if weight_rank is None else weight_rank
    base = LinearOp(node, kind.family, weight_input, kind.data, None, None, 1, weight_shape=_shape(weight),
                    scale_input=kind.scale, zero_point_input=kind.zero_point, bias_input=kind.bias)
    if op == "MatMul" and weight_input in (0, 1):
        left = weight_input == 0
        in_axis: int | None
        out_axis: int | None
        if rank is None:
            in_axis = out_axis = None
        elif rank == 1:
            in_axis, out_axis = 0, None
        else:
            in_axis, out_axis = (rank - 1, rank - 2) if left else (rank - 2, rank - 1)
        return replace(base, data_input=1 - weight_input, in_axis=in_axis, out_axis=out_axis,
                        data_axis=-2 if left else -1, transposed=not left)
    a_weight = op == "Gemm" and weight_input == 0  # a constant A (QGemm's A is always quantized data)
    if kind.family == "gemm" and (weight_input == kind.weight or a_weight):
        ta = bool(attrs.get_int("transA", 0))
        tb = bool(attrs.get_int("transB", 0))
        if not a_weight:  # B [K, N], or [N, K] with transB, times A [M, K] / [K, M]
            return replace(base, data_input=kind.data, in_axis=1 if tb else 0, out_axis=0 if tb else 1,
                            data_axis=0 if ta else 1, transposed=not tb)
        return replace(base, data_input=1, in_axis=0 if ta else 1, out_axis=1 if ta else 0,
                        data_axis=1 if tb else 0, transposed=ta)
    if weight_input != kind.weight:
        raise Decline(f"{op} '{node.name}': input {weight_input} is not its weight")
    groups = attrs.get_int("group", 1) or 1
    if kind.family == "conv_transpose":  # weight [C_in, C_out/g, k...]
        return replace(base, data_input=kind.data, in_axis=0, out_axis=1, data_axis=1, groups=groups)
    if kind.family == "conv":  # weight [C_out, C_in/g, k...]
        return replace(base, data_input=kind.data, in_axis=1, out_axis=0, data_axis=1, groups=groups)
    # integer MatMul forms: weight [.., K, N] on the right; a 1-D weight [K] as MatMul's
    if rank is None:
        in_axis = out_axis = None
    elif rank == 1:
        in_axis, out_axis = 0, None
    else:
        in_axis, out_axis = rank - 2, rank - 1
    return replace(base, data_input=kind.data, in_axis=in_axis, out_axis=out_axis, data_axis=-1, transposed=True)


def linear_op_proto(node: onnx.NodeProto, weight_input: int | None = None, *,
                    inits: Mapping[str, onnx.TensorProto] | None = None) -> LinearOp:
    """:func:`linear_op` of a protobuf node (``quantize/`` edits ``ModelProto`` graphs).

    The view is taken on a detached stand-in: only integer attributes are
    copied, and an input named in ``inits`` carries that initializer's shape
    but no value, so a MatMul needs an explicit ``weight_input``.
    """
    inits = inits or {}
    inputs = [ir.Value(name=name, shape=ir.Shape(list(inits[name].dims)) if name in inits else None) if name else None
              for name in node.input]
    attrs = [ir.AttrInt64(a.name, a.i) for a in node.attribute if a.type == onnx.AttributeProto.INT]
    stand_in = ir.Node(node.domain, node.op_type, inputs, attributes=attrs, name=node.name)
    return linear_op(stand_in, weight_input)
