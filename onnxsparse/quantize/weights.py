"""Find the quantized weights in a model, dequantize them, and check the zeros.

Pruned zeros must stay exact zeros.  Symmetric quantization maps 0 to code 0
and asymmetric quantization maps it to the (integer) zero point, so in theory
nothing changes; we do not assume it.  After every run, each quantized weight
is dequantized from the stored integers, scales and zero points exactly as the
consuming operator would (``DequantizeLinear``, ``QLinearConv``, ``QGemm``,
``ConvInteger``, ``MatMulInteger``, ``DynamicQuantizeMatMul``, the packed 4-bit
blocks of ``MatMulNBits``), compared with the float weight it came from, and
every violation is reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = [
    "QuantizedWeight",
    "ZeroCheck",
    "find_quantized_weights",
    "check_zeros",
    "unpack_nbits",
    "source_name",
]

#: Suffixes onnxruntime's quantizers append to the weight they quantize.
_SOURCE_SUFFIX = re.compile(r"(?:_quantized|_DQ_Q[248]|_Q[248])$")

_INT_TYPES = {
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
    onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
}


def source_name(quantized_name: str) -> str:
    """The float initializer a quantized initializer was made from (by onnxruntime's naming)."""
    return _SOURCE_SUFFIX.sub("", quantized_name)


@dataclass
class QuantizedWeight:
    """One quantized initializer with what it takes to dequantize it."""

    name: str
    source: str
    consumer: str
    consumer_op: str
    dtype: str
    shape: tuple[int, ...]
    values: np.ndarray = field(repr=False)  # float32, dequantized, in the source's orientation when known
    per_channel: bool = False
    block_size: int = 0


@dataclass
class ZeroCheck:
    """Result of comparing every quantized weight with the float weight it came from."""

    weights_checked: int = 0
    elements: int = 0
    zeros_before: int = 0
    zeros_kept: int = 0
    violations: list[dict] = field(default_factory=list)
    unmatched: list[dict] = field(default_factory=list)
    max_rel_error: float = 0.0

    @property
    def exact(self) -> bool:
        return self.zeros_kept == self.zeros_before and not self.violations

    def as_dict(self) -> dict:
        return {
            "exact": self.exact,
            "weights_checked": self.weights_checked,
            "elements": self.elements,
            "zeros_before": self.zeros_before,
            "zeros_kept": self.zeros_kept,
            "max_rel_error": self.max_rel_error,
            "violations": list(self.violations),
            "unmatched": list(self.unmatched),
        }


# --------------------------------------------------------------------------- helpers


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _input(node: onnx.NodeProto | None, index: int) -> str:
    return node.input[index] if node is not None and len(node.input) > index else ""


def unpack_nbits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unpack the low-bits-first codes of a uint8 array (last axis) into ``count`` codes."""
    packed = np.asarray(packed, dtype=np.uint8)
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per_byte)]
    codes = np.stack(parts, axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per_byte)
    return codes[..., :count].astype(np.int32)


def _broadcast(param: np.ndarray, q_shape: tuple[int, ...], axis: int, block_size: int = 0) -> np.ndarray:
    """Expand a scale/zero point to the weight's shape (per-tensor, per-axis or blocked)."""
    param = np.asarray(param)
    if param.size == 1:
        return param.reshape(())
    ndim = len(q_shape)
    axis = axis % ndim
    if block_size:
        return np.repeat(param, block_size, axis=axis).take(np.arange(q_shape[axis]), axis=axis)
    shape = [1] * ndim
    shape[axis] = param.size
    return param.reshape(shape)


def _dequant(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int, block_size: int = 0) -> np.ndarray:
    q = q.astype(np.int64)
    s = _broadcast(scale.astype(np.float32), q.shape, axis, block_size)
    z = 0 if zp is None else _broadcast(zp.astype(np.int64), q.shape, axis, block_size)
    return ((q - z).astype(np.float32) * s).astype(np.float32)


def _per_axis(scale: np.ndarray) -> bool:
    return np.asarray(scale).size > 1


# --------------------------------------------------------------------------- discovery


def find_quantized_weights(model: onnx.ModelProto) -> tuple[list[QuantizedWeight], list[dict]]:
    """Dequantize every integer initializer a quantized operator consumes.

    Returns the weights and a list of integer initializers we could not
    interpret (with the reason), so nothing is silently left unchecked.
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def arr(name: str) -> np.ndarray | None:
        if not name or name not in inits:
            return None
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    found: list[QuantizedWeight] = []
    skipped: list[dict] = []
    seen: set[str] = set()

    def add(name: str, node: onnx.NodeProto, values: np.ndarray, *, per_channel: bool, block: int = 0,
            shape: tuple[int, ...] | None = None) -> None:
        seen.add(name)
        init = inits[name]
        found.append(
            QuantizedWeight(
                name=name,
                source=source_name(name),
                consumer=node.name,
                consumer_op=node.op_type,
                dtype=onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
                if init.data_type not in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
                else onnx.TensorProto.DataType.Name(init.data_type).lower(),
                shape=tuple(shape if shape is not None else init.dims),
                values=values,
                per_channel=per_channel,
                block_size=block,
            )
        )

    for node in graph.node:
        op, a = node.op_type, _attrs(node)
        if op == "DequantizeLinear" and _input(node, 0) in inits:
            name = node.input[0]
            q, scale, zp = arr(name), arr(_input(node, 1)), arr(_input(node, 2))
            if scale is None:
                skipped.append({"initializer": name, "reason": f"{node.name}: scale is not a constant"})
                continue
            block = int(a.get("block_size", 0))
            axis = int(a.get("axis", 1))
            add(name, node, _dequant(q, scale, zp, axis, block), per_channel=_per_axis(scale) and not block, block=block)
        elif op == "MatMulNBits":
            name = _input(node, 1)
            if name not in inits:
                continue
            k, n, bits, block = int(a["K"]), int(a["N"]), int(a.get("bits", 4)), int(a["block_size"])
            k_blocks = (k + block - 1) // block
            packed = arr(name).reshape(n, k_blocks, -1)
            codes = unpack_nbits(packed, bits, block)  # [N, k_blocks, block]
            scales = arr(_input(node, 2)).astype(np.float32).reshape(n, k_blocks)
            zp_name = _input(node, 3)
            if zp_name and zp_name in inits:
                zps = arr(zp_name)
                if zps.dtype == np.uint8:
                    zero = unpack_nbits(zps.reshape(n, -1), bits, k_blocks)
                else:  # float zero points: w = q * scale - zp (not written by our quantizer)
                    skipped.append({"initializer": name, "reason": f"{node.name}: float zero points not supported"})
                    continue
            else:
                zero = np.full((n, k_blocks), 1 << (bits - 1), dtype=np.int32)
            if len(node.input) > 4 and _input(node, 4):
                skipped.append({"initializer": name, "reason": f"{node.name}: g_idx (act-order) not supported"})
                continue
            deq = (codes - zero[:, :, None]).astype(np.float32) * scales[:, :, None]
            values = deq.reshape(n, k_blocks * block)[:, :k].T  # [K, N] like MatMul's B
            add(name, node, np.ascontiguousarray(values), per_channel=False, block=block, shape=(k, n))
        elif op in ("QLinearConv", "QLinearMatMul", "QGemm"):
            name, scale, zp = _input(node, 3), arr(_input(node, 4)), arr(_input(node, 5))
            if name in inits and scale is not None:
                q = arr(name)
                axis = 0 if op == "QLinearConv" or (op == "QGemm" and a.get("transB", 0)) else q.ndim - 1
                add(name, node, _dequant(q, scale, zp, axis), per_channel=_per_axis(scale))
            bias = _input(node, 8) if op == "QLinearConv" else (_input(node, 6) if op == "QGemm" else "")
            if bias in inits and inits[bias].data_type == onnx.TensorProto.INT32:
                x_scale = arr(_input(node, 1))
                if x_scale is not None and scale is not None:
                    add(bias, node, _dequant(arr(bias), (x_scale * scale).reshape(-1), None, 0),
                        per_channel=_per_axis(scale))
        elif op in ("QLinearAdd", "QLinearMul"):
            # (A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp): either operand may be a constant.
            for data, scale_i, zp_i in ((0, 1, 2), (3, 4, 5)):
                name, scale = _input(node, data), arr(_input(node, scale_i))
                if name in inits and scale is not None:
                    add(name, node, _dequant(arr(name), scale, arr(_input(node, zp_i)), 0), per_channel=False)
        elif op == "Gather" and _input(node, 0) in inits and inits[_input(node, 0)].data_type in _INT_TYPES:
            # Quantized embedding table: the DequantizeLinear after the Gather holds scale and zero point.
            name = node.input[0]
            dq = next((n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0]), None)
            scale = arr(_input(dq, 1)) if dq is not None else None
            if scale is None or _per_axis(scale):
                skipped.append({"initializer": name, "reason": f"{node.name}: no per-tensor DequantizeLinear after Gather"})
                continue
            add(name, node, _dequant(arr(name), scale, arr(_input(dq, 2)), 0), per_channel=False)
        elif op == "QAttention" and _input(node, 1) in inits:
            # (input, weight, bias, input_scale, weight_scale, mask_index, input_zero_point, weight_zero_point, past)
            name, scale = node.input[1], arr(_input(node, 4))
            if scale is not None:
                q = arr(name)
                add(name, node, _dequant(q, scale, arr(_input(node, 7)), q.ndim - 1), per_channel=_per_axis(scale))
        elif op == "DynamicQuantizeLSTM":
            # W/R stored [directions, in, 4*hidden] (transposed); scales [directions] or [directions, 4*hidden].
            for data, scale_i, zp_i in ((1, 8, 9), (2, 10, 11)):
                name, scale = _input(node, data), arr(_input(node, scale_i))
                if name not in inits or scale is None:
                    continue
                q = arr(name).astype(np.int64)
                zp = arr(_input(node, zp_i))
                shape = (q.shape[0], 1, q.shape[2] if scale.ndim == 2 else 1)
                s_b = scale.astype(np.float32).reshape(shape)
                z_b = 0 if zp is None else zp.astype(np.int64).reshape(shape)
                values = ((q - z_b).astype(np.float32) * s_b).transpose(0, 2, 1)  # back to ONNX LSTM layout
                add(name, node, np.ascontiguousarray(values), per_channel=scale.ndim == 2, shape=values.shape)
        elif op in ("ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"):
            name = _input(node, 1)
            if name not in inits:
                continue
            q = arr(name)
            if op == "DynamicQuantizeMatMul":
                scale, zp = arr(_input(node, 2)), arr(_input(node, 3))
            else:
                # The scale is applied by a Mul after the integer op; onnxruntime names it <weight>_scale.
                scale, zp = arr(source_name(name) + "_scale"), arr(_input(node, 3))
            if scale is None:
                skipped.append({"initializer": name, "reason": f"{node.name}: cannot find the weight scale"})
                continue
            axis = 0 if op == "ConvInteger" else q.ndim - 1
            add(name, node, _dequant(q, scale, zp, axis), per_channel=_per_axis(scale))
    for name, init in inits.items():
        if name not in seen and init.data_type in _INT_TYPES and _SOURCE_SUFFIX.search(name):
            skipped.append({"initializer": name, "reason": "consumed by an operator we do not dequantize"})
    return found, skipped


def _align(values: np.ndarray, source: np.ndarray) -> np.ndarray | None:
    """``values`` in ``source``'s shape (Gemm weights get transposed; unit dims squeezed).

    A square Gemm weight fits both ways: onnxruntime's dynamic quantizer rewrites
    ``Gemm(transB=1)`` as a MatMul on the transposed weight, so the orientation
    closer to the source is taken (the other one is off by whole weights).
    """
    if values.ndim == 2 and values.shape == source.shape and values.shape[0] == values.shape[1]:
        straight = float(np.max(np.abs(values - source))) if values.size else 0.0
        crossed = float(np.max(np.abs(values.T - source))) if values.size else 0.0
        return values.T if crossed < straight else values
    if values.shape == source.shape:
        return values
    if values.ndim == 2 and values.T.shape == source.shape:
        return values.T
    squeezed = source.reshape([d for d in source.shape if d != 1] or [1])
    if values.size == source.size and values.reshape(squeezed.shape).shape == squeezed.shape:
        if values.shape == squeezed.shape:
            return values.reshape(source.shape)
        if values.ndim == 2 and values.T.shape == squeezed.shape:
            return values.T.reshape(source.shape)
    return None


def check_zeros(before: onnx.ModelProto, after: onnx.ModelProto, *, limit: int = 20) -> ZeroCheck:
    """Compare the zeros of every quantized weight in ``after`` with its float source in ``before``."""
    sources = {init.name: init for init in before.graph.initializer}
    weights, skipped = find_quantized_weights(after)
    result = ZeroCheck(unmatched=list(skipped))
    for weight in weights:
        init = sources.get(weight.source)
        if init is None or init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                   onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE):
            result.unmatched.append({"initializer": weight.name, "reason": f"no float source {weight.source!r}"})
            continue
        source = numpy_helper.to_array(init).astype(np.float32)
        values = _align(weight.values, source)
        if values is None:
            result.unmatched.append({
                "initializer": weight.name,
                "reason": f"shape {list(weight.values.shape)} does not match source {list(source.shape)}",
            })
            continue
        zeros = source == 0
        kept = int(np.count_nonzero(values[zeros] == 0))
        before_count = int(np.count_nonzero(zeros))
        result.weights_checked += 1
        result.elements += int(source.size)
        result.zeros_before += before_count
        result.zeros_kept += kept
        peak = float(np.max(np.abs(source))) if source.size else 0.0
        if peak > 0:
            result.max_rel_error = max(result.max_rel_error, float(np.max(np.abs(values - source))) / peak)
        if kept != before_count and len(result.violations) < limit:
            worst = float(np.max(np.abs(values[zeros])))
            result.violations.append({
                "weight": weight.source,
                "quantized": weight.name,
                "consumer": weight.consumer,
                "zeros": before_count,
                "kept": kept,
                "largest_value_at_a_zero": worst,
            })
    return result


def quantized_dtypes(weights: Iterable[QuantizedWeight]) -> dict[str, str]:
    """Map source weight name -> stored dtype (for the report)."""
    return {w.source: w.dtype for w in weights}
