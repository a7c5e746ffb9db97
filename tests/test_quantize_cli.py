"""``onnxsparse quantize`` end to end: happy paths, reports, and one-line errors for bad data."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from cli_asserts import one_line_error
from helpers import DATA, cli, run, sample
from onnx import numpy_helper
from test_quantize_helpers import assert_zeros_exact, cnn_model, mlp_model, prune, quantized_name, wide_mlp


@pytest.fixture()
def mlp_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(prune(mlp_model(), "rows"), path)
    return path


@pytest.fixture()
def calib_path(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((32, 48)).astype(np.float32))
    return path


@pytest.mark.parametrize("mode", ["dynamic", "static", "int4"])
def test_cli_modes_json(tmp_path, mlp_path, calib_path, mode):
    out = tmp_path / f"{mode}.onnx"
    code, stdout, err = cli("quantize", mlp_path, "-o", out, "--mode", mode, "--calib", calib_path, "--json")
    assert code == 0, err
    data = json.loads(stdout)
    assert data["mode"] == mode and data["output"] == str(out)
    assert data["zeros"]["exact"] is True and data["zeros"]["zeros_before"] > 0
    assert data["bytes_after"] < data["bytes_before"]
    assert data["check"]["samples"] == 32
    for key in ("activation_type", "weight_type", "per_channel", "reduce_range", "calibration", "format"):
        assert key in data["settings"]
    assert data["settings"]["reasons"]["reduce_range"]
    assert onnx.load(out).graph.node


def test_cli_summary_and_report_files(tmp_path, mlp_path, calib_path):
    out = tmp_path / "q.onnx"
    report_md = tmp_path / "q.md"
    code, stdout, err = cli(
        "quantize", mlp_path, "-o", out, "--mode", "static", "--calib", calib_path,
        "--exclude", "fc3", "--report", report_md,
    )
    assert code == 0, err
    for needle in ("static (qdq)", "int8, symmetric, per-channel", "reduce_range", "exact zeros kept",
                   "check on this CPU", "excluded by the user (--exclude fc3)", "QDQ"):
        assert needle in stdout, needle
    text = report_md.read_text()
    assert "## excluded" in text and "fc3" in text and "## settings" in text
    report_json = tmp_path / "q.json"
    code, _, err = cli("quantize", mlp_path, "-o", out, "--force", "--mode", "int4", "--report", report_json, "-q")
    assert code == 0, err
    data = json.loads(report_json.read_text())
    assert data["settings"]["block_size"] == 32 and data["kernels"].startswith("MatMulNBits")


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"input": np.zeros((4, 48), np.float32)}, "no data for model input(s) ['x']"),
        ({"x": np.zeros((4, 47), np.float32)}, "input 'x' has shape [4, 47], model expects ['batch', 48]"),
        ({"x": np.zeros((4, 2, 48), np.float32)}, "input 'x' has rank 3"),
        ({"x": np.zeros((4, 48), np.int64)}, "input 'x' has dtype int64, model expects float32"),
    ],
    ids=["wrong-name", "wrong-shape", "wrong-rank", "wrong-dtype"],
)
def test_cli_bad_calibration_file(tmp_path, mlp_path, arrays, needle):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    out = tmp_path / "q.onnx"
    line = one_line_error(*cli("quantize", mlp_path, "-o", out, "--mode", "static", "--calib", bad))
    assert needle in line
    assert str(bad) in line
    assert not out.exists()
    assert not list(tmp_path.glob(".onnxsparse-*")), "temporary folder left behind"


def test_cli_bad_calibration_sample_model(tmp_path):
    """The trained sample with its real data layout: wrong layout, wrong dtype, not an npz."""
    model = sample("digits_cnn")
    out = tmp_path / "q.onnx"
    tokens = DATA / "digits_calib_tokens.npz"  # [N, 8, 8] tokens for the transformer: wrong rank here
    line = one_line_error(*cli("quantize", model, "-o", out, "--mode", "static", "--calib", tokens))
    assert "rank 3" in line
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    line = one_line_error(*cli("quantize", model, "-o", out, "--mode", "static", "--calib", junk))
    assert "cannot read data file" in line
    line = one_line_error(*cli("quantize", model, "-o", out, "--mode", "static", "--calib", tmp_path / "nope.npz"))
    assert "data not found" in line
    assert not out.exists()


def test_cli_data_that_breaks_the_model_is_one_line(tmp_path):
    """Dynamic dims pass the file checks; a length the model cannot take fails in one line."""
    model = sample("digits_transformer")
    bad = tmp_path / "seq9.npz"
    np.savez(bad, input=np.zeros((4, 9, 8), np.float32))  # positional table has 8 rows
    line = one_line_error(*cli("quantize", model, "-o", tmp_path / "q.onnx", "--mode", "static", "--calib", bad))
    assert "does not run on this data" in line and "node" in line


def test_cli_usage_errors(tmp_path, mlp_path, calib_path):
    out = tmp_path / "q.onnx"
    line = one_line_error(*cli("quantize", mlp_path, "-o", out, "--mode", "static"))
    assert "needs calibration data" in line
    line = one_line_error(*cli("quantize", mlp_path, "-o", out, "--exclude", "fc_1"))
    assert "did you mean 'fc1'" in line
    line = one_line_error(*cli("quantize", mlp_path, "-o", out, "--mode", "int4", "--per-channel"))
    assert "--per-channel does not apply" in line
    line = one_line_error(*cli("quantize", mlp_path, "-o", mlp_path))
    assert "overwrite the input" in line
    line = one_line_error(*cli("quantize", tmp_path / "missing.onnx", "-o", out))
    assert "model file not found" in line
    code, _, err = cli("quantize", mlp_path, "-o", out, "--mode", "float8")
    assert code == 2 and "unknown quantization mode 'float8'" in err  # the generated flag's wording


def test_cli_random_calibration_with_shape(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(cnn_model(), path)
    out = tmp_path / "q.onnx"
    code, stdout, err = cli("quantize", path, "-o", out, "--mode", "static", "--calib", "random",
                            "--shape", "x=1x3x12x12", "--calib-samples", "8", "--json")
    assert code == 0, err
    data = json.loads(stdout)
    assert data["calibration"]["samples"] == 8 and data["calibration"]["data"] == "random data"
    assert any("random data" in w for w in data["warnings"])


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("pattern", ["rows", "elements"])
def test_quantize_then_sparsify_stores_int8_sparse(tmp_path, mode, pattern):
    """Pruned -> quantize -> sparsify: the int8 weights are stored sparse, losslessly."""
    if importlib.util.find_spec("onnxsparse.cli.sparsify_cmd") is None:
        pytest.skip("sparsify is not available")
    fp32 = prune(wide_mlp(), pattern, 0.8)
    src, q, s, d = (tmp_path / f"{n}.onnx" for n in ("fp32", "q", "sparse", "dense"))
    onnx.save(fp32, src)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32))
    code, _, err = cli("quantize", src, "-o", q, "--mode", mode, "--calib", calib, "-q")
    assert code == 0, err
    code, stdout, err = cli("sparsify", q, "-o", s, "--format", "auto", "--json")
    assert code == 0, err
    stored = {t["name"]: t["format"] for t in json.loads(stdout)["tensors"]}
    names = [quantized_name(fp32, onnx.load(q), w) for w in ("w1", "w2")]
    assert all(stored[name] != "dense" for name in names), stored
    # 80% zeros: int8 (1/4 of fp32) stored sparse is at least 2x smaller again.
    assert s.stat().st_size * 2 < q.stat().st_size < src.stat().st_size / 3
    x = {"x": np.random.default_rng(1).standard_normal((4, 256)).astype(np.float32)}
    np.testing.assert_array_equal(run(s, x)[0], run(q, x)[0])
    # Decoding gives back exactly the quantizer's int8 weights, pruned zeros included.
    code, _, err = cli("densify", s, "-o", d)
    assert code == 0, err
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(q).graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(d).graph.initializer}
    for name in names:
        assert after[name].dtype == np.int8
        np.testing.assert_array_equal(after[name], before[name])
    assert assert_zeros_exact(fp32, onnx.load(d), expect={"w1", "w2"}) > 0
