"""What counts as a *weight*: an initializer, or the output of a ``DequantizeLinear`` of constants.

A QDQ model (``onnxsparse quantize --mode static``, onnxruntime's quantizer, TensorRT-style
exports) feeds Conv/Gemm/MatMul a ``DequantizeLinear(int8 initializer, scale, zero point)``
output instead of a float initializer.  Rules ask :func:`is_weight` where they used to ask
``value.const_value is not None``, so the dequantized value gets the weight roles and the
contraction's weight; the ``DequantizeLinear`` rule (``rules/quantize.py``) couples it to the
integer initializer axis by axis, so slicing the integer codes (and a per-axis scale / zero
point) is what prunes it.  Criteria score :func:`weight_array`: the dequantized values.
"""

from __future__ import annotations

from typing import TypeGuard

import numpy as np
import onnx_ir as ir

from ..errors import Decline
from .linear import linear_op

__all__ = ["matmul_nbits_dequantized", "zero_codes", "dequantized", "dequantize_node", "dequantize_params", "is_weight", "weight_array", "DQ_DOMAINS"]

#: domains whose ``DequantizeLinear`` we read (com.microsoft's is the same op, older opsets)
DQ_DOMAINS = ("", "ai.onnx", "com.microsoft")


def dequantize_node(value: ir.Value | None) -> ir.Node | None:
    """The ``DequantizeLinear`` node producing ``value`` from constants only (else ``None``)."""
    if value is None or value.const_value is not None:
        return None
    node = value.producer()
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in DQ_DOMAINS:
        return None
    inputs = [v for v in node.inputs if v is not None]
    if len(inputs) < 2 or any(v.const_value is None for v in inputs):
        return None
    if node.outputs[0] is not value:
        return None
    return node


def dequantize_params(node: ir.Node) -> tuple[int, int]:
    """``(axis, block_size)`` of a ``DequantizeLinear`` node, axis normalised to the input's rank."""
    x = node.inputs[0]
    rank = len(x.const_value.shape) if x is not None and x.const_value is not None else (
        len(x.shape) if x is not None and x.shape is not None else 1)
    axis = node.attributes.get_int("axis", 1)
    axis = axis + rank if axis < 0 else axis
    return axis, node.attributes.get_int("block_size", 0) or 0


def _constant_input(node: ir.Node, index: int) -> np.ndarray:
    """Input ``index`` of ``node``, a constant (callers found the node through :func:`dequantize_node` or
    a rule that checked it)."""
    value = node.inputs[index] if index < len(node.inputs) else None
    tensor = None if value is None else value.const_value
    if tensor is None:
        raise ValueError(f"{node.op_type} node {node.name!r}: input {index} is not a constant")
    return tensor.numpy()


def is_weight(value: ir.Value | None) -> TypeGuard[ir.Value]:
    """An initializer, or a value dequantized from constants (a QDQ weight or bias)."""
    return value is not None and (value.const_value is not None or dequantize_node(value) is not None)


def _param(arr: np.ndarray, rank: int, axis: int, block: int, shape: tuple[int, ...]) -> np.ndarray:
    """A scale / zero point broadcast against the quantized tensor."""
    arr = np.asarray(arr)
    if arr.size == 1:
        return arr.reshape(())
    if block:  # blocked (opset 21): same rank, the quantized axis holds ceil(n / block) entries
        return np.repeat(arr, block, axis=axis)[tuple(slice(0, n) for n in shape)]
    view = [1] * rank
    view[axis] = arr.size
    return arr.reshape(view)


def dequantized(node: ir.Node, codes: np.ndarray | None = None) -> np.ndarray:
    """``(x - zero_point) * scale`` of a ``DequantizeLinear`` of constants, as float32."""
    x = np.asarray(_constant_input(node, 0) if codes is None else codes)
    scale = _constant_input(node, 1)
    zp_value = node.inputs[2] if len(node.inputs) > 2 else None
    zp = zp_value.const_value.numpy() if zp_value is not None and zp_value.const_value is not None else None
    axis, block = dequantize_params(node)
    s = _param(scale, x.ndim, axis, block, x.shape).astype(np.float32)
    out = x.astype(np.float32)
    if zp is not None:
        out = out - _param(zp, x.ndim, axis, block, x.shape).astype(np.float32)
    return (out * s).astype(np.float32)


def qoperator_weight(value: ir.Value | None) -> tuple[np.ndarray, np.ndarray | None, int] | None:
    """``(scale, zero point, per-channel axis)`` of an int8 weight read by a QOperator node (else ``None``)."""
    if value is None or value.const_value is None:
        return None
    uses = list(value.uses())
    if len(uses) != 1:
        return None
    node, index = uses[0].node, uses[0].idx
    try:
        view = linear_op(node, index)
    except Decline:
        return None
    if view.scale_input is None or view.zero_point_input is None or view.out_axis is None:
        return None  # float and integer-only (no weight scale) forms
    s_in = node.inputs[view.scale_input] if len(node.inputs) > view.scale_input else None
    z_in = node.inputs[view.zero_point_input] if len(node.inputs) > view.zero_point_input else None
    if s_in is None or s_in.const_value is None or (z_in is not None and z_in.const_value is None):
        return None
    axis = view.out_axis  # per output channel: QLinearConv 0, QLinearMatMul N, QGemm 0 with transB else 1
    zp = z_in.const_value.numpy() if z_in is not None and z_in.const_value is not None else None
    return s_in.const_value.numpy(), zp, axis


def _zero_at(x: np.ndarray, zp: np.ndarray | None, q_axis: int, axis: int, removed: np.ndarray,
             block: int = 0) -> np.ndarray:
    """A copy of the codes ``x`` with positions ``removed`` along ``axis`` set to their zero point."""
    x = np.array(x)  # a copy
    zp = np.zeros((), dtype=x.dtype) if zp is None else _param(zp, x.ndim, q_axis, block, x.shape)
    full = np.broadcast_to(zp, x.shape).astype(x.dtype)
    index: list[slice | np.ndarray] = [slice(None)] * x.ndim
    index[axis] = np.asarray(removed, dtype=bool)
    x[tuple(index)] = full[tuple(index)]
    return x


def zero_qoperator_codes(value: ir.Value, axis: int, removed: np.ndarray) -> np.ndarray | None:
    """Like :func:`zero_codes` for a QOperator node's int8 weight (``None`` if ``value`` is not one)."""
    params = qoperator_weight(value)
    if params is None:
        return None
    _, zp, q_axis = params
    tensor = value.const_value
    if tensor is None:  # pragma: no cover - qoperator_weight reads constants only
        return None
    return _zero_at(tensor.numpy(), zp, q_axis, axis, removed)


def zero_codes(node: ir.Node, axis: int, removed: np.ndarray) -> np.ndarray:
    """The integer codes of ``node`` with positions ``removed`` along ``axis`` set to their zero point.

    Dequantized they are exactly ``0.0``: the masked-equivalence oracle uses this to mask a
    quantized weight without leaving the quantized form (onnxruntime then runs the same
    integer kernels on the masked and on the pruned model).
    """
    x = _constant_input(node, 0)
    zp_value = node.inputs[2] if len(node.inputs) > 2 else None
    if zp_value is None or zp_value.const_value is None:
        return _zero_at(x, None, 0, axis, removed)
    q_axis, block = dequantize_params(node)
    return _zero_at(x, zp_value.const_value.numpy(), q_axis, axis, removed, block)


def _matmul_nbits_user(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1:
        return None
    node, index = uses[0].node, uses[0].idx
    if node.op_type != "MatMulNBits" or node.domain != "com.microsoft" or index != 1:
        return None
    return node


def matmul_nbits_dequantized(node: ir.Node) -> np.ndarray:
    """``B`` of a ``MatMulNBits`` node dequantized to ``[N, K/block, block]`` float32 (for scoring)."""
    bits = node.attributes.get_int("bits", 4)
    n = node.attributes.get_int("N")
    block = node.attributes.get_int("block_size")
    packed = np.asarray(_constant_input(node, 1), dtype=np.uint8)
    n_blocks = packed.shape[1]
    if bits == 4:
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, n_blocks, -1)[..., :block]
    else:
        q = packed.reshape(n, n_blocks, -1)[..., :block]
    q = q.astype(np.float32)
    scales = np.asarray(_constant_input(node, 2), dtype=np.float32).reshape(n, n_blocks)
    zp_value = node.inputs[3] if len(node.inputs) > 3 else None
    default = float(1 << (bits - 1))
    if zp_value is None or zp_value.const_value is None:
        zp = np.full((n, n_blocks), default, np.float32)
    else:
        raw = np.asarray(zp_value.const_value.numpy())
        if raw.dtype == np.uint8 and bits == 4:
            raw = raw.reshape(n, -1)
            zp = np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(n, -1)[:, :n_blocks].astype(np.float32)
        elif raw.dtype == np.uint8:
            zp = raw.reshape(n, n_blocks).astype(np.float32)
        else:  # float zero points: scores only need the magnitude pattern
            zp = np.full((n, n_blocks), default, np.float32)
    return ((q - zp[..., None]) * scales[..., None]).astype(np.float32)


def weight_array(value: ir.Value) -> np.ndarray:
    """The weight as float32: the initializer, or the dequantized codes.

    The packed ``B`` of a ``MatMulNBits`` node is dequantized to ``[N, K/block, block]``
    (its axes 0 and 1 are the slots rules couple; scores sum over the rest).
    """
    if value.const_value is not None:
        user = _matmul_nbits_user(value)
        if user is not None:
            return matmul_nbits_dequantized(user)
        params = qoperator_weight(value)
        if params is not None:
            scale, zp, q_axis = params
            x = np.asarray(value.const_value.numpy()).astype(np.float32)
            if zp is not None:
                x = x - _param(zp, x.ndim, q_axis, 0, x.shape).astype(np.float32)
            return (x * _param(scale, x.ndim, q_axis, 0, x.shape).astype(np.float32)).astype(np.float32)
        arr = np.asarray(value.const_value.numpy())
        return arr if arr.dtype == np.float32 else arr.astype(np.float32)
    node = dequantize_node(value)
    if node is None:
        raise ValueError(f"'{value.name}' is neither an initializer nor dequantized from constants")
    return dequantized(node)
