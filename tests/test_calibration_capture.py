"""Activation capture: im2col views match onnxruntime, streamed statistics match numpy on all the data."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from helpers import run, session
from onnx import helper
from test_prune_support import make_model

from onnxsparse.calibration import load_data
from onnxsparse.calibration.capture import LayerRequest, capture, linear_view
from onnxsparse.calibration.stats import ChannelStats, ErrorStats
from onnxsparse.errors import Decline

RNG = np.random.default_rng(3)


def _conv_model(x_shape, w_shape, **attrs) -> ir.Model:
    inits = {"w": RNG.standard_normal(w_shape).astype(np.float32), "b": RNG.standard_normal(w_shape[0]).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)]
    return make_model(nodes, [("x", ["N", *x_shape[1:]])], [("y", None)], inits)


@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    ((2, 3, 7, 6), (4, 3, 3, 2), dict(pads=[1, 1, 1, 1])),
    ((2, 3, 7, 6), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 0, 1])),
    ((2, 3, 7, 6), (4, 3, 3, 2), dict(dilations=[2, 1])),
    ((2, 3, 7, 6), (4, 3, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((2, 3, 7, 6), (4, 3, 2, 2), dict(auto_pad="SAME_LOWER")),
    ((2, 3, 9), (4, 3, 3), dict(strides=[2], pads=[2, 1])),
    ((1, 2, 4, 5, 3), (3, 2, 2, 3, 1), dict(pads=[0, 1, 0, 1, 1, 0])),
])
def test_conv_view_reproduces_onnxruntime(x_shape, w_shape, attrs) -> None:
    model = _conv_model(x_shape, w_shape, **attrs)
    x = RNG.standard_normal(x_shape).astype(np.float32)
    (y,) = run(session(ir.to_proto(model)), {"x": x})
    node = next(iter(model.graph))
    view = linear_view(node, 0, 1)
    assert view.in_features == int(np.prod(w_shape[1:]))
    w = model.graph.initializers["w"].const_value.numpy().reshape(w_shape[0], -1)
    b = model.graph.initializers["b"].const_value.numpy()
    rows = view.rows(x)
    np.testing.assert_allclose(rows @ w.T + b, np.moveaxis(y, 1, -1).reshape(-1, w_shape[0]), rtol=1e-4, atol=1e-5)
    colsum, count = view.colsum(x)
    assert count == rows.shape[0]
    np.testing.assert_allclose(colsum, rows.sum(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-5)
    index = np.array([0, 2, rows.shape[0] - 1])
    np.testing.assert_array_equal(view.rows(x, index), rows[index])


def test_grouped_conv_has_no_view() -> None:
    model = _conv_model((1, 4, 5, 5), (4, 2, 3, 3), group=2)
    with pytest.raises(Decline, match=r"grouped convolution \(group=2\) has no single linear view"):
        linear_view(next(iter(model.graph)), 0, 1)


def _mlp() -> ir.Model:
    inits = {"w1": RNG.standard_normal((5, 6)).astype(np.float32), "w2": RNG.standard_normal((6, 3)).astype(np.float32)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    return make_model(nodes, [("x", ["N", 4, 5])], [("y", ["N", 4, 3])], inits)


def test_streamed_statistics_equal_numpy_on_all_data() -> None:
    model = _mlp()
    x = RNG.standard_normal((10, 4, 5)).astype(np.float32)
    source = load_data({"x": x}, model)
    view = linear_view(next(n for n in model.graph if n.name == "fc2"), 0, 2)
    cap = capture(model, source, channels=[("r", 2), ("x", 2)], layers=[LayerRequest(view, gram=True)], batch_size=3)
    assert cap.samples == 10 and cap.batches == 4
    r = np.maximum(x @ model.graph.initializers["w1"].const_value.numpy(), 0).reshape(-1, 6).astype(np.float64)
    stats = cap.channel("r", 2)
    np.testing.assert_allclose(stats.mean, r.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.var, r.var(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.l2, np.linalg.norm(r, axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats.mean_abs, np.abs(r).mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cap.channel("x", 2).mean, x.reshape(-1, 5).mean(axis=0), rtol=1e-5, atol=1e-6)
    layer = cap.layers[view.node]
    z = np.concatenate([r, np.ones((r.shape[0], 1))], axis=1)
    g, c = layer.second_moments()
    np.testing.assert_allclose(g, z.T @ z / z.shape[0], rtol=1e-5, atol=1e-6)
    assert c is g and layer.sampled == layer.rows == 40
    np.testing.assert_allclose(layer.mean, r.mean(axis=0), rtol=1e-5, atol=1e-7)


def test_gram_rows_are_bounded_and_deterministic() -> None:
    model = _conv_model((1, 3, 12, 12), (4, 3, 3, 3), pads=[1, 1, 1, 1])
    x = RNG.standard_normal((9, 3, 12, 12)).astype(np.float32)
    source = load_data({"x": x}, model)
    view = linear_view(next(iter(model.graph)), 0, 1)
    runs = [capture(model, source, layers=[LayerRequest(view, gram=True)], batch_size=4, max_rows=100, seed=5)
            for _ in range(2)]
    a, b = (r.layers[view.node] for r in runs)
    assert a.sampled == 3 * 100 and a.rows == 9 * 144  # every batch has > 100 positions: 100 sampled each
    np.testing.assert_array_equal(a.gram, b.gram)
    exact = view.rows(x).sum(axis=0, dtype=np.float64)
    np.testing.assert_allclose(a.colsum, exact, rtol=1e-5, atol=1e-4)  # column sums use every row
    other = capture(model, source, layers=[LayerRequest(view, gram=True)], batch_size=4, max_rows=100, seed=6)
    assert not np.array_equal(other.layers[view.node].gram, a.gram)


def test_channel_and_error_stats_edge_cases() -> None:
    s = ChannelStats(axis=1, channels=2)
    s.update(np.array([[1.0, -2.0], [3.0, -2.0]]))
    np.testing.assert_allclose(s.var, [1.0, 0.0])
    with pytest.raises(ValueError):
        s.update(np.zeros((2, 3)))
    e = ErrorStats()
    e.update(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    assert e.relative == pytest.approx(1 / 5)
    assert ErrorStats().relative == 0.0


def test_fixed_batch_models_are_run_in_batches_of_that_size() -> None:
    inits = {"w": RNG.standard_normal((5, 6)).astype(np.float32)}
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [2, 5])], [("y", [2, 6])], inits)
    x = RNG.standard_normal((5, 5)).astype(np.float32)
    cap = capture(model, load_data({"x": x}, model), channels=[("x", 1)], batch_size=32)
    assert cap.batches == 2 and cap.samples == 4  # the fifth sample cannot fill a batch of 2
    np.testing.assert_allclose(cap.channel("x", 1).mean, x[:4].mean(axis=0), rtol=1e-5, atol=1e-6)
    from onnxsparse.errors import DataError

    with pytest.raises(DataError, match="fixed to 2"):
        capture(model, load_data({"x": x[:1]}, model), channels=[("x", 1)])
