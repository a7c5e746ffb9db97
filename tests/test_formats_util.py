"""Model builders and comparisons shared by the storage-format and sparsify tests (no tests here)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxsparse.formats.base import bits_view

__all__ = [
    "same_bits",
    "identity_model",
    "mlp_model",
    "conv_model",
    "qdq_model",
    "qlinear_conv_model",
    "matmul_integer_model",
    "initializer_arrays",
    "with_random_weights",
]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bits_view(a), bits_view(b))


def identity_model(array: np.ndarray, opset: int = 18) -> ir.Model:
    """``out = W`` (bfloat16 is cast to float32 so onnxruntime can return it)."""
    name = "W"
    value = ir.Value(name=name, const_value=ir.Tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    if array.dtype.name == "bfloat16":
        node = ir.node("Cast", [value], {"to": ir.DataType.FLOAT}, name="cast")
        out_type = ir.DataType.FLOAT
    else:
        node = ir.node("Identity", [value], name="identity")
        out_type = value.dtype
    node.outputs[0].name = "out"
    node.outputs[0].type = ir.TensorType(out_type)
    node.outputs[0].shape = ir.Shape(array.shape)
    graph = ir.Graph([], [node.outputs[0]], nodes=[node], initializers=[value],
                     opset_imports={"": opset}, name="identity")
    return ir.Model(graph, ir_version=10)


def _finish(nodes, inputs, outputs, inits, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def mlp_model(rng: np.random.Generator, dims=(64, 96, 80, 10), opset: int = 17, dtype=np.float32,
              trans_b: bool = False) -> onnx.ModelProto:
    """MatMul -> Relu -> Gemm(transB) -> Relu -> MatMul (covers the three reduction-axis layouts)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x = helper.make_tensor_value_info("x", elem, ["batch", dims[0]])
    y = helper.make_tensor_value_info("y", elem, ["batch", dims[-1]])
    w0 = rng.standard_normal((dims[0], dims[1])).astype(dtype)
    w1 = rng.standard_normal((dims[2], dims[1])).astype(dtype)  # Gemm transB: [out, in]
    b1 = rng.standard_normal(dims[2]).astype(dtype)
    w2 = rng.standard_normal((dims[2], dims[3])).astype(dtype)
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"], name="fc0"),
        helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
        helper.make_node("Gemm", ["r0", "w1", "b1"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["y"], name="fc2"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w0, "w0"), (w1, "w1"), (b1, "b1"), (w2, "w2"))]
    return _finish(nodes, [x], [y], inits, opset)


def conv_model(rng: np.random.Generator, opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 10, 10])
    w0 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["y"], name="conv1", pads=[1, 1, 1, 1]),
    ]
    return _finish(nodes, [x], [y], [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1")], opset)


def qdq_model(rng: np.random.Generator, k: int = 256, n: int = 128) -> onnx.ModelProto:
    """int8 weight -> DequantizeLinear (per-channel, zero point 0) -> MatMul."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])
    q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    scale = rng.uniform(0.01, 0.05, n).astype(np.float32)
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq", axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
    ]
    inits = [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale, "ws"),
             numpy_helper.from_array(np.zeros(n, np.int8), "wz")]
    return _finish(nodes, [x], [y], inits, 17)


def qlinear_conv_model(rng: np.random.Generator, zero_point: int = 128) -> onnx.ModelProto:
    """QLinearConv with a uint8 weight whose (scalar) zero point is not 0."""
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 32, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 64, 6, 6])
    w = rng.integers(0, 256, (64, 32, 3, 3)).astype(np.uint8)
    inits = [
        numpy_helper.from_array(np.float32(0.05), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
        numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.01), "wsc"),
        numpy_helper.from_array(np.uint8(zero_point), "wzp"),
        numpy_helper.from_array(np.float32(0.5), "ys"), numpy_helper.from_array(np.uint8(128), "yz"),
    ]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "wsc", "wzp", "ys", "yz"], ["y"],
                            name="qconv", pads=[1, 1, 1, 1])
    return _finish([node], [x], [y], inits, 17)


def matmul_integer_model(rng: np.random.Generator) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, ["batch", 256])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", 128])
    w = rng.integers(-128, 128, (256, 128)).astype(np.int8)
    node = helper.make_node("MatMulInteger", ["x", "w"], ["y"], name="mmi")
    return _finish([node], [x], [y], [numpy_helper.from_array(w, "w")], 17)


def initializer_arrays(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy() for name, value in model.graph.initializers.items()
            if value.const_value is not None}


def with_random_weights(model: ir.Model, seed: int = 0, min_size: int = 64) -> ir.Model:
    """Replace float initializers of at least ``min_size`` elements by random normals (in place)."""
    rng = np.random.default_rng(seed)
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None or tensor.size < min_size:
            continue
        array = tensor.numpy()
        if array.dtype.kind == "f":
            value.const_value = ir.Tensor(rng.standard_normal(array.shape).astype(array.dtype), name=name)
    return model
