"""Shared test utilities: sample paths, onnxruntime runs, in-process CLI calls."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxsparse._ort import ORT_TYPE_TO_NUMPY

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "models"
DATA = ROOT / "samples" / "data"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def sample(name: str) -> Path:
    """Path of a committed sample model (``samples/models/<name>.onnx``)."""
    path = SAMPLES / f"{name}.onnx"
    assert path.exists(), f"missing sample {path}; run python samples/build_samples.py"
    return path


def light(name: str) -> Path:
    """Path of an onnx test-data 'light' model (e.g. ``resnet50``)."""
    return LIGHT / f"light_{name}.onnx"


def session(model: Any) -> ort.InferenceSession:
    """An onnxruntime CPU session for a path, bytes, ModelProto or onnx_ir model."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    if isinstance(model, (str, os.PathLike)):
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    if not isinstance(model, (bytes, onnx.ModelProto)):
        import onnx_ir as ir

        model = ir.to_proto(model)
    if isinstance(model, onnx.ModelProto):
        from onnxsparse.io import max_runtime_ir_version

        model.ir_version = min(model.ir_version, max_runtime_ir_version())
        model = model.SerializeToString()
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def random_feeds(model: Any, batch: int = 2, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for every model input; symbolic dims take ``dims[name]``, else ``batch``."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (dims or {}).get(str(d), batch) for d in arg.shape]
        dtype = ORT_TYPE_TO_NUMPY.get(arg.type, np.float32)
        if np.dtype(dtype).kind == "f":
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[arg.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def run(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    return sess.run(None, feeds)


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``onnxsparse`` in-process; returns (exit code, stdout, stderr)."""
    from onnxsparse.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors / --help
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def cli_json(*argv: str) -> dict[str, Any]:
    code, out, err = cli(*argv, "--json")
    assert code == 0, err
    return json.loads(out)
