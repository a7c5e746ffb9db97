"""Shared helpers for the validate/bench tests (no tests here).

Candidates are made by editing the weights of the trained digits CNN, tiny
models by hand with onnx.helper, and GPU providers by mocking onnxruntime's
provider list and sessions (this machine has no GPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from helpers import DATA, sample

DIGITS_X = DATA / "digits_test.npz"
DIGITS_Y = DATA / "digits_test_labels.npy"
FAST = ("--runs", "5", "--warmup", "1", "--no-memory", "-q")


def edited_digits(path: Path, *, noise: float = 0.0, seed: int = 0, kill_class: int | None = None) -> Path:
    """digits_cnn with relative Gaussian noise on every weight and/or one class made unreachable."""
    model = onnx.load(str(sample("digits_cnn")))
    rng = np.random.default_rng(seed)
    for i, init in enumerate(model.graph.initializer):
        arr = numpy_helper.to_array(init).astype(np.float32)
        if noise:
            arr = arr + noise * np.abs(arr).mean() * rng.standard_normal(arr.shape).astype(np.float32)
        if kill_class is not None and init.name == "classifier.weight":
            arr = arr.copy()
            arr[kill_class] = 0.0
        if kill_class is not None and init.name == "classifier.bias":
            arr = arr.copy()
            arr[kill_class] = -1e4
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))
    return path


def tiny_model(path: Path, *, inputs=(("x", TensorProto.FLOAT, ["N", 4]),), outputs=("y",), op: str = "Relu") -> Path:
    """One unary op from the first input to every output (used for signature mismatches)."""
    graph_inputs = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    elem, shape = inputs[0][1], inputs[0][2]
    nodes = [helper.make_node(op, [inputs[0][0]], [out]) for out in outputs]
    graph_outputs = [helper.make_tensor_value_info(out, elem, shape) for out in outputs]
    model = helper.make_model(helper.make_graph(nodes, "tiny", graph_inputs, graph_outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def digits_predictions(model_path: Path) -> np.ndarray:
    """argmax predictions of a digits model on the test split, computed independently."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = np.load(DIGITS_X)["input"]
    return sess.run(None, {"input": x})[0].argmax(-1)


class FakeSessions:
    """Mock ``onnxruntime`` so ``available`` EPs look installed; sessions really run on the CPU.

    ``reported(requested_chain) -> list`` decides what ``session.get_providers()`` claims
    (the requested chain = the EP worked; ``["CPUExecutionProvider"]`` = it fell back);
    ``fail(source, chain) -> bool`` makes session creation raise.
    Every requested provider chain is recorded in ``calls``.
    """

    def __init__(self, monkeypatch, available, reported=lambda chain: list(chain), fail=lambda source, chain: False):
        self.calls: list[list[str]] = []
        real = ort.InferenceSession
        calls = self.calls

        class Session:
            def __init__(self, source, options=None, providers=None, **kwargs):
                chain = list(providers or ["CPUExecutionProvider"])
                calls.append(chain)
                if fail(source, chain):
                    raise RuntimeError(f"{chain[0]}: CUDA driver version is insufficient")
                self._inner = real(source, options, providers=["CPUExecutionProvider"])
                self._providers = reported(chain)

            def get_providers(self):
                return list(self._providers)

            def __getattr__(self, name):
                return getattr(self._inner, name)

        monkeypatch.setattr(ort, "get_available_providers", lambda: list(available))
        monkeypatch.setattr(ort, "InferenceSession", Session)
