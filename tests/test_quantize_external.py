"""Issue 16: the external-data path of quantize (weights never resident as float copies) gives the same model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsparse.quantize.api as api
from onnxsparse.quantize import quantize


def _mlp(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w[:, ::3] = 0.0  # zeros the check must find kept
    b = rng.standard_normal(64).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _weights(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path), load_external_data=True)
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _options(mode: str) -> dict[str, Any]:
    """quantize() keywords for :func:`_mlp`'s model in ``mode`` (int4 blocks fit its 64-wide weights)."""
    return {"mode": mode, "calib": "random", "shape": {"x": (4, 64)}, **({"block_size": 32} if mode == "int4" else {})}


@pytest.mark.parametrize("mode", ["dynamic", "int4"])
def test_external_path_matches_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    src = _mlp(tmp_path / "mlp.onnx")
    opts = _options(mode)
    inline = quantize(src, tmp_path / "inline.onnx", **opts)
    monkeypatch.setattr(api, "EXTERNAL_DATA_THRESHOLD", 0)
    ext = quantize(src, tmp_path / "ext.onnx", **opts)
    onnx.checker.check_model(str(tmp_path / "ext.onnx"))
    a, b = inline.report.as_dict(), ext.report.as_dict()
    for key in ("zeros", "quantized", "ops_after", "check", "node_errors"):
        assert a[key] == b[key], key
    assert a["node_errors"], "the per-node errors (one session at a time on the external path) were measured"
    assert a["zeros"]["weights_checked"] == 1 and a["zeros"]["zeros_kept"] == a["zeros"]["zeros_before"] > 0
    got, want = _weights(tmp_path / "ext.onnx"), _weights(tmp_path / "inline.onnx")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16])
@pytest.mark.parametrize("axis,block", [(0, 0), (1, 0), (0, 4)])
def test_dequant_float32_path_matches_int64(dtype: type, axis: int, block: int) -> None:
    from onnxsparse.quantize.weights import _broadcast, _dequant

    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    q: np.ndarray = rng.integers(info.min, info.max, size=(8, 12), endpoint=True).astype(dtype)
    shape = list(q.shape) if block else [q.shape[axis]]  # blocked: the weight's rank, the axis divided
    if block:
        shape[axis] //= block
    scale = rng.uniform(1e-3, 2.0, size=shape).astype(np.float32)
    zp: np.ndarray = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    s = _broadcast(scale, q.shape, axis, block)
    z = _broadcast(zp.astype(np.int64), q.shape, axis, block)
    want = ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)
    got = _dequant(q, scale, zp, axis, block)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
