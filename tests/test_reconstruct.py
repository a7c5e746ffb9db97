"""Repairs after pruning: exactness where the maths says so, and pruned == masked-and-repaired."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from helpers import run, sample, session
from onnx import helper
from test_prune_support import assert_close, make_model

from onnxsparse.calibration import load_data
from onnxsparse.calibration.capture import capture
from onnxsparse.graph import PrunePlan, apply_plan, build_groups, masked_copy
from onnxsparse.io import load_model
from onnxsparse.passes.normalize import normalize
from onnxsparse.passes.prune import prune
from onnxsparse.passes.reconstruct import find_consumers, reconstruct

RNG = np.random.default_rng(7)


def _f32(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _calib(n: int, shape: tuple[int, ...], seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)}


def _prune_with(model: ir.Model, removed: dict[str, list[int]], data, **opts):
    """Prune the groups rooted at the named producer weights by hand, repair, and return (pruned, report)."""
    dg = build_groups(model)
    plan = PrunePlan.create(dg, {g.id: removed[g.root.value] for g in dg.prunable if g.root.value in removed})
    assert plan.removed
    source = load_data(data, model)
    rec = reconstruct(dg, plan, source, **opts)
    masks = plan.masks()
    rec.write_weights(model)
    apply_plan(plan)
    rec.write_biases(model, masks)
    return model, rec.report


def _outputs(model: ir.Model, feeds) -> list[np.ndarray]:
    return run(session(ir.to_proto(model)), feeds)


# -- bias compensation ------------------------------------------------------------------------

def _constant_channel_cnn(consumer_bias: bool) -> tuple[ir.Model, list[int]]:
    """conv1 -> relu -> conv2 (no padding); channels 1 and 4 of conv1 have zero filters: constant relu(b) > 0."""
    w1, b1 = _f32(6, 3, 3, 3), np.abs(_f32(6)) + 0.5
    dead = [1, 4]
    w1[dead] = 0.0
    inits = {"w1": w1, "b1": b1, "w2": _f32(5, 6, 3, 3)}
    if consumer_bias:
        inits["b2"] = _f32(5)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"] + (["b2"] if consumer_bias else []), ["y"]),
    ]
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 5, 4, 4])], inits), dead


@pytest.mark.parametrize("consumer_bias", [True, False])
def test_bias_compensation_is_exact_for_constant_channels(consumer_bias: bool) -> None:
    model, dead = _constant_channel_cnn(consumer_bias)
    feeds = _calib(3, (3, 6, 6), seed=11)  # not the calibration data: constant channels are constant everywhere
    expected = _outputs(model, feeds)
    pruned, report = _prune_with(model, {"w1": dead}, _calib(8, (3, 6, 6)), mode="bias", sequential=False)
    (layer,) = report.layers
    assert layer.method == "bias" and layer.kept == 4
    assert layer.error_before > 1e-3 and layer.error_after < 1e-10
    assert pruned.graph.initializers["w2"].const_value.shape == (5, 4, 3, 3)
    assert_close(_outputs(pruned, feeds), expected)


def test_bias_compensation_needs_the_repair() -> None:
    """Without the repair the same pruning is far off (so the exactness test above can fail)."""
    model, dead = _constant_channel_cnn(True)
    feeds = _calib(3, (3, 6, 6), seed=11)
    expected = _outputs(model, feeds)
    dg = build_groups(model)
    (group,) = dg.prunable
    unrepaired = _outputs(masked_copy(model, PrunePlan.create(dg, {group.id: dead})), feeds)
    assert not np.allclose(unrepaired[0], expected[0], atol=1e-2)


def test_flap_picks_constant_channels_and_bias_makes_it_exact() -> None:
    model, dead = _constant_channel_cnn(True)
    feeds = _calib(3, (3, 6, 6), seed=12)
    expected = _outputs(model, feeds)
    result = prune(model, 2 / 6, criterion="flap", calib=_calib(16, (3, 6, 6)), repair="bias", sequential=False)
    assert result.plan.removed and list(result.plan.removed.values())[0] == tuple(dead)
    assert_close(_outputs(result.model, feeds), expected)


@pytest.mark.parametrize("form", ["matmul", "matmul_add", "gemm"])
def test_bias_compensation_dense_consumers(form: str) -> None:
    """A constant hidden neuron of an MLP, folded into the next layer's bias (Add or Gemm C created if missing)."""
    w1, b1, w2 = _f32(4, 6), np.abs(_f32(6)) + 0.1, _f32(6, 3)
    w1[:, [0, 3]] = 0.0
    inits = {"w1": w1, "b1": b1, "w2": w2}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
    ]
    if form == "gemm":
        nodes.append(helper.make_node("Gemm", ["r", "w2"], ["y"]))
        x_shape = ["N", 4]
    else:
        nodes.append(helper.make_node("MatMul", ["r", "w2"], ["m2"] if form == "matmul_add" else ["y"]))
        x_shape = ["N", 5, 4]
        if form == "matmul_add":
            inits["b2"] = _f32(3)
            nodes.append(helper.make_node("Add", ["b2", "m2"], ["y"]))  # bias first, like TorchScript exports
    y_shape = [d for d in x_shape[:-1]] + [3]
    model = make_model(nodes, [("x", x_shape)], [("y", y_shape)], inits)
    shape = tuple(5 if d == 5 else 4 for d in x_shape[1:])
    feeds = _calib(3, shape, seed=13)
    expected = _outputs(model, feeds)
    pruned, report = _prune_with(model, {"w1": [0, 3]}, _calib(16, shape), mode="bias", sequential=False)
    assert [r.method for r in report.layers] == ["bias"]
    assert_close(_outputs(pruned, feeds), expected)
    adds = [n for n in pruned.graph if n.op_type == "Add"]
    assert len(adds) == (1 if form == "gemm" else 2)  # a bias Add appears only for the bare MatMul
    assert [v.name for v in pruned.graph.outputs] == ["y"]


# -- least squares ------------------------------------------------------------------------------

def _linear_combination_cnn() -> tuple[ir.Model, list[int]]:
    """conv1 (no activation) -> conv2 (padding 1): channels 4, 5 of conv1 are linear combinations of 0..3."""
    w1, b1 = _f32(6, 3, 3, 3), _f32(6)
    a = _f32(2, 4)
    w1[4:] = np.einsum("rk,kcij->rcij", a, w1[:4])
    b1[4:] = a @ b1[:4]
    inits = {"w1": w1, "b1": b1, "w2": _f32(5, 6, 3, 3), "b2": _f32(5)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["h", "w2", "b2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 5, 6, 6])], inits), [4, 5]


def test_lstsq_is_exact_for_linearly_dependent_channels() -> None:
    model, removed = _linear_combination_cnn()
    feeds = _calib(2, (3, 6, 6), seed=21)
    expected = _outputs(model, feeds)
    pruned, report = _prune_with(model, {"w1": removed}, _calib(16, (3, 6, 6)), mode="lstsq", damp=1e-9,
                                 sequential=False)
    (layer,) = report.layers
    assert layer.method == "lstsq" and layer.error_before > 1e-2 and layer.error_after < 1e-9
    assert_close(_outputs(pruned, feeds), expected)


def test_lstsq_refits_the_bias_for_affine_combinations() -> None:
    """h5 = A h_K + c: the ones row absorbs c into the consumer's bias (dense consumer without bias)."""
    w1, b1 = _f32(4, 6), _f32(6)
    a = _f32(4)
    w1[:, 5] = w1[:, :4] @ a
    b1[5] = b1[:4] @ a + 0.7
    inits = {"w1": w1, "b1": b1, "w2": _f32(6, 3)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    model = make_model(nodes, [("x", ["N", 4])], [("y", ["N", 3])], inits)
    feeds = _calib(7, (4,), seed=22)
    expected = _outputs(model, feeds)
    pruned, report = _prune_with(model, {"w1": [5]}, _calib(32, (4,)), mode="lstsq", damp=1e-10, sequential=False)
    assert report.layers[0].error_after < 1e-9
    assert_close(_outputs(pruned, feeds), expected)


def test_lstsq_with_default_damping_is_close_but_shrinks() -> None:
    """The ridge (damp 0.01) trades exactness for robustness: small, non-zero error on the same problem."""
    model, removed = _linear_combination_cnn()
    _, report = _prune_with(model, {"w1": removed}, _calib(16, (3, 6, 6)), mode="lstsq", sequential=False)
    (layer,) = report.layers
    assert 1e-9 < layer.error_after < 0.05 * layer.error_before


# -- pruned model == masked model with the same repairs ------------------------------------------

@pytest.mark.parametrize("mode,sequential", [("bias", False), ("lstsq", False), ("lstsq", True), ("bias", True)])
def test_pruned_equals_masked_and_repaired(mode: str, sequential: bool) -> None:
    """digits_cnn_bn: consumers without bias (created), whose own outputs are pruned too (bias sliced), then BN."""
    model = load_model(sample("digits_cnn_bn"))
    normalize(model)
    dg = build_groups(model)
    plan = PrunePlan.create(dg, {g.id: np.arange(0, g.size, 3) for g in dg.prunable})
    source = load_data(str(sample("digits_cnn_bn")).replace("models/digits_cnn_bn.onnx", "data/digits_calib.npz"),
                       model).take(48)
    rec = reconstruct(dg, plan, source, mode=mode, sequential=sequential, measure=False)
    assert rec.biases and rec.weights
    reference = rec.apply_unpruned(masked_copy(model, plan))
    masks = plan.masks()
    rec.write_weights(model)
    apply_plan(plan)
    rec.write_biases(model, masks)
    feeds = {"input": np.random.default_rng(3).standard_normal((4, 1, 8, 8)).astype(np.float32)}
    assert_close(_outputs(model, feeds), _outputs(reference, feeds))


def test_sequential_fit_equals_one_shot_without_upstream_changes() -> None:
    """With one consumer and nothing pruned upstream, the cross Gram equals the Gram: same solution."""
    model, removed = _linear_combination_cnn()
    data = _calib(8, (3, 6, 6))
    a, _ = _prune_with(model.clone(), {"w1": [1, 2]}, data, mode="lstsq", sequential=False)
    b, _ = _prune_with(model.clone(), {"w1": [1, 2]}, data, mode="lstsq", sequential=True)
    for name in ("w2", "b2"):
        np.testing.assert_allclose(a.graph.initializers[name].const_value.numpy(),
                                   b.graph.initializers[name].const_value.numpy(), rtol=1e-5, atol=1e-6)


def test_skipped_consumers_are_reported() -> None:
    """A grouped conv consumer has no single linear view: reported with the reason, never silently."""
    inits = {"w1": _f32(4, 2, 1, 1), "w2": _f32(4, 2, 3, 3)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"]),
        helper.make_node("Conv", ["h", "w2"], ["y"], group=2, pads=[1, 1, 1, 1]),
    ]
    model = make_model(nodes, [("x", ["N", 2, 5, 5])], [("y", ["N", 4, 5, 5])], inits)
    dg = build_groups(model)
    plan = PrunePlan.create(dg, {g.id: [0] for g in dg.prunable})
    (cons,) = find_consumers(dg, plan.masks())
    assert cons.view is None and "grouped" in cons.reason
    rec = reconstruct(dg, plan, load_data(_calib(4, (2, 5, 5)), model), mode="lstsq")
    (layer,) = rec.report.layers
    assert layer.method == "none" and "grouped" in layer.reason and layer.error_before is not None


def test_capture_reference_gives_cross_statistics() -> None:
    model, _ = _linear_combination_cnn()
    dg = build_groups(model)
    cons = find_consumers(dg)
    view = next(c.view for c in cons if c.view is not None)
    from onnxsparse.calibration.capture import LayerRequest

    source = load_data(_calib(6, (3, 6, 6)), model)
    cap = capture(model, source, layers=[LayerRequest(view, gram=True)], reference=model, batch_size=4)
    stats = cap.layers[view.node]
    g, c = stats.second_moments()
    np.testing.assert_allclose(g, c, rtol=1e-12)
    np.testing.assert_allclose(stats.ref_mean, stats.mean, rtol=1e-12)


def test_sequential_lstsq_is_the_least_squares_fit_on_the_repaired_inputs() -> None:
    """x -> fc1 -> relu -> fc2 -> relu -> fc3, both hidden groups pruned.

    Stage 0 re-fits fc2 on the original inputs; stage 1 re-fits fc3 on the inputs produced by the
    *repaired* fc2 against the *original* fc3 outputs - checked against numpy's least squares.
    """
    w1, w2, w3 = _f32(5, 8), _f32(8, 7), _f32(7, 3)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("MatMul", ["r2", "w3"], ["y"]),
    ]
    model = make_model(nodes, [("x", ["N", 5])], [("y", ["N", 3])], {"w1": w1, "w2": w2, "w3": w3})
    data = _calib(64, (5,), seed=4)
    dg = build_groups(model)
    plan = PrunePlan.create(dg, {g.id: [1, 4] for g in dg.prunable})
    rec = reconstruct(dg, plan, load_data(data, model), mode="lstsq", sequential=True, damp=1e-12)
    assert [(r.node, r.stage) for r in rec.report.layers] == [(n.name, s) for n, s in
                                                              zip([list(model.graph)[2], list(model.graph)[4]], [0, 1])]
    keep = np.ones(8, bool)
    keep[[1, 4]] = False
    keep3 = np.ones(7, bool)
    keep3[[1, 4]] = False
    x = data["x"].astype(np.float64)

    def fit(inputs: np.ndarray, target: np.ndarray) -> np.ndarray:
        z = np.concatenate([inputs, np.ones((inputs.shape[0], 1))], axis=1)
        return np.linalg.lstsq(z, target, rcond=None)[0]  # [in + 1, out]: weights, then bias

    r1 = np.maximum(x @ w1, 0)
    sol2 = fit(r1[:, keep], r1 @ w2)
    w2_new = rec.weights["w2"].astype(np.float64)
    np.testing.assert_allclose(w2_new[keep], sol2[:-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w2_new[~keep], 0.0)
    bias2 = rec.biases[list(model.graph)[2].name]
    np.testing.assert_allclose(bias2, sol2[-1], rtol=1e-4, atol=1e-5)
    r2_current = np.maximum(r1[:, keep] @ w2_new[keep] + bias2, 0)  # what fc3 reads after stage 0
    sol3 = fit(r2_current[:, keep3], np.maximum(r1 @ w2, 0) @ w3)
    np.testing.assert_allclose(rec.weights["w3"][keep3], sol3[:-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rec.biases[list(model.graph)[4].name], sol3[-1], rtol=1e-4, atol=1e-5)
