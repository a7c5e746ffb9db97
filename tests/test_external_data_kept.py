"""A model that came with external data leaves with it, whatever its new size (issue 16)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import DATA, cli, sample

from onnxsparse.io import external_data_files


@pytest.fixture()
def external_model(tmp_path):
    """digits_cnn (58 KB, far below the size that forces external data) with every weight in m.onnx.data."""
    folder = tmp_path / "in"
    folder.mkdir()
    model = onnx.load(sample("digits_cnn"))
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    assert external_data_files(folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize("command", [
    ["prune", "--channels", "0.5"],
    ["sparsify", "--sparsity", "0.5"],
    ["densify"],
    ["quantize", "--mode", "dynamic"],
    ["run", "preset:smallest-file"],
])
def test_outputs_keep_external_data(external_model, tmp_path, command):
    out = tmp_path / "out.onnx"
    if command[0] == "run":
        args = ["run", command[1], external_model, "-o", out]
    else:
        args = [command[0], external_model, "-o", out, *command[1:]]
    code, _, err = cli(*args)
    assert code == 0, err
    files = external_data_files(out)
    assert files == [tmp_path / "out.onnx.data"], files
    proto = onnx.load(out)  # loads with its data
    onnx.checker.check_model(proto)
    import onnxruntime as ort

    x = np.load(DATA / "digits_test.npz")["input"][:4]
    (y,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert np.isfinite(y).all() and y.shape == (4, 10)


def test_inline_input_stays_inline(tmp_path):
    out = tmp_path / "out.onnx"
    code, _, err = cli("prune", sample("digits_cnn"), "-o", out, "--channels", "0.5")
    assert code == 0, err
    assert external_data_files(out) == [] and not (tmp_path / "out.onnx.data").exists()
