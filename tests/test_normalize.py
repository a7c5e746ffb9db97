"""Normalisation: weights become initializers, outputs and parameter counts are unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from helpers import SAMPLES, light, random_feeds, run, sample, session
from onnxsparse.analysis import count_params, iter_weights
from onnxsparse.io import load_model, save_model
from onnxsparse.passes.normalize import NormalizePass, normalize

SAMPLE_NAMES = sorted(p.stem for p in SAMPLES.glob("*.onnx"))


def all_nodes(model: ir.Model) -> list[ir.Node]:
    return [node for graph in model.graphs() for node in graph]


def constant_weights(model: ir.Model) -> list[str]:
    """Parameters not held in an initializer (Constant nodes, ConstantOfShape, computed)."""
    return [ref.name for ref in iter_weights(model) if ref.source != "initializer"]


def outputs(model, feeds_list) -> list[list[np.ndarray]]:
    if isinstance(model, ir.Model):  # sessions from bytes cannot resolve external data files
        ir.external_data.load_to_model(model)
    sess = session(model)
    return [[_array(o) for o in run(sess, feeds)] for feeds in feeds_list]


def _array(output) -> np.ndarray:
    """An output as an array (skl2onnx's ZipMap output, a list of {class: prob}, as a matrix)."""
    if isinstance(output, list) and output and isinstance(output[0], dict):
        return np.array([[row[k] for k in sorted(row)] for row in output])
    return np.asarray(output)


def feeds_for(path: Path) -> list[dict[str, np.ndarray]]:
    feeds = random_feeds(path, batch=2, seed=1)
    return [feeds, {k: (-v if v.dtype.kind == "f" else v) for k, v in feeds.items()}]


def assert_outputs_equal(before, after) -> None:
    for outs_a, outs_b in zip(before, after):
        assert len(outs_a) == len(outs_b)
        for a, b in zip(outs_a, outs_b):
            # Folding evaluates constant subexpressions ahead of time (e.g. 1/sqrt(d) scales),
            # which may round differently in the last bit; anything real is far above this.
            # float16 models: onnxruntime fuses differently once constants are initializers
            # (fused kernels accumulate in float32), a few float16 ulps.
            half = a.dtype == np.float16
            np.testing.assert_allclose(a, b, rtol=1e-2 if half else 1e-5, atol=2e-3 if half else 1e-6)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_normalize_keeps_outputs_and_params(name: str) -> None:
    src = sample(name)
    feeds = feeds_for(src)
    expected = outputs(src, feeds)
    model = load_model(src)
    params_before = count_params(model)
    inputs_before = [v.name for v in model.graph.inputs if not v.is_initializer()]
    normalize(model)
    assert_outputs_equal(expected, outputs(model, feeds))
    assert count_params(model) == params_before
    assert [v.name for v in model.graph.inputs] == inputs_before
    assert constant_weights(model) == []


def test_constant_node_weights_become_initializers() -> None:
    src = sample("constant_weights")
    model = load_model(src)
    lifted = constant_weights(model)
    assert {"conv1.weight", "conv2.weight", "fc.weight", "bn1.running_var"} <= set(lifted)
    assert count_params(model) == 1658  # 8*3*9+8 + 4*8 + 16*8*9+16 + 4*16 + 10*16+10
    assert len(model.graph.initializers) == 0
    feeds = feeds_for(src)
    expected = outputs(src, feeds)
    normalize(model)
    assert not [n for n in all_nodes(model) if n.op_type == "Constant"]
    assert set(lifted) <= set(model.graph.initializers)
    w = model.graph.initializers["conv1.weight"].const_value
    assert w.shape.numpy() == (8, 3, 3, 3)
    # pure lifting: no arithmetic moved, so the outputs are bit-identical
    for outs_a, outs_b in zip(expected, outputs(model, feeds)):
        for a, b in zip(outs_a, outs_b):
            np.testing.assert_array_equal(a, b)


def test_constantofshape_weights_are_folded() -> None:
    src = sample("constantofshape_weights")
    model = load_model(src)
    feeds = feeds_for(src)
    expected = outputs(src, feeds)
    normalize(model)
    assert set(constant_weights(load_model(src))) == {"conv1.bias", "conv2.weight", "bn2.weight", "fc.bias"}
    assert not [n for n in all_nodes(model) if n.op_type in ("ConstantOfShape", "Shape")]
    inits = model.graph.initializers
    np.testing.assert_array_equal(
        inits["conv2.weight"].const_value.numpy(),
        np.full((16, 8, 3, 3), np.float32(np.sqrt(2.0 / 72) * 0.5)),
    )
    # fc.bias came from Shape(fc.weight) -> Gather -> Unsqueeze -> ConstantOfShape(0.05)
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    bias = gemm.inputs[2]
    assert bias.const_value is not None
    np.testing.assert_array_equal(bias.const_value.numpy(), np.full(10, 0.05, np.float32))
    assert_outputs_equal(expected, outputs(model, feeds))


def test_ir3_initializer_inputs_are_dropped() -> None:
    model = load_model(sample("ir3_inputs"))
    assert len(model.graph.inputs) > 1
    normalize(model)
    assert [v.name for v in model.graph.inputs] == ["input"]
    assert "conv1.weight" in model.graph.initializers


def test_if_subgraph_weights() -> None:
    src = sample("if_model")
    model = load_model(src)
    normalize(model)
    # both branches keep working and the inner initializers stay reachable from the main graph
    assert {"else.conv.weight", "then.conv.weight"} <= set(model.graph.initializers)


def test_shapes_are_inferred() -> None:
    model = normalize(load_model(sample("resnet_mini")))
    conv = next(n for n in model.graph if n.name == "layer2.0.conv1")
    out = conv.outputs[0]
    assert out.shape is not None and list(out.shape)[1:] == [32, 16, 16]


def test_normalize_is_idempotent_and_reports_modified() -> None:
    model = load_model(sample("constant_weights"))
    assert NormalizePass()(model).modified
    before = ir.to_proto(model).SerializeToString(deterministic=True)
    NormalizePass(infer_shapes=False)(model)
    assert ir.to_proto(model).SerializeToString(deterministic=True) == before


def test_light_resnet50_constantofshape_weights(tmp_path: Path) -> None:
    """ConstantOfShape weights of real size are folded (no size limit) and still counted."""
    model = load_model(light("resnet50"))
    params = count_params(model)
    normalize(model)
    assert count_params(model) == params
    assert not [n for n in all_nodes(model) if n.op_type == "ConstantOfShape"]
    out = save_model(model, tmp_path / "r50.onnx")
    assert out.stat().st_size > 4 * params  # float32 weights are really in the file


def test_broadcast_of_a_constant_is_not_folded_into_a_bigger_constant():
    """A class token expanded over a fixed batch stays an Expand: folding it would grow the file and params."""
    import numpy as np
    import onnx
    import onnx_ir as ir
    from onnx import helper, numpy_helper

    from onnxsparse.analysis import count_params
    from onnxsparse.passes.normalize import normalize

    def model(op: str, arg: list[int]) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node(op, ["cls", "arg"], ["e"]), helper.make_node("Add", ["x", "e"], ["y"])], "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 100, 64])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 100, 64])],
            [numpy_helper.from_array(np.ones((1, 1, 64), np.float32), "cls"),
             numpy_helper.from_array(np.array(arg, np.int64), "arg")])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        return proto

    for op, arg in (("Expand", [4, 100, 64]), ("Tile", [4, 100, 1])):
        m = ir.from_proto(model(op, arg))
        params = count_params(m)
        normalize(m)
        assert [n.op_type for n in m.graph] == [op, "Add"]
        assert max(v.const_value.size for v in m.graph.initializers.values()) == 64
        assert count_params(m) == params
    small = ir.from_proto(model("Expand", [1, 4, 64]))  # 256 elements: folding a small table is fine
    normalize(small)
    assert [n.op_type for n in small.graph] == ["Add"]
