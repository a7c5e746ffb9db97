"""Which initializers are weights of linear ops, along which axis they reduce, and how they are quantized.

Patterns need the *reduction* axis (N:M groups run along it: input channels of
a Conv, ``K`` of a MatMul ``[K, N]``); criteria need real-valued magnitudes
(dequantized for int8/uint8 weights); storage needs the *fill* value that means
zero (the zero point of a quantized weight).  The weight is followed through
``Cast``/``Identity``/``DequantizeLinear`` to the op that consumes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..errors import Decline
from ..graph.linear import LINEAR_KINDS, LinearOp, linear_op
from ..graph.value_facts import constant

__all__ = ["QuantInfo", "WeightInfo", "contraction", "find_weights", "LINEAR_OPS"]

_PASS_THROUGH = {"Cast", "Identity"}


@dataclass(frozen=True)
class QuantInfo:
    """Scale and zero point of a quantized weight, broadcastable to its shape."""

    scale: np.ndarray | None
    zero_point: np.ndarray
    source: str

    def uniform_zero_point(self) -> np.ndarray | None:
        flat = self.zero_point.reshape(-1)
        if flat.size == 0:
            return None
        return flat[0].reshape(()) if np.all(flat == flat[0]) else None

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        real = raw.astype(np.float32) - self.zero_point.astype(np.float32)
        return real * self.scale.astype(np.float32) if self.scale is not None else real


@dataclass(frozen=True)
class WeightInfo:
    """One initializer and what it is to the ops that read it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    consumers: tuple[str, ...]
    #: reduction axis (non-negative) when every linear consumer agrees, else None
    in_axis: int | None
    out_axis: int | None
    #: why this is not a prunable linear weight (None = prunable)
    reason: str | None
    quant: QuantInfo | None = None
    is_graph_input: bool = False

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def fill(self, dtype: np.dtype) -> np.ndarray:
        """The value that means zero: the uniform zero point, else 0."""
        if self.quant is not None:
            zero_point = self.quant.uniform_zero_point()
            if zero_point is not None:
                return np.asarray(zero_point, dtype=dtype).reshape(())
        return np.zeros((), dtype=dtype)

    def real(self, raw: np.ndarray) -> np.ndarray:
        """Real-valued weights (dequantized when quantized) for criteria."""
        if self.quant is not None:
            return self.quant.dequantize(raw)
        return raw.astype(np.float32) if raw.dtype != np.float64 else raw


# --------------------------------------------------------------- consumer table


def contraction(node: ir.Node, index: int) -> LinearOp:
    """The float MatMul/Gemm/Conv ``node`` with weight ``index``, whose data activation has statistics.

    Raises :class:`Decline` for any other node or input.
    """
    if node.domain not in ("", "ai.onnx"):
        raise Decline(f"{node.domain}::{node.op_type} has no activation statistics")
    if node.op_type not in ("MatMul", "Gemm", "Conv") or index not in (0, 1):
        raise Decline(f"{node.op_type} (input {index}) has no activation statistics")
    return linear_op(node, index)


@dataclass(frozen=True)
class _Role:
    in_axis: int | None
    out_axis: int | None
    #: (scale input index, zero-point input index, per-channel axis) for integer ops
    quant: tuple[int | None, int | None, int] | None = None


def _linear(node: ir.Node, index: int, rank: int) -> _Role | None:
    try:
        op = linear_op(node, index, weight_rank=rank)
    except Decline:
        return None
    quant = None
    if op.quantized and op.out_axis is not None:
        quant = (op.scale_input, op.zero_point_input, op.out_axis)
    return _Role(op.in_axis, op.out_axis, quant)


def _rnn(node: ir.Node, index: int, rank: int) -> _Role | None:
    return _Role(2, 1) if index in (1, 2) and rank == 3 else None


#: op type -> role of an input; ``None`` when that input is not a weight.
LINEAR_OPS: dict[str, Callable[[ir.Node, int, int], _Role | None]] = {
    **{op: _linear for op in LINEAR_KINDS},
    "LSTM": _rnn,
    "GRU": _rnn,
    "RNN": _rnn,
}


def _const(node: ir.Node, index: int | None) -> np.ndarray | None:
    if index is None or index >= len(node.inputs) or node.inputs[index] is None:
        return None
    return constant(node.inputs[index])


def _broadcast(array: np.ndarray, rank: int, axis: int) -> np.ndarray:
    if array.ndim == 0 or array.size == 1:
        return array.reshape(())
    shape = [1] * rank
    shape[axis % rank] = array.size
    return array.reshape(shape)


def _uses(value: ir.Value, depth: int = 0) -> Iterator[tuple[ir.Node, int, QuantInfo | Decline | None]]:
    """(consumer, input index, quant info or the unsupported quantization's :class:`Decline`), through
    pass-through ops: every use is listed, so one use's quantization is a value, not a raise."""
    for node, index in value.uses():
        if node.domain in ("", "ai.onnx") and node.op_type in _PASS_THROUGH and index == 0 and depth < 4:
            yield from _uses(node.outputs[0], depth + 1)
        elif node.domain in ("", "ai.onnx") and node.op_type == "DequantizeLinear" and index == 0 and depth < 4:
            quant: QuantInfo | Decline
            try:
                quant = _dq_quant(node, value)
            except Decline as exc:
                quant = exc
            for inner, inner_index, _ in _uses(node.outputs[0], depth + 1):
                yield inner, inner_index, quant
        else:
            yield node, index, None


def _dq_quant(node: ir.Node, value: ir.Value) -> QuantInfo:
    """The quantization ``node`` applies to ``value``; declines for forms a fill value cannot describe."""
    rank = len(value.shape) if value.shape is not None else 0
    if node.attributes.get_int("block_size", 0):
        raise Decline("blocked DequantizeLinear is not supported")
    scale = _const(node, 1)
    if scale is None:
        raise Decline("DequantizeLinear scale is not a constant")
    raw = value.const_value.numpy() if value.const_value is not None else None
    zero = _const(node, 2)
    if zero is None:
        zero = np.zeros((), dtype=raw.dtype if raw is not None else np.int8)
    axis = node.attributes.get_int("axis", 1)
    return QuantInfo(_broadcast(scale, rank, axis), _broadcast(zero, rank, axis), f"DequantizeLinear:{node.name}")


def _dtype_name(dtype: ir.DataType) -> str:
    """numpy name (``float32``, ``bfloat16``) or the ONNX name for types numpy lacks (``int4``, ``string``)."""
    try:
        if dtype.itemsize >= 1:
            return np.dtype(dtype.numpy()).name
    except (TypeError, ValueError, AttributeError):
        pass
    return dtype.name.lower()


def _describe(node: ir.Node) -> str:
    return f"{node.op_type}:{node.name or '?'}"


def find_weights(model: ir.Model) -> list[WeightInfo]:
    """Every initializer of the main graph with its role (in graph order)."""
    graph = model.graph
    inputs = {id(v) for v in graph.inputs}
    out: list[WeightInfo] = []
    for name, value in graph.initializers.items():
        tensor = value.const_value
        if tensor is None:
            continue
        shape = tuple(tensor.shape.numpy())
        rank = len(shape)
        dtype = _dtype_name(tensor.dtype)
        roles: list[_Role] = []
        consumers: list[str] = []
        reasons: list[str] = []
        quant: QuantInfo | None = None
        for node, index, node_quant in _uses(value):
            consumers.append(_describe(node))
            rule = LINEAR_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            role = rule(node, index, rank) if rule is not None else None
            if role is None:
                why = f"as input {index}, not its weight" if rule is not None else "(not a linear op)"
                reasons.append(f"read by {node.op_type} {why}")
                continue
            if isinstance(node_quant, Decline):
                reasons.append(node_quant.reason)
                continue
            if node_quant is not None:
                quant = node_quant
            elif role.quant is not None:
                scale_index, zero_index, axis = role.quant
                scale = _const(node, scale_index)
                zero = _const(node, zero_index)
                if zero is None:
                    zero = np.zeros((), dtype=tensor.dtype.numpy())
                quant = QuantInfo(
                    _broadcast(scale, rank, axis) if scale is not None else None,
                    _broadcast(zero, rank, axis),
                    _describe(node),
                )
            roles.append(role)
        reason = None
        if not consumers:
            reason = "not read by any node"
        elif reasons:
            reason = reasons[0]
        elif quant is not None and quant.uniform_zero_point() is None:
            reason = "zero points differ per channel (pruned values would not share one fill value)"
        in_axes = {r.in_axis for r in roles}
        out_axes = {r.out_axis for r in roles}
        out.append(
            WeightInfo(
                name=name,
                shape=shape,
                dtype=dtype,
                consumers=tuple(consumers),
                in_axis=in_axes.pop() if len(in_axes) == 1 else None,
                out_axis=out_axes.pop() if len(out_axes) == 1 else None,
                reason=reason,
                quant=quant,
                is_graph_input=id(value) in inputs,
            )
        )
    return out
