"""graph.linear: contracting the axes a LinearOp names reproduces onnxruntime's output for every linear op kind."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import run, session
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

from onnxsparse.errors import Decline
from onnxsparse.graph.linear import LinearOp, linear_op, linear_op_proto

RNG = np.random.default_rng(14)


def _model(node: onnx.NodeProto, inputs: dict[str, np.ndarray], inits: dict[str, np.ndarray],
           out_type: int = TensorProto.FLOAT) -> ir.Model:
    graph = helper.make_graph(
        [node], "linear",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
         for n, a in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], out_type, None)],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.from_proto(proto)


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> tuple[LinearOp, np.ndarray]:
    (y,) = run(session(ir.to_proto(model)), feeds)
    return linear_op(next(iter(model.graph))), y


def _dense(op: LinearOp, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x`` contracted with ``w`` over the stated axes: ``[..., out]``."""
    assert op.in_axis is not None
    return np.tensordot(np.moveaxis(x, op.data_axis, -1), np.moveaxis(w, op.in_axis, 0), axes=1)


def _conv(op: LinearOp, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A stride-1 unpadded (grouped) convolution built only from the view's group and index helpers."""
    assert op.family == "conv" and op.in_axis == 1 and op.out_axis == 0
    nd = len(op.kernel)
    c_in, c_out = x.shape[1], w.shape[0]
    windows = sliding_window_view(x.astype(np.float64), op.kernel, axis=tuple(range(2, 2 + nd)))
    y = np.zeros((x.shape[0], c_out, *windows.shape[2:2 + nd]))
    k_axes = tuple(range(-nd, 0))
    for c in range(c_in):
        g = op.group_of(c, c_in)
        for o in op.output_range(g, c_out):
            kernel = w[o, op.weight_in_index(c, c_in)].astype(np.float64)
            y[:, o] += np.tensordot(windows[:, c], kernel, axes=(k_axes, tuple(range(nd))))
    return y


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm(trans_a: int, trans_b: int) -> None:
    a = RNG.standard_normal((5, 4) if trans_a else (4, 5)).astype(np.float32)
    b = RNG.standard_normal((3, 5) if trans_b else (5, 3)).astype(np.float32)
    c = RNG.standard_normal(3).astype(np.float32)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a, transB=trans_b, alpha=0.5, beta=2.0)
    op, y = _run(_model(node, {"a": a}, {"b": b, "c": c}), {"a": a})
    assert (op.family, op.weight_input, op.data_input, op.bias_input) == ("gemm", 1, 0, 2)
    assert op.in_axis is not None and op.transposed == (not trans_b) and op.out_axis == 1 - op.in_axis
    np.testing.assert_allclose(0.5 * _dense(op, a, b) + 2.0 * c, y, rtol=1e-5, atol=1e-5)


def test_gemm_weight_a() -> None:
    a = RNG.standard_normal((3, 5)).astype(np.float32)
    b = RNG.standard_normal((4, 5)).astype(np.float32)  # activation, transB
    node = helper.make_node("Gemm", ["a", "b"], ["y"], transB=1)
    model = _model(node, {"b": b}, {"a": a})
    (y,) = run(session(ir.to_proto(model)), {"b": b})
    op = linear_op(next(iter(model.graph)), 0)
    assert (op.weight_input, op.data_input, op.in_axis, op.out_axis, op.data_axis) == (0, 1, 1, 0, 1)
    np.testing.assert_allclose(_dense(op, b, a).T, y, rtol=1e-5, atol=1e-5)  # [N, M] -> Gemm's [M, N]


def test_matmul_batched_weight_right() -> None:
    x = RNG.standard_normal((2, 3, 6)).astype(np.float32)
    w = RNG.standard_normal((6, 4)).astype(np.float32)
    op, y = _run(_model(helper.make_node("MatMul", ["x", "w"], ["y"]), {"x": x}, {"w": w}), {"x": x})
    assert (op.weight_input, op.data_input, op.in_axis, op.out_axis, op.data_axis, op.transposed) == (1, 0, 0, 1, -1, True)
    np.testing.assert_allclose(_dense(op, x, w), y, rtol=1e-5, atol=1e-5)


def test_matmul_weight_left() -> None:
    w = RNG.standard_normal((4, 6)).astype(np.float32)
    x = RNG.standard_normal((2, 6, 3)).astype(np.float32)
    op, y = _run(_model(helper.make_node("MatMul", ["w", "x"], ["y"]), {"x": x}, {"w": w}), {"x": x})
    assert (op.weight_input, op.data_input, op.in_axis, op.out_axis, op.data_axis) == (0, 1, 1, 0, -2)
    np.testing.assert_allclose(np.moveaxis(_dense(op, x, w), -1, -2), y, rtol=1e-5, atol=1e-5)


def test_matmul_between_activations_declines() -> None:
    a = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    b = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    model = _model(helper.make_node("MatMul", ["a", "b"], ["y"]), {"a": a, "b": b}, {})
    with pytest.raises(Decline, match="two activations"):
        linear_op(next(iter(model.graph)))


def test_not_linear_declines() -> None:
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    model = _model(helper.make_node("Relu", ["x"], ["y"]), {"x": x}, {})
    with pytest.raises(Decline, match="Relu is not a linear op"):
        linear_op(next(iter(model.graph)))


@pytest.mark.parametrize("x_shape,w_shape,group", [
    ((2, 4, 9), (6, 4, 3), 1),  # 1-D
    ((2, 4, 6, 5), (6, 2, 3, 2), 2),  # 2-D grouped
    ((2, 4, 5, 5), (8, 1, 3, 3), 4),  # depthwise, multiplier 2
    ((1, 3, 4, 5, 3), (2, 3, 2, 3, 2), 1),  # 3-D
])
def test_conv(x_shape: tuple[int, ...], w_shape: tuple[int, ...], group: int) -> None:
    x = RNG.standard_normal(x_shape).astype(np.float32)
    w = RNG.standard_normal(w_shape).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group)
    op, y = _run(_model(node, {"x": x}, {"w": w}), {"x": x})
    assert (op.groups, op.data_axis, op.kernel) == (group, 1, w_shape[2:])
    np.testing.assert_allclose(_conv(op, x, w), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_groups(group: int) -> None:
    x = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 2)).astype(np.float32)  # [C_in, C_out/g, k]
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=group)
    op, y = _run(_model(node, {"x": x}, {"w": w}), {"x": x})
    assert (op.family, op.in_axis, op.out_axis, op.groups) == ("conv_transpose", 0, 1, group)
    c_in, per_out, k = w.shape
    ref = np.zeros((2, per_out * group, x.shape[2] + k - 1))
    for c in range(c_in):
        g = op.group_of(c, c_in)
        for j, o in enumerate(op.output_range(g, per_out * group)):
            for t in range(k):
                ref[:, o, t:t + x.shape[2]] += x[:, c] * w[op.weight_in_index(c, c_in), j, t]
    np.testing.assert_allclose(ref, y, rtol=1e-4, atol=1e-4)


def test_matmul_integer() -> None:
    x = RNG.integers(0, 255, (3, 6)).astype(np.uint8)
    w = RNG.integers(0, 255, (6, 4)).astype(np.uint8)
    wz = np.array(7, np.uint8)
    node = helper.make_node("MatMulInteger", ["x", "w", "", "wz"], ["y"])
    op, y = _run(_model(node, {"x": x}, {"w": w, "wz": wz}, TensorProto.INT32), {"x": x})
    assert (op.weight_input, op.zero_point_input, op.scale_input, op.quantized) == (1, 3, None, True)
    ref = _dense(op, x.astype(np.int64), w.astype(np.int64) - 7)
    np.testing.assert_array_equal(ref, y)


def test_matmul_integer_vector_weight() -> None:
    x = RNG.integers(0, 255, (3, 6)).astype(np.uint8)
    w = RNG.integers(0, 255, 6).astype(np.uint8)
    node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
    op, y = _run(_model(node, {"x": x}, {"w": w}, TensorProto.INT32), {"x": x})
    assert (op.in_axis, op.out_axis, op.data_axis) == (0, None, -1)
    np.testing.assert_array_equal(_dense(op, x.astype(np.int64), w.astype(np.int64)), y)


def test_conv_integer_grouped() -> None:
    x = RNG.integers(0, 255, (1, 4, 5, 5)).astype(np.uint8)
    w = RNG.integers(0, 255, (6, 2, 2, 2)).astype(np.uint8)
    node = helper.make_node("ConvInteger", ["x", "w", "", "wz"], ["y"], group=2)
    op, y = _run(_model(node, {"x": x}, {"w": w, "wz": np.array(3, np.uint8)}, TensorProto.INT32), {"x": x})
    assert (op.weight_input, op.zero_point_input, op.groups) == (1, 3, 2)
    np.testing.assert_array_equal(_conv(op, x, w.astype(np.int64) - 3).astype(np.int64), y)


def test_qlinear_forms_name_their_weight_inputs() -> None:
    x = RNG.integers(0, 255, (1, 2, 4, 4)).astype(np.uint8)
    scalars: dict[str, np.ndarray] = {"xs": np.array(0.1, np.float32), "xz": np.array(0, np.uint8), "ws": np.array(0.2, np.float32),
               "wz": np.array(0, np.uint8), "ys": np.array(0.3, np.float32), "yz": np.array(0, np.uint8)}
    conv = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    w = RNG.integers(0, 255, (3, 2, 2, 2)).astype(np.uint8)
    op = linear_op(next(iter(_model(conv, {"x": x}, {"w": w, **scalars}, TensorProto.UINT8).graph)))
    assert (op.weight_input, op.scale_input, op.zero_point_input, op.bias_input, op.in_axis, op.out_axis) == (3, 4, 5, 8, 1, 0)
    mm = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    w2 = RNG.integers(0, 255, (4, 5)).astype(np.uint8)
    op = linear_op(next(iter(_model(mm, {"x": x}, {"w": w2, **scalars}, TensorProto.UINT8).graph)))
    assert (op.weight_input, op.scale_input, op.zero_point_input, op.in_axis, op.out_axis, op.data_axis) == (3, 4, 5, 0, 1, -1)


def test_microsoft_domain_declines() -> None:
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["x", "w"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(x, "w")])
    model = ir.from_proto(helper.make_model(graph))
    with pytest.raises(Decline, match="com.microsoft::MatMulNBits is not a linear op"):
        linear_op(next(iter(model.graph)))


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 1)])
def test_microsoft_qgemm(trans_a: int, trans_b: int) -> None:
    a = RNG.integers(0, 255, (5, 4) if trans_a else (4, 5)).astype(np.uint8)
    b = RNG.integers(-128, 127, (3, 5) if trans_b else (5, 3)).astype(np.int8)
    scalars: dict[str, np.ndarray] = {"a_s": np.array(0.05, np.float32), "a_z": np.array(11, np.uint8), "b_s": np.array(0.02, np.float32),
               "b_z": np.array(0, np.int8)}
    node = helper.make_node("QGemm", ["a", "a_s", "a_z", "b", "b_s", "b_z"], ["y"], domain="com.microsoft",
                            transA=trans_a, transB=trans_b)
    graph = helper.make_graph([node], "qgemm", [helper.make_tensor_value_info("a", TensorProto.UINT8, list(a.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in {"b": b, **scalars}.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 8
    model = ir.from_proto(proto)
    op, y = _run(model, {"a": a})
    assert (op.family, op.weight_input, op.data_input, op.scale_input, op.zero_point_input, op.bias_input) == (
        "gemm", 3, 0, 4, 5, 6)
    assert op.transposed == (not trans_b) and op.quantized
    ref = _dense(op, a.astype(np.int64) - 11, b.astype(np.int64)) * np.float32(0.05 * 0.02)
    np.testing.assert_allclose(ref, y, rtol=1e-5, atol=1e-5)
    with pytest.raises(Decline, match="input 0 is not its weight"):
        linear_op(next(iter(model.graph)), 0)


def _fields(op: LinearOp) -> dict[str, object]:
    return {f.name: getattr(op, f.name) for f in fields(op) if f.name != "node"}


@pytest.mark.parametrize("node,weight,weight_input", [
    (helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, transB=1), (3, 5), 1),
    (helper.make_node("Gemm", ["w", "x"], ["y"], transA=1), (5, 3), 0),
    (helper.make_node("MatMul", ["x", "w"], ["y"]), (2, 6, 4), 1),
    (helper.make_node("Conv", ["x", "w"], ["y"], group=2), (6, 2, 3, 3), None),
    (helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"]), (2, 4, 5), None),
    (helper.make_node("QGemm", ["x", "xs", "xz", "w", "ws", "wz"], ["y"], domain="com.microsoft", transB=1), (3, 5), None),
])
def test_proto_view_matches_ir_view(node: onnx.NodeProto, weight: tuple[int, ...], weight_input: int | None) -> None:
    """``linear_op_proto`` (quantize's ModelProto graphs) states what ``linear_op`` states on the loaded node."""
    w = numpy_helper.from_array(RNG.standard_normal(weight).astype(np.float32), "w")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    loaded = next(iter(ir.from_proto(helper.make_model(graph)).graph))
    expected = _fields(linear_op(loaded, weight_input))
    assert _fields(linear_op_proto(node, weight_input, inits={"w": w})) == expected
    assert expected["weight_shape"] == weight
