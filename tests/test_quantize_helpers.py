"""Models, pruning and an independent dequantizer for the quantization tests.

The dequantizer here deliberately does not use ``onnxsparse.quantize.weights``:
it reads the stored integers, scales and zero points per the operator specs
(ONNX ``DequantizeLinear``, ``QLinearConv``/``QGemm``/``QLinearMatMul``,
``ConvInteger``/``MatMulInteger`` + scale ``Mul``, and the packed nibbles of
``com.microsoft.MatMulNBits``), so the library's zero check is tested
against a second implementation.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17



def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def mlp_model(seed: int = 0) -> onnx.ModelProto:
    """MatMul+Add, Gemm(transB=1), MatMul; every weight non-square so transposes are visible."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((48, 96)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((40, 96)).astype(np.float32) * 0.2  # Gemm transB: [N, K]
    w3 = rng.standard_normal((40, 24)).astype(np.float32) * 0.2
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
        helper.make_node("Relu", ["h1b"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], name="fc2", transB=1),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("MatMul", ["a2", "w3"], ["y"], name="fc3"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 24])],
        [
            _init("w1", w1), _init("b1", rng.standard_normal(96).astype(np.float32) * 0.1),
            _init("w2", w2), _init("b2", rng.standard_normal(40).astype(np.float32) * 0.1),
            _init("w3", w3),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def cnn_model(seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm(transB=1)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "c1", "cb1"], ["h1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "c2", "cb2"], ["h2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["a2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [
            _init("c1", rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3),
            _init("cb1", rng.standard_normal(16).astype(np.float32) * 0.1),
            _init("c2", rng.standard_normal((24, 16, 3, 3)).astype(np.float32) * 0.1),
            _init("cb2", rng.standard_normal(24).astype(np.float32) * 0.1),
            _init("fc", rng.standard_normal((10, 24)).astype(np.float32) * 0.3),
            _init("fcb", rng.standard_normal(10).astype(np.float32) * 0.1),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def wide_mlp(seed: int = 0) -> onnx.ModelProto:
    """Two MatMuls big enough (128K and 64K weights) for sparse storage to pay off."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 128])],
        [
            _init("w1", rng.standard_normal((256, 512)).astype(np.float32) * 0.06),
            _init("w2", rng.standard_normal((512, 128)).astype(np.float32) * 0.04),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def _output_axis(model: onnx.ModelProto, name: str) -> int:
    """The output-channel axis of weight ``name``: 0 for Conv / Gemm(transB=1), last for MatMul B."""
    for node in model.graph.node:
        if name in node.input[1:2]:
            if node.op_type == "MatMul":
                return -1
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                return 0 if trans_b else -1
    return 0


def prune(model: onnx.ModelProto, pattern: str, fraction: float = 0.5, seed: int = 0,
          min_size: int = 64) -> onnx.ModelProto:
    """Zero ``fraction`` of every float weight (rank >= 2, >= ``min_size`` elements).

    ``rows``: whole output channels (structured pruning); ``elements``: random
    elements (unstructured).  Returns a new model.
    """
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32 or arr.ndim < 2 or arr.size < min_size:
            continue
        arr = arr.copy()
        if pattern == "rows":
            axis = _output_axis(out, init.name) % arr.ndim
            channels = arr.shape[axis]
            drop = rng.choice(channels, size=int(channels * fraction), replace=False)
            index = [slice(None)] * arr.ndim
            index[axis] = drop
            arr[tuple(index)] = 0
        elif pattern == "elements":
            arr[rng.random(arr.shape) < fraction] = 0
        else:
            raise ValueError(pattern)
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return out


def int_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The integer initializers of rank >= 2: a quantizer's weights, whatever it named them."""
    return {
        i.name: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(i.dims) >= 2
    }


def quantized_name(before: onnx.ModelProto, after: onnx.ModelProto, weight: str) -> str:
    """The initializer of ``after`` holding float weight ``weight`` of ``before`` (matched by value)."""
    originals = float_weights(before)[weight]
    for name, (values, _) in dequantize_all(after).items():
        if by_source_one(values, originals):
            return name
    raise AssertionError(f"{weight} is not quantized")


def by_source_one(values: np.ndarray, original: np.ndarray) -> bool:
    aligned = orient(values, original) if values.size == original.size else None
    bound = float(np.abs(original).max()) / 2 ** 6
    return aligned is not None and float(np.max(np.abs(aligned - original))) <= bound


def float_weights(model: onnx.ModelProto, min_rank: int = 2) -> dict[str, np.ndarray]:
    return {
        i.name: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.data_type == TensorProto.FLOAT and len(i.dims) >= min_rank
    }


def _per_axis(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if param.size == 1:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = param.size
    return param.reshape(shape)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """uint8 [..., B] -> int [..., 2B], low nibble first (MatMulNBits layout)."""
    low = (packed & 0x0F).astype(np.int64)
    high = (packed >> 4).astype(np.int64)
    return np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _weight_scale(model: onnx.ModelProto, inits: dict[str, np.ndarray], node: onnx.NodeProto) -> np.ndarray:
    """ConvInteger/MatMulInteger: the constant factor of the Mul that rescales the (Cast) integer result."""
    by_input: dict[str, list[onnx.NodeProto]] = {}
    by_output = {out: n for n in model.graph.node for out in n.output}
    for n in model.graph.node:
        for name in n.input:
            by_input.setdefault(name, []).append(n)
    tensor = node.output[0]
    cast = next((n for n in by_input.get(tensor, []) if n.op_type == "Cast"), None)
    tensor = cast.output[0] if cast is not None else tensor
    mul = next(n for n in by_input[tensor] if n.op_type == "Mul")
    other = mul.input[1] if mul.input[0] == tensor else mul.input[0]
    if other in inits:
        return inits[other]
    (scale,) = [name for name in by_output[other].input if name in inits]
    return inits[scale]


def dequantize_all(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, int]]:
    """Quantized initializer name -> (dequantized float values, bits) for every quantized weight."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out: dict[str, tuple[np.ndarray, int]] = {}
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = list(node.input) + [""] * 10
        if node.op_type == "MatMulNBits":
            k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
            assert attrs.get("bits", 4) == 4
            k_blocks = -(-k // block)
            codes = _nibbles(inits[ins[1]].reshape(n, k_blocks, block // 2))
            scales = inits[ins[2]].reshape(n, k_blocks, 1).astype(np.float64)
            if ins[3]:
                zero = _nibbles(inits[ins[3]].reshape(n, -1))[:, :k_blocks, None]
            else:
                zero = 8
            w = ((codes - zero) * scales).reshape(n, k_blocks * block)[:, :k].T
            out[ins[1]] = (w, 4)
        elif node.op_type == "DequantizeLinear" and ins[0] in inits:
            q = inits[ins[0]]
            if q.dtype == np.int32:  # int32 biases
                continue
            bits = 4 if q.dtype.name in ("int4", "uint4") else 8
            q = q.astype(np.int64)
            scale = inits[ins[1]].astype(np.float64)
            zero = inits[ins[2]].astype(np.int64) if ins[2] else np.zeros(1, np.int64)
            axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
            if block:
                scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
                zero = np.repeat(zero, block, axis=axis).take(range(q.shape[axis]), axis=axis) if zero.size > 1 else zero.reshape(())
            else:
                scale, zero = _per_axis(scale, q.ndim, axis), _per_axis(zero, q.ndim, axis)
            out[ins[0]] = ((q - zero) * scale, bits)
        elif node.op_type in ("QLinearConv", "QLinearMatMul", "QGemm") and ins[3] in inits:
            q = inits[ins[3]].astype(np.int64)
            trans_b = attrs.get("transB", 0)
            axis = 0 if node.op_type == "QLinearConv" or (node.op_type == "QGemm" and trans_b) else -1
            scale = _per_axis(inits[ins[4]].astype(np.float64), q.ndim, axis)
            zero = _per_axis(inits[ins[5]].astype(np.int64), q.ndim, axis)
            out[ins[3]] = ((q - zero) * scale, 8)
        elif node.op_type in ("ConvInteger", "MatMulInteger") and ins[1] in inits:
            q = inits[ins[1]].astype(np.int64)
            axis = 0 if node.op_type == "ConvInteger" else -1
            scale = _per_axis(_weight_scale(model, inits, node).astype(np.float64), q.ndim, axis)
            zero = _per_axis(inits[ins[3]].astype(np.int64), q.ndim, axis) if ins[3] else 0
            out[ins[1]] = ((q - zero) * scale, 8)
    return out


def orient(values: np.ndarray, original: np.ndarray) -> np.ndarray | None:
    """Quantizers transpose Gemm(transB=1) weights; undo it (test weights are never square)."""
    if values.shape == original.shape:
        return values
    if values.ndim == 2 and values.T.shape == original.shape:
        return values.T
    return None


def _row_cosine(values: np.ndarray, original: np.ndarray) -> float:
    """Smallest |cosine| between matching output rows: 1 for a weight rescaled per row (BatchNorm folding)."""
    a, b = values.reshape(values.shape[0], -1), original.reshape(original.shape[0], -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    live = norms > 0
    if not live.any():
        return 1.0
    return float(np.min(np.abs(np.sum(a * b, axis=1)[live]) / norms[live]))


def by_source(before: onnx.ModelProto, after: onnx.ModelProto, *, rescaled: bool = False
              ) -> dict[str, tuple[np.ndarray, int]]:
    """Float weight name of ``before`` -> (its dequantized values in ``after``, bits), matched by value.

    Names are not read (quantizers rename weights).  A quantized weight belongs
    to the float weight of the same size it is closest to; ``rescaled`` allows
    per-row rescaling (BatchNorm folded into the weight) by matching row
    directions instead of values.
    """
    originals = float_weights(before)
    out: dict[str, tuple[np.ndarray, int]] = {}
    for values, bits in dequantize_all(after).values():
        best, best_score = None, -np.inf
        for name, original in originals.items():
            aligned = orient(values, original) if values.size == original.size else None
            if aligned is None:
                continue
            score = _row_cosine(aligned, original) if rescaled else -float(np.max(np.abs(aligned - original)))
            if score > best_score:
                best, best_score = (name, aligned), score
        if best is not None and (best_score > 0.9 if rescaled else True):  # other weights score ~0
            out[best[0]] = (best[1], bits)
    return out


def assert_zeros_exact(before: onnx.ModelProto, after: onnx.ModelProto, *, check_error: bool = True,
                       expect: set[str] | None = None) -> int:
    """Every exact zero of every quantized weight of ``before`` is exactly zero in ``after``.

    Returns the number of zeros checked.  ``expect``: weights that must have
    been quantized (so the check cannot pass vacuously).  ``check_error``
    also bounds the dequantization error, which catches a misread axis or
    zero point (off for weights the quantizer rescaled, e.g. BatchNorm folding).
    """
    originals = float_weights(before)
    deq = by_source(before, after, rescaled=not check_error)
    if expect is not None:
        missing = expect - set(deq)
        assert not missing, f"not quantized: {sorted(missing)}"
    checked = 0
    for name, (values, bits) in deq.items():
        if name not in originals:
            continue
        original = originals[name]
        zeros = original == 0
        bad = int(np.count_nonzero(values[zeros] != 0))
        assert bad == 0, f"{name}: {bad} of {int(zeros.sum())} zeros are no longer exact zeros"
        checked += int(zeros.sum())
        if check_error and np.abs(original).max() > 0:
            # Half a quantization step is at most max|W| / 2^(bits-1) (asymmetric, 7-bit reduce_range included).
            bound = float(np.abs(original).max()) / 2 ** (bits - 2)
            err = float(np.abs(values - original).max())
            assert err <= bound, f"{name}: dequantization error {err} > {bound}: misread scale/zero point/axis"
    return checked
