"""Find the quantized weights in a model, dequantize them, and check the zeros.

Pruned zeros must stay exact zeros.  Symmetric quantization maps 0 to code 0
and asymmetric quantization maps it to the (integer) zero point, so in theory
nothing changes; we do not assume it.  After every run, each quantized weight
is dequantized from the stored integers, scales and zero points exactly as the
consuming operator would (``DequantizeLinear``, ``QLinearConv``, ``QGemm``,
``ConvInteger``, ``MatMulInteger``, ``DynamicQuantizeMatMul``, the packed 4-bit
blocks of ``MatMulNBits``), compared with the float weight it came from, and
every violation is reported.

Nothing here reads the names a quantizer gives (onnxruntime 1.32 renamed what
its dynamic quantizer writes).  A quantized weight is found by the operator
that consumes it, its scale and zero point by that operator's inputs (for
``ConvInteger``/``MatMulInteger``, by the ``Mul`` that rescales the integer
result).  The float weight it came from is found by following the quantized
node's output to the node of the float model that wrote the same tensor, or,
where the chain stays quantized (QOperator), by value: the float initializer of
the same size the dequantized values lie within one quantization step of.  A
weight neither way explains is reported as unverified, by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import Decline
from ..graph.linear import linear_op_proto

__all__ = [
    "QuantizedWeight",
    "ZeroCheck",
    "find_quantized_weights",
    "check_zeros",
    "unpack_nbits",
    "match_sources",
]

_INT_TYPES = {
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
    onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
}
#: Integer element types a weight (not a bias or zero point) is stored in.
_WEIGHT_INT_TYPES = _INT_TYPES - {onnx.TensorProto.INT32}
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)

#: Inputs that hold scales and zero points (which can be 2-D: blocked, per-channel LSTM), not weights.
_PARAMETER_INPUTS = {
    "DequantizeLinear": lambda node: node.input[1:],
    "MatMulNBits": lambda node: node.input[2:],
    "DynamicQuantizeLSTM": lambda node: node.input[8:12],
}

#: Ops between a quantized operator and the float tensor it stands in for (rescale, bias, layout).
_PASS_THROUGH = {"Cast", "Mul", "Add", "DequantizeLinear", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
#: How far to follow that chain (Gemm: MatMulInteger -> Cast -> Mul -> Add).
_MAX_HOPS = 5


@dataclass
class QuantizedWeight:
    """One quantized initializer with what it takes to dequantize it.

    ``step`` is the largest quantization step (scale) used for it: a correctly
    quantized weight lies within one step of its float source.  ``source`` is
    filled in by :func:`check_zeros` once the float weight is known.
    """

    name: str
    consumer: str
    consumer_op: str
    dtype: str
    shape: tuple[int, ...]
    values: np.ndarray = field(repr=False)  # float32, dequantized, in the source's orientation when known; empty once check_zeros compared it
    step: float = 0.0
    per_channel: bool = False
    block_size: int = 0
    source: str | None = None


@dataclass
class ZeroCheck:
    """Result of comparing every quantized weight with the float weight it came from.

    ``exact``: every zero checked stayed zero; ``verified``: every quantized
    weight could be checked.  Only both together (``passed``) keep the promise.
    """

    weights_checked: int = 0
    elements: int = 0
    zeros_before: int = 0
    zeros_kept: int = 0
    violations: list[dict] = field(default_factory=list)
    unmatched: list[dict] = field(default_factory=list)
    max_rel_error: float = 0.0
    #: tied to their sources; their ``values`` are released once checked (issue 16: a model's size in float32)
    weights: list[QuantizedWeight] = field(default_factory=list, repr=False)

    @property
    def exact(self) -> bool:
        return self.zeros_kept == self.zeros_before and not self.violations

    @property
    def verified(self) -> bool:
        return not self.unmatched

    @property
    def passed(self) -> bool:
        return self.exact and self.verified

    def failure(self) -> str | None:
        """One line naming what broke the promise, or None."""
        parts = []
        if not self.exact:
            names = ", ".join(v["weight"] for v in self.violations[:5])
            parts.append(f"{self.zeros_before - self.zeros_kept} pruned zero(s) are no longer exact zeros ({names})")
        if self.unmatched:
            first = self.unmatched[0]
            more = f" and {len(self.unmatched) - 1} more" if len(self.unmatched) > 1 else ""
            parts.append(
                f"{len(self.unmatched)} quantized weight(s) could not be verified: "
                f"{first['initializer']!r} ({first['reason']}){more}"
            )
        return "; ".join(parts) or None

    def as_dict(self) -> dict:
        return {
            "exact": self.exact,
            "verified": self.verified,
            "passed": self.passed,
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
    s = _broadcast(scale.astype(np.float32), q.shape, axis, block_size)
    if q.dtype.kind in "iu" and q.dtype.itemsize <= 2 and (zp is None or (zp.dtype.kind in "iu" and zp.dtype.itemsize <= 2)):
        # 8/16-bit codes and zero points subtract exactly in float32: one array of the weight's size, not
        # three int64 ones (issue 16), and the same values as the int64 path below.
        out = q.astype(np.float32)
        if zp is not None:
            out -= _broadcast(zp.astype(np.float32), q.shape, axis, block_size)
        out *= s
        return out
    q = q.astype(np.int64)
    z = 0 if zp is None else _broadcast(zp.astype(np.int64), q.shape, axis, block_size)
    return ((q - z).astype(np.float32) * s).astype(np.float32)


def _per_axis(scale: np.ndarray) -> bool:
    return np.asarray(scale).size > 1


def _step(scale: np.ndarray) -> float:
    scale = np.abs(np.asarray(scale, dtype=np.float64))
    return float(scale.max()) if scale.size else 0.0


class _Graph:
    """Initializers (decoded once), producers and consumers of one graph."""

    def __init__(self, graph: onnx.GraphProto, base_dir: str = "") -> None:
        self.inits = {init.name: init for init in graph.initializer}
        self.base_dir = base_dir  # where external weights are read from, one at a time
        self.nodes = list(graph.node)
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray | None:
        if not name or name not in self.inits:
            return None
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.inits[name], self.base_dir)
        return self._arrays[name]

    def forget_large(self, nbytes: int = 1 << 24) -> None:
        """Drop decoded arrays of ``nbytes`` or more (issue 16: they add up to the whole model)."""
        self._arrays = {k: v for k, v in self._arrays.items() if v.nbytes < nbytes}

    def init_array(self, name: str) -> np.ndarray:
        """The array of ``name``, which the caller has checked is an initializer."""
        found = self.array(name)
        if found is None:
            raise KeyError(f"{name!r} is not an initializer")
        return found

    def is_float_init(self, name: str) -> bool:
        return name in self.inits and self.inits[name].data_type in _FLOAT_TYPES

    def downstream(self, node: onnx.NodeProto, ops: set[str], hops: int) -> Iterable[tuple[str, onnx.NodeProto]]:
        """(tensor, its consumer) pairs reachable from ``node`` through ``ops`` (breadth first)."""
        frontier, seen = list(node.output), set(node.output)
        for _ in range(hops):
            nxt: list[str] = []
            for tensor in frontier:
                for consumer in self.consumers.get(tensor, []):
                    yield tensor, consumer
                    if consumer.op_type in ops:
                        for out in consumer.output:
                            if out and out not in seen:
                                seen.add(out)
                                nxt.append(out)
            frontier = nxt


def _rescale(g: _Graph, node: onnx.NodeProto) -> tuple[np.ndarray | None, str]:
    """The weight scale an integer op's result is multiplied by, read off the graph.

    onnxruntime writes ``ConvInteger/MatMulInteger -> Cast -> Mul(·, s)`` with
    ``s = Mul(activation scale, weight scale)`` (dynamic) or the weight scale
    itself; the weight scale is the constant factor.
    """
    for tensor, consumer in g.downstream(node, {"Cast"}, 3):
        if consumer.op_type != "Mul":
            continue
        other = consumer.input[1] if consumer.input[0] == tensor else consumer.input[0]
        if other in g.inits:
            return g.array(other), ""
        factors = g.producer.get(other)
        if factors is not None and factors.op_type == "Mul":
            constant = [name for name in factors.input if name in g.inits]
            if len(constant) == 1:
                return g.array(constant[0]), ""
            return None, f"{node.name}: the rescale Mul {factors.name!r} has {len(constant)} constant factors"
        return None, f"{node.name}: the rescale Mul {consumer.name!r} has no constant weight scale"
    return None, f"{node.name}: no Mul rescales its integer result"


# --------------------------------------------------------------------------- discovery


def _dtype_name(init: onnx.TensorProto) -> str:
    if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return onnx.TensorProto.DataType.Name(init.data_type).lower()
    return onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name


def find_quantized_weights(model: onnx.ModelProto) -> tuple[list[QuantizedWeight], list[dict]]:
    """Dequantize every integer initializer a quantized operator consumes.

    Returns the weights and a list of integer weight initializers we could not
    interpret (with the reason), so nothing is silently left unchecked.
    """
    g = _Graph(model.graph)
    arr = g.array
    found: list[QuantizedWeight] = []
    skipped: list[dict] = []
    seen: set[str] = set()

    def add(name: str, node: onnx.NodeProto, values: np.ndarray, scale: np.ndarray, *, per_channel: bool,
            block: int = 0, shape: tuple[int, ...] | None = None) -> None:
        seen.add(name)
        init = g.inits[name]
        found.append(
            QuantizedWeight(
                name=name, consumer=node.name, consumer_op=node.op_type, dtype=_dtype_name(init),
                shape=tuple(shape if shape is not None else init.dims), values=values, step=_step(scale),
                per_channel=per_channel, block_size=block,
            )
        )

    def skip(name: str, reason: str) -> None:
        seen.add(name)
        skipped.append({"initializer": name, "reason": reason})

    for node in g.nodes:
        op, a = node.op_type, _attrs(node)
        seen.update(_PARAMETER_INPUTS.get(op, lambda n: ())(node))  # scales, zero points (2-D when blocked)
        if op == "DequantizeLinear" and _input(node, 0) in g.inits:
            name = node.input[0]
            q, scale, zp = g.init_array(name), arr(_input(node, 1)), arr(_input(node, 2))
            if scale is None:
                skip(name, f"{node.name}: scale is not a constant")
                continue
            block = int(a.get("block_size", 0))
            axis = int(a.get("axis", 1))
            add(name, node, _dequant(q, scale, zp, axis, block), scale, per_channel=_per_axis(scale) and not block,
                block=block)
        elif op == "MatMulNBits":
            name = _input(node, 1)
            if name not in g.inits:
                continue
            k, n, bits, block = int(a["K"]), int(a["N"]), int(a.get("bits", 4)), int(a["block_size"])
            k_blocks = (k + block - 1) // block
            packed = g.init_array(name).reshape(n, k_blocks, -1)
            codes = unpack_nbits(packed, bits, block)  # [N, k_blocks, block]
            scale_values = arr(_input(node, 2))
            if scale_values is None:
                skip(name, f"{node.name}: scales are not a constant")
                continue
            scales = scale_values.astype(np.float32).reshape(n, k_blocks)
            zp_name = _input(node, 3)
            if zp_name and zp_name in g.inits:
                zps = g.init_array(zp_name)
                if zps.dtype != np.uint8:  # float zero points: w = q * scale - zp (not written by our quantizer)
                    skip(name, f"{node.name}: float zero points not supported")
                    continue
                zero = unpack_nbits(zps.reshape(n, -1), bits, k_blocks)
            else:
                zero = np.full((n, k_blocks), 1 << (bits - 1), dtype=np.int32)
            if len(node.input) > 4 and _input(node, 4):
                skip(name, f"{node.name}: g_idx (act-order) not supported")
                continue
            deq = (codes - zero[:, :, None]).astype(np.float32) * scales[:, :, None]
            values = deq.reshape(n, k_blocks * block)[:, :k].T  # [K, N] like MatMul's B
            add(name, node, np.ascontiguousarray(values), scales, per_channel=False, block=block, shape=(k, n))
        elif op in ("QLinearConv", "QLinearMatMul", "QGemm"):
            try:
                view = linear_op_proto(node, inits=g.inits)
            except Decline as exc:  # e.g. a QGemm outside com.microsoft
                skip(_input(node, 3), f"{node.name}: {exc}")
                continue
            assert view.scale_input is not None and view.zero_point_input is not None  # every QLinear form has both
            name = _input(node, view.weight_input)
            scale, zp = arr(_input(node, view.scale_input)), arr(_input(node, view.zero_point_input))
            if name in g.inits and scale is not None:
                axis = view.out_axis if view.out_axis is not None else 0  # per output channel (none: 1-D [K])
                add(name, node, _dequant(g.init_array(name), scale, zp, axis), scale, per_channel=_per_axis(scale))
            bias = _input(node, view.bias_input) if view.bias_input is not None else ""
            if bias in g.inits and g.inits[bias].data_type == onnx.TensorProto.INT32:
                x_scale = arr(_input(node, 1))
                if x_scale is not None and scale is not None:
                    bias_scale = (x_scale * scale).reshape(-1)
                    add(bias, node, _dequant(g.init_array(bias), bias_scale, None, 0), bias_scale, per_channel=_per_axis(scale))
        elif op in ("QLinearAdd", "QLinearMul"):
            # (A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp): either operand may be a constant.
            for data, scale_i, zp_i in ((0, 1, 2), (3, 4, 5)):
                name, scale = _input(node, data), arr(_input(node, scale_i))
                if name in g.inits and scale is not None:
                    add(name, node, _dequant(g.init_array(name), scale, arr(_input(node, zp_i)), 0), scale, per_channel=False)
        elif op == "Gather" and _input(node, 0) in g.inits and g.inits[_input(node, 0)].data_type in _INT_TYPES:
            # Quantized embedding table: the DequantizeLinear after the Gather holds scale and zero point.
            name = node.input[0]
            dq = next((c for c in g.consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"), None)
            scale = arr(_input(dq, 1)) if dq is not None else None
            if scale is None or _per_axis(scale):
                skip(name, f"{node.name}: no per-tensor DequantizeLinear after Gather")
                continue
            add(name, node, _dequant(g.init_array(name), scale, arr(_input(dq, 2)), 0), scale, per_channel=False)
        elif op == "QAttention" and _input(node, 1) in g.inits:
            # (input, weight, bias, input_scale, weight_scale, mask_index, input_zero_point, weight_zero_point, past)
            name, scale = node.input[1], arr(_input(node, 4))
            if scale is not None:
                q = g.init_array(name)
                add(name, node, _dequant(q, scale, arr(_input(node, 7)), q.ndim - 1), scale,
                    per_channel=_per_axis(scale))
        elif op == "DynamicQuantizeLSTM":
            # W/R stored [directions, in, 4*hidden] (transposed); scales [directions] or [directions, 4*hidden].
            for data, scale_i, zp_i in ((1, 8, 9), (2, 10, 11)):
                name, scale = _input(node, data), arr(_input(node, scale_i))
                if name not in g.inits or scale is None:
                    continue
                q = g.init_array(name).astype(np.int64)
                zp = arr(_input(node, zp_i))
                shape = (q.shape[0], 1, q.shape[2] if scale.ndim == 2 else 1)
                s_b = scale.astype(np.float32).reshape(shape)
                z_b = 0 if zp is None else zp.astype(np.int64).reshape(shape)
                values = ((q - z_b).astype(np.float32) * s_b).transpose(0, 2, 1)  # back to ONNX LSTM layout
                add(name, node, np.ascontiguousarray(values), scale, per_channel=scale.ndim == 2, shape=values.shape)
        elif op in ("ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"):
            name = _input(node, 1)
            if name not in g.inits:
                continue
            q = g.init_array(name)
            if op == "DynamicQuantizeMatMul":
                scale, zp, why = arr(_input(node, 2)), arr(_input(node, 3)), f"{node.name}: B_scale is not a constant"
            else:
                (scale, why), zp = _rescale(g, node), arr(_input(node, 3))
            if scale is None:
                skip(name, why)
                continue
            axis = 0 if op == "ConvInteger" else q.ndim - 1
            add(name, node, _dequant(q, scale, zp, axis), scale, per_channel=_per_axis(scale))
    for name, init in g.inits.items():
        if name in seen or init.data_type not in _WEIGHT_INT_TYPES or len(init.dims) < 2:
            continue
        users = g.consumers.get(name, [])
        if users:
            ops = ", ".join(sorted({f"{u.op_type} {u.name!r}" for u in users}))
            skipped.append({"initializer": name, "reason": f"consumed by {ops}, which we do not dequantize"})
    return found, skipped


# --------------------------------------------------------------------------- sources


def _structural_candidates(before: _Graph, after: _Graph, weight: QuantizedWeight) -> list[str]:
    """Float initializers of ``before`` (of the weight's size) read by the node the quantized one stands in for."""
    consumer = next((n for n in after.consumers.get(weight.name, []) if n.name == weight.consumer), None)
    if consumer is None:
        return []
    names: list[str] = []
    if consumer.op_type == "DequantizeLinear":
        # QDQ keeps the float node: it reads the dequantized weight where it read the float one.
        dequantized = consumer.output[0]
        for user in after.consumers.get(dequantized, []):
            original = before.producer.get(user.output[0]) if user.output else None
            if original is not None and original.op_type == user.op_type:
                names += [original.input[i] for i, name in enumerate(user.input)
                          if name == dequantized and i < len(original.input)]
    for tensor in _reached(before, after, consumer):
        names += list(before.producer[tensor].input)
    size = weight.values.size
    return [n for n in dict.fromkeys(names) if before.is_float_init(n) and int(np.prod(before.inits[n].dims)) == size]


def _reached(before: _Graph, after: _Graph, consumer: onnx.NodeProto) -> list[str]:
    """Tensors of the float model the quantized node writes, directly or through rescale/bias/layout ops."""
    found: list[str] = []
    frontier = [t for t in consumer.output if t]
    for _ in range(_MAX_HOPS):
        nxt: list[str] = []
        for tensor in frontier:
            if tensor in before.producer:
                found.append(tensor)
                continue
            nxt += [out for user in after.consumers.get(tensor, []) if user.op_type in _PASS_THROUGH
                    for out in user.output if out]
        frontier = nxt
    return found


#: A float weight is a quantized weight's source when at most this fraction of its elements lie more than
#: one quantization step away (so a corrupted zero is reported as a violation, not as "no source").
_MISMATCH_ALLOWED = 0.01


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a - b|`` with one temporary instead of two (issue 16: weights can be a model's size)."""
    diff = np.asarray(np.subtract(a, b))  # 0-d operands give a scalar
    return np.abs(diff, out=diff)


def _closest(before: _Graph, weight: QuantizedWeight, names: list[str]) -> tuple[str | None, np.ndarray | None, int]:
    """The candidate with the fewest elements off by more than one step, aligned to it, and that count."""
    tolerance = weight.step * (1 + 1e-3) + 1e-7
    best: tuple[str | None, np.ndarray | None, int] = (None, None, weight.values.size + 1)
    for name in names:
        source = before.init_array(name).astype(np.float32, copy=False)  # the cached array, not a copy
        values = _align(weight.values, source)
        if values is None:
            continue
        if source.ndim:  # a strided sample first: most candidates differ everywhere
            probe = np.linspace(0, source.size - 1, num=min(source.size, 256)).astype(np.int64)
            where = np.unravel_index(probe, source.shape)
            if np.mean(np.abs(values[where] - source[where]) > tolerance) > 0.5:
                continue
        off = int(np.count_nonzero(_abs_diff(values, source) > tolerance))
        if off < best[2]:
            best = (name, values, off)
    return best


def _align(values: np.ndarray, source: np.ndarray) -> np.ndarray | None:
    """``values`` in ``source``'s shape (Gemm weights get transposed; unit dims squeezed).

    A square Gemm weight fits both ways: onnxruntime's dynamic quantizer rewrites
    ``Gemm(transB=1)`` as a MatMul on the transposed weight, so the orientation
    closer to the source is taken (the other one is off by whole weights).
    """
    if values.ndim == 2 and values.shape == source.shape and values.shape[0] == values.shape[1]:
        straight = float(np.max(_abs_diff(values, source))) if values.size else 0.0
        crossed = float(np.max(_abs_diff(values.T, source))) if values.size else 0.0
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


def match_sources(before: onnx.ModelProto, after: onnx.ModelProto,
                  weights: list[QuantizedWeight], *, base_dir: str = "") -> list[dict]:
    """Set ``source`` (and orient ``values`` like it) for each weight; return the ones left unmatched.

    Structure first (the float node the quantized one stands in for), then
    value among all float initializers of the same size; either way the
    dequantized values must lie within one quantization step of the source.
    """
    b, a = _Graph(before.graph, base_dir), _Graph(after.graph)
    by_size: dict[int, list[str]] = {}
    for name, init in b.inits.items():
        if init.data_type in _FLOAT_TYPES:
            by_size.setdefault(int(np.prod(init.dims)), []).append(name)
    unmatched: list[dict] = []
    for weight in weights:
        b.forget_large()  # the previous weight's sources: a model's worth of float arrays otherwise
        allowed = int(_MISMATCH_ALLOWED * weight.values.size)
        name, values, off = _closest(b, weight, _structural_candidates(b, a, weight))
        if name is None or off > allowed:
            name, values, off = _closest(b, weight, by_size.get(weight.values.size, []))
        if name is None or values is None or off > allowed:
            near = f"; closest float weight {name!r} has {off} elements further off" if name is not None else ""
            unmatched.append({
                "initializer": weight.name,
                "reason": f"no float weight of {weight.values.size} elements lies within one quantization step "
                          f"({weight.step:.3g}) of its dequantized values{near}",
            })
            continue
        weight.source, weight.values = name, values
    return unmatched


#: what a checked weight's ``values`` become: the report needs only its name, source and consumer
_RELEASED = np.empty(0, dtype=np.float32)
_RELEASED.flags.writeable = False


def check_zeros(before: onnx.ModelProto, after: onnx.ModelProto, *, limit: int = 20, base_dir: str = "") -> ZeroCheck:
    """Compare the zeros of every quantized weight in ``after`` with its float source in ``before``.

    ``before`` may keep its weights in external data under ``base_dir``: they are read one at a time
    (issue 16: never the whole float model in memory for the check).
    """
    weights, skipped = find_quantized_weights(after)
    result = ZeroCheck(unmatched=list(skipped))
    result.unmatched += match_sources(before, after, weights, base_dir=base_dir)
    result.weights = [w for w in weights if w.source is not None]
    arrays = {init.name: init for init in before.graph.initializer}
    for weight in weights:
        if weight.source is None:
            continue
        source = numpy_helper.to_array(arrays[weight.source], base_dir).astype(np.float32, copy=False)
        values = weight.values
        zeros = source == 0
        kept = int(np.count_nonzero(values[zeros] == 0))
        before_count = int(np.count_nonzero(zeros))
        result.weights_checked += 1
        result.elements += int(source.size)
        result.zeros_before += before_count
        result.zeros_kept += kept
        peak = float(np.max(np.abs(source))) if source.size else 0.0
        if peak > 0:
            result.max_rel_error = max(result.max_rel_error, float(np.max(_abs_diff(values, source))) / peak)
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
        weight.values = _RELEASED
        del source, values, zeros
    return result


def quantized_dtypes(weights: Iterable[QuantizedWeight]) -> dict[str, str]:
    """Map source weight name -> stored dtype (for the report); weights without a known source are left out."""
    return {w.source: w.dtype for w in weights if w.source is not None}
