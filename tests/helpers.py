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


def runtime_bytes(model: Any) -> bytes:
    """A proto / onnx_ir model serialised at an IR version this onnxruntime reads (a snapshot)."""
    import onnx_ir as ir

    from onnxsparse.io import max_runtime_ir_version

    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    return proto.SerializeToString()


def assert_pruned_matches_masked(name: str, original: Any, masked: Any, pruned: Any,
                                 feeds: Any, rel_tol: float = 1e-4) -> None:
    """The structured-pruning oracle: ``pruned`` computes what ``masked`` (the original with the
    removed units made to contribute nothing) computes, to ``rel_tol`` of each output's peak, and the
    masking changed the output (else the check proves nothing).  ``feeds``: a dict, or a function of
    the masked model's session returning one."""
    s_orig, s_masked, s_pruned = session(original), session(masked), session(pruned)
    assert [i.name for i in s_pruned.get_inputs()] == [i.name for i in s_masked.get_inputs()]
    assert [o.name for o in s_pruned.get_outputs()] == [o.name for o in s_masked.get_outputs()]
    feeds = feeds(s_masked) if callable(feeds) else feeds
    expected, got, reference = s_masked.run(None, feeds), s_pruned.run(None, feeds), s_orig.run(None, feeds)
    differs = False
    for e, g, r in zip(expected, got, reference):
        assert e.shape == g.shape and np.isfinite(e).all(), name
        peak = float(np.abs(e).max())
        assert peak > 0, f"{name}: the output is all zeros, the oracle proves nothing"
        err = float(np.abs(g.astype(np.float64) - e).max()) / peak
        assert err < rel_tol, f"{name}: pruned vs masked relative error {err:.2e}"
        differs |= not np.allclose(r, e, rtol=1e-3, atol=1e-4 * peak)
    assert differs, f"{name}: masking changed nothing, the oracle proves nothing"
