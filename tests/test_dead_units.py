"""Dead / constant units: detection per dependency group, exact removal (prune --dead), activation statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsparse.passes.activation_stats import activation_statistics
from onnxsparse.passes.dead_units import find_dead_units
from onnxsparse.passes.prune import prune

ROOT = Path(__file__).resolve().parents[1]
RNG_SEED = 7


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _model(nodes, inits, inp, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, inp)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cnn() -> onnx.ModelProto:
    """conv1 (3x3 pad 1) -> relu -> conv2 (1x1) -> relu -> conv3 (3x3 pad 1) -> relu -> GAP -> Gemm.

    conv1: unit 2 dead (zero filter, bias -1), unit 5 constant 0.5 (read by the 1x1 conv2: folds);
    conv2: unit 3 dead, unit 1 constant 0.7 (read by the padded conv3: kept);
    conv3: unit 0 dead through negative weights on a ReLU input, unit 4 constant 0.3 (GAP -> Gemm: folds).
    """
    rng = np.random.default_rng(RNG_SEED)
    w1, b1 = rng.normal(size=(8, 3, 3, 3)), rng.normal(scale=0.1, size=8)
    w1[2], b1[2] = 0, -1.0
    w1[5], b1[5] = 0, 0.5
    w2, b2 = rng.normal(size=(8, 8, 1, 1)), rng.normal(scale=0.1, size=8)
    w2[3], b2[3] = 0, -0.2
    w2[1], b2[1] = 0, 0.7
    w3, b3 = rng.normal(size=(6, 8, 3, 3)), rng.normal(scale=0.1, size=6)
    w3[0], b3[0] = -np.abs(w3[0]), -0.1
    w3[4], b3[4] = 0, 0.3
    wg, bg = rng.normal(size=(4, 6)), rng.normal(size=4)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    inits = [_init(n, a) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3), ("b3", b3),
                                      ("wg", wg), ("bg", bg))]
    return _model(nodes, inits, ["N", 3, 8, 8], ["N", 4])


def mlp() -> onnx.ModelProto:
    """MatMul+Add -> Relu -> MatMul+Add -> Relu -> Gemm; two dead and two constant units, all foldable."""
    rng = np.random.default_rng(RNG_SEED + 1)
    w1, b1 = rng.normal(size=(16, 12)), rng.normal(scale=0.1, size=12)
    w1[:, 3], b1[3] = 0, -1.0
    w1[:, 7], b1[7] = 0, 0.4
    w2, b2 = rng.normal(size=(12, 10)), 0.5 + rng.normal(scale=0.1, size=10)  # live units stay live
    w2[:, 2], b2[2] = -np.abs(w2[:, 2]), -0.1
    w2[:, 5], b2[5] = 0, 1.2
    wg, bg = rng.normal(size=(10, 3)), rng.normal(size=3)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
        helper.make_node("Add", ["m2", "b2"], ["a2"], name="add2"),
        helper.make_node("Clip", ["a2", "zero", ""], ["r2"], name="clip2"),
        helper.make_node("Gemm", ["r2", "wg", "bg"], ["y"], name="fc"),
    ]
    inits = [_init(n, a) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("wg", wg), ("bg", bg),
                                      ("zero", np.float32(0)))]
    return _model(nodes, inits, ["N", 16], ["N", 3])


def residual() -> onnx.ModelProto:
    """r3 = relu(relu(convA x) + relu(convB relu(convA x))); unit 4 is dead in both branches, unit 2 only in B."""
    rng = np.random.default_rng(RNG_SEED + 2)
    wa, ba = rng.normal(size=(6, 4, 1, 1)), rng.normal(scale=0.1, size=6)
    wa[4], ba[4] = 0, -1.0
    wb, bb = rng.normal(size=(6, 6, 1, 1)), rng.normal(scale=0.1, size=6)
    wb[2], bb[2] = 0, -1.0
    wb[4], bb[4] = 0, -1.0
    wc, bc = rng.normal(size=(5, 6, 1, 1)), 0.5 + rng.normal(scale=0.1, size=5)  # live units stay live
    wg, bg = rng.normal(size=(2, 5)), rng.normal(size=2)
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["ca"], name="convA"),
        helper.make_node("Relu", ["ca"], ["r1"], name="reluA"),
        helper.make_node("Conv", ["r1", "wb", "bb"], ["cb"], name="convB"),
        helper.make_node("Relu", ["cb"], ["r2"], name="reluB"),
        helper.make_node("Add", ["r1", "r2"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r3"], name="reluS"),
        helper.make_node("Conv", ["r3", "wc", "bc"], ["cc"], name="convC"),
        helper.make_node("Relu", ["cc"], ["r4"], name="reluC"),
        helper.make_node("GlobalAveragePool", ["r4"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    inits = [_init(n, a) for n, a in (("wa", wa), ("ba", ba), ("wb", wb), ("bb", bb), ("wc", wc), ("bc", bc),
                                      ("wg", wg), ("bg", bg))]
    return _model(nodes, inits, ["N", 4, 6, 6], ["N", 2])


def _data(shape, n: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)}


def _run(model: onnx.ModelProto, x: np.ndarray, batch: int) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def _by_root(report) -> dict[str, tuple[list[int], list[int], list[int]]]:
    return {g.root.split("[")[0]: (g.dead, g.constant, g.removable) for g in report.groups}


def _assert_exact(original: onnx.ModelProto, pruned: onnx.ModelProto, x: np.ndarray) -> None:
    ref = _run(original, x, len(x))
    for batch in (len(x), 7):  # calibration ran with batch 4: the result must not depend on the batching
        got = _run(pruned, x, batch)
        assert got.shape == ref.shape
        assert np.max(np.abs(got - ref)) < 1e-5 * np.max(np.abs(ref))


def _widths(model) -> dict[str, tuple[int, ...]]:
    import onnx_ir as ir

    m = model if isinstance(model, ir.Model) else ir.from_proto(model)
    return {name: tuple(v.const_value.shape) for name, v in m.graph.initializers.items() if v.const_value is not None}


def test_cnn_detection_and_exact_removal():
    model, data = cnn(), _data((3, 8, 8))
    report = find_dead_units(model, data)
    roots = _by_root(report)
    assert roots["w1"] == ([2], [5], [2, 5])
    assert roots["w2"] == ([3], [1], [3])  # the constant unit is read by a padded 3x3 conv: kept
    assert roots["w3"] == ([0], [4], [0, 4])
    assert (report.dead, report.constant, report.removable, report.units) == (3, 3, 5, 22)
    note = next(g for g in report.groups if g.root.startswith("w2")).notes
    assert any("zero-pads" in n for n in note)

    result = prune(model, 0.0, dead=True, calib=data, calib_batch=4)
    dead = result.report.dead
    assert dead.removed_units == 5
    widths = _widths(result.model)
    shapes = sorted(s for s in widths.values() if len(s) == 4)
    assert shapes == [(4, 7, 3, 3), (6, 3, 3, 3), (7, 6, 1, 1)]
    assert all(d < 1e-5 for d in dead.max_rel_diff.values())
    import onnx_ir as ir

    _assert_exact(model, ir.to_proto(result.model), data["x"])
    # other data: the constant-folded / dead units stay so (their filters are zero or never positive)
    _assert_exact(model, ir.to_proto(result.model), _data((3, 8, 8), n=9, seed=3)["x"])


def test_mlp_detection_and_exact_removal():
    model, data = mlp(), _data((16,))
    report = find_dead_units(model, data)
    roots = {k: v for k, v in _by_root(report).items()}
    assert sorted(roots.values()) == [([2], [5], [2, 5]), ([3], [7], [3, 7])]
    import onnx_ir as ir

    result = prune(model, 0.0, dead=True, calib=data, calib_batch=4)
    assert result.report.dead.removed_units == 4
    assert sorted(s for s in _widths(result.model).values() if len(s) == 2) == [(8, 3), (10, 8), (16, 10)]
    _assert_exact(model, ir.to_proto(result.model), data["x"])


def test_residual_unit_counts_only_if_every_branch_is_dead():
    model, data = residual(), _data((4, 6, 6))
    report = find_dead_units(model, data)
    roots = _by_root(report)
    assert sorted(roots) == ["wa", "wc"]  # convA, convB and the Add are one group
    assert roots["wa"] == ([4], [], [4])  # unit 2 is dead after convB only: the stream still carries convA's
    import onnx_ir as ir

    result = prune(model, 0.0, dead=True, calib=data, calib_batch=4)
    assert result.report.dead.removed_units == 1
    _assert_exact(model, ir.to_proto(result.model), data["x"])


def test_dead_then_channels_and_needs_data():
    model, data = cnn(), _data((3, 8, 8))
    result = prune(model, 0.5, dead=True, calib=data, round_to=1, repair="none")
    kept = {g.root.split("[")[0]: (g.kept, g.total) for g in result.report.groups}
    assert kept["w1"] == (3, 6)  # the ratio applies to the 6 units left after the dead ones
    from onnxsparse.errors import UsageError

    with pytest.raises(UsageError, match="--dead needs calibration data"):
        prune(cnn(), 0.0, dead=True)


def test_real_mobilenetv2_depthwise_constants_fold_exactly():
    """Depthwise channels fed by a dead expansion channel are constant (bias -> BN -> ReLU6), read by a 1x1."""
    import onnx_ir as ir

    path = ROOT / "samples/models/real_torch_mobilenetv2_ts.onnx"
    result = prune(path, 0.0, dead=True, calib="random", calib_samples=16)
    dead = result.report.dead
    assert dead.constant > 0 and dead.removed_units == dead.removable > dead.dead
    assert result.report.params_after < result.report.params_before
    original = onnx.load(path)
    x = next(iter(_random_feeds(original, 16).values()))
    _assert_exact(original, ir.to_proto(result.model), x)


def _random_feeds(model: onnx.ModelProto, n: int) -> dict[str, np.ndarray]:
    from onnxsparse.calibration import load_data

    return load_data("random", model, samples=n).arrays


def test_activation_statistics_on_constructed_model():
    model, data = cnn(), _data((3, 8, 8))
    stats = activation_statistics(model, data)
    layers = {layer.node: layer for layer in stats.layers}
    assert set(layers) == {"relu1", "relu2", "relu3"}
    r1 = layers["relu1"]
    assert (r1.units, r1.axis, r1.axis_from) == (8, 1, "group")
    assert r1.dead == 1 and r1.constant == 1  # unit 2 (zeros) and unit 5 (0.5)
    assert r1.per_unit_zero[2] == 1.0 and r1.per_unit_zero[5] == 0.0
    assert layers["relu3"].dead == 1 and layers["relu3"].constant == 1
    total = sum(layer.zeros for layer in stats.layers) / sum(layer.elements for layer in stats.layers)
    assert stats.sparsity == pytest.approx(total)
    assert stats.dead_units.removable == 5



def test_activation_statistics_match_numpy_leaky_hardswish():
    """Per-unit zero / negative fractions equal numpy's on the captured outputs (LeakyRelu, HardSwish, Relu6)."""
    rng = np.random.default_rng(3)
    w1, w2, w3, w4 = (rng.normal(size=s) for s in ((6, 10), (10, 8), (8, 7), (7, 2)))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("LeakyRelu", ["m1"], ["a1"], name="leaky", alpha=0.1),
        helper.make_node("MatMul", ["a1", "w2"], ["m2"], name="mm2"),
        helper.make_node("HardSwish", ["m2"], ["a2"], name="hswish"),
        helper.make_node("MatMul", ["a2", "w3"], ["m3"], name="mm3"),
        helper.make_node("Clip", ["m3", "zero", "six"], ["a3"], name="relu6"),
        helper.make_node("Clip", ["a3", "minus", "six"], ["a4"], name="not_relu"),  # min -1: not ReLU-family
        helper.make_node("MatMul", ["a4", "w4"], ["y"], name="mm4"),
    ]
    inits = [_init(n, a) for n, a in (("w1", w1), ("w2", w2), ("w3", w3), ("w4", w4), ("zero", np.float32(0)),
                                      ("six", np.float32(6)), ("minus", np.float32(-1)))]
    model = _model(nodes, inits, ["N", 6], ["N", 2])
    data = _data((6,), n=50)
    stats = activation_statistics(model, data)
    layers = {layer.node: layer for layer in stats.layers}
    assert sorted(layers) == ["hswish", "leaky", "relu6"]

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a1", "a2", "a3"))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    a1, a2, a3 = sess.run(["a1", "a2", "a3"], data)
    for name, out in (("leaky", a1), ("hswish", a2), ("relu6", a3)):
        layer = layers[name]
        assert (layer.axis, layer.units) == (1, out.shape[1])
        np.testing.assert_array_equal(layer.per_unit_zero, (out == 0).mean(axis=0))
        assert layer.negative_fraction == pytest.approx(float((out < 0).mean()))
        assert layer.dead == int(np.all(out == 0, axis=0).sum())
    assert layers["leaky"].negative_fraction > 0.2 and layers["hswish"].zero_fraction > 0.05

def test_activation_statistics_on_digits_cnn():
    stats = activation_statistics(ROOT / "samples/models/digits_cnn.onnx", ROOT / "samples/data/digits_calib.npz")
    assert stats.layers and stats.samples == 128
    for layer in stats.layers:
        assert 0.0 <= layer.zero_fraction <= 1.0
        assert np.all((layer.per_unit_zero >= 0) & (layer.per_unit_zero <= 1))
        assert 0 <= layer.dead <= layer.constant + layer.dead <= layer.units
        assert layer.zero_fraction == pytest.approx(float(np.mean(layer.per_unit_zero)))
        assert sum(layer.histogram) == layer.units
    assert 0.0 < stats.sparsity < 1.0


def test_cli_inspect_calib_and_prune_dead(tmp_path):
    from cli_asserts import one_line_error
    from helpers import cli

    path = tmp_path / "cnn.onnx"
    onnx.save(cnn(), path)
    np.savez(tmp_path / "calib.npz", **_data((3, 8, 8)))
    calib = str(tmp_path / "calib.npz")
    html = tmp_path / "r.html"
    code, out, err = cli("inspect", path, "--calib", calib, "--json", "--report", html)
    assert code == 0, err
    act = json.loads(out)["activations"]
    assert [layer["dead"] for layer in act["layers"]] == [1, 1, 1]
    assert act["dead_units"]["removable"] == 5
    page = html.read_text()
    section = page.split("<h2>Activation sparsity</h2>")[1]  # after the score histogram of inspect's report
    assert section.count("class='chart histogram'") == 1 + len(act["layers"])
    code, out, err = cli("inspect", path, "--calib", calib)
    assert code == 0 and "Activations" in out and "relu2" in out and "would remove 5 units" in out

    small = tmp_path / "small.onnx"
    code, out, err = cli("prune", path, "-o", small, "--dead", "--calib", calib, "--json")
    assert code == 0, err
    assert json.loads(out)["dead"]["removed_units"] == 5
    _assert_exact(cnn(), onnx.load(small), _data((3, 8, 8))["x"])
    assert "needs calibration data" in one_line_error(*cli("prune", path, "-o", tmp_path / "x.onnx", "--dead"))


def test_recipe_prune_dead(tmp_path):
    from onnxsparse.recipe import RecipeError, run_recipe

    path = tmp_path / "cnn.onnx"
    onnx.save(cnn(), path)
    np.savez(tmp_path / "calib.npz", **_data((3, 8, 8)))
    out = tmp_path / "out.onnx"
    result = run_recipe({"calib": str(tmp_path / "calib.npz"), "steps": [{"prune": {"dead": True}}]}, path, out)
    step = result.to_dict()["steps"][0]
    assert step["report"]["channels"]["dead"]["removed_units"] == 5
    assert any(n.startswith("dead units: 5 removed") for n in step["notes"])
    _assert_exact(cnn(), onnx.load(out), _data((3, 8, 8))["x"])
    with pytest.raises(RecipeError, match="nothing to prune"):
        run_recipe({"steps": [{"prune": {"dead": False}}]}, path, tmp_path / "o2.onnx")


def test_dead_removal_keeps_kernel_friendly_widths():
    """With a channel multiple, dead units are removed only in whole blocks (keeping one is exact too)."""
    from onnxsparse.passes.dead_units import _round_to_multiple

    dead = np.arange(20)
    assert _round_to_multiple(64, dead, 1).tolist() == dead.tolist()
    assert _round_to_multiple(64, dead, 16).tolist() == list(range(16))  # 48 kept, a multiple of 16
    assert _round_to_multiple(64, dead[:3], 16).size == 0  # 61 would be off the blocked kernels
    assert _round_to_multiple(24, dead[:10], 16).tolist() == list(range(8))
    assert _round_to_multiple(20, dead[:3], 16).size == 0  # no multiple of 16 between 17 and 20
