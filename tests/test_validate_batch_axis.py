"""Task metrics and per-sample fidelity on outputs whose samples are not on axis 0 (CTC's [T, batch, C])."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsparse.validate import validate
from onnxsparse.validate.batch_axis import batch_axis, batch_symbols

T, F, C = 5, 6, 4


def _time_major(tmp_path, symbolic: bool, weight_scale: float = 1.0):
    """x [N, T, F] -> logits [T, N, C] (a Transpose after the classifier, as CTC recognisers export)."""
    batch = "batch" if symbolic else 3
    w = np.random.default_rng(1).standard_normal((F, C)).astype(np.float32) * weight_scale
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Transpose", ["y"], ["logits"], perm=[1, 0, 2])],
        "ctc_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, T, F])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [T, batch, C])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"ctc_{symbolic}_{weight_scale}.onnx"
    onnx.save(model, path)
    return path, w


def test_batch_axis_found_from_shared_symbol():
    symbols = batch_symbols([["batch", 5, 6], None, []])
    assert symbols == {"batch"}
    assert batch_axis([5, "batch", 4], (5, 3, 4), 3, symbols) == 1
    assert batch_axis(["batch", 5, 4], (3, 5, 4), 3, symbols) == 0
    # static dims: the one axis of the fed batch size; ambiguous -> 0
    assert batch_axis([5, 3, 4], (5, 3, 4), 3, set()) == 1
    assert batch_axis([3, 3, 4], (3, 3, 4), 3, set()) == 0


@pytest.mark.parametrize("symbolic", [True, False])
def test_time_major_top1_matches_hand_computed(tmp_path, symbolic):
    ref, w = _time_major(tmp_path, symbolic)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, T, F)).astype(np.float32)
    predicted = (x @ w).argmax(-1)  # [N, T]
    labels = predicted.copy()
    labels[:3, 0] = (labels[:3, 0] + 1) % C  # 3 of 45 positions wrong
    result = validate(ref, ref, data={"x": x}, labels=labels, batch=3, runs=2, warmup=0, memory=False)
    (metric,) = result.providers[0].metrics
    assert metric.reference == pytest.approx(42 / 45)
    fid = result.providers[0].fidelity[0]
    assert fid.shape == [9, T, C]


def test_time_major_per_sample_cosine(tmp_path):
    """Per-sample cosine is taken over each sample's [T, C] block, not over one time step of all samples."""
    ref, _ = _time_major(tmp_path, True)
    cand, _ = _time_major(tmp_path, True, weight_scale=-1.0)
    x = np.random.default_rng(2).standard_normal((6, T, F)).astype(np.float32)
    result = validate(ref, cand, data={"x": x}, batch=3, runs=2, warmup=0, memory=False)
    fid = result.providers[0].fidelity[0]
    assert fid.cosine == pytest.approx(-1.0, abs=1e-6)
    assert fid.shape == [6, T, C]
