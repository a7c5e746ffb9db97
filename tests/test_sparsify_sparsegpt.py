"""SparseGPT in sparsify: OBS pruning with weight updates, checked against an unblocked transliteration."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import session
from test_formats_util import mlp_model, qdq_model

from onnxsparse.errors import UsageError
from onnxsparse.io import load_model, save_model
from onnxsparse.passes.sparsify import sparsify
from onnxsparse.sparsity import nm_violations
from onnxsparse.sparsity.sparsegpt import _inverse_cholesky, sparsegpt


def _reference(w: np.ndarray, h: np.ndarray, n: int, m: int) -> np.ndarray:
    """SparseGPT for N:M without lazy block updates (Frantar & Alistarh 2023, Algorithm 1)."""
    w = w.astype(np.float64).copy()
    hinv = _inverse_cholesky(h)
    drop = np.zeros(w.shape, dtype=bool)
    for i in range(w.shape[1]):
        if i % m == 0:
            saliency = (w[:, i:i + m] / np.diag(hinv)[i:i + m]) ** 2
            for r in range(w.shape[0]):
                drop[r, i + np.argsort(saliency[r], kind="stable")[: m - n]] = True
        q = np.where(drop[:, i], 0.0, w[:, i])
        err = (w[:, i] - q) / hinv[i, i]
        w[:, i:] -= np.outer(err, hinv[i, i:])
        w[:, i] = q
    return w


def _layer(rng: np.random.Generator, rows: int = 24, cols: int = 64, samples: int = 400):
    x = rng.standard_normal((samples, cols)) @ rng.standard_normal((cols, cols)) * 0.3  # correlated inputs
    return rng.standard_normal((rows, cols)), x, x.T @ x / samples


def test_blocked_updates_match_the_unblocked_algorithm():
    w, _, h = _layer(np.random.default_rng(0))
    for block in (4, 16, 64):
        got = sparsegpt(w, h, 0.5, (2, 4), block=block)
        np.testing.assert_allclose(got, _reference(w, h, 2, 4), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("nm", [None, (2, 4), (1, 8)])
def test_pruned_layer_output_error_is_below_plain_masking(nm):
    w, x, h = _layer(np.random.default_rng(1))
    sparsity = 0.6 if nm is None else 1 - nm[0] / nm[1]
    new = sparsegpt(w, h, sparsity, nm, block=32)
    zeros = new == 0
    if nm is None:
        assert zeros.sum() == pytest.approx(sparsity * w.size, abs=2)
    else:
        assert nm_violations(new, nm[0], nm[1], axis=1) == 0
    masked = np.where(zeros, 0.0, w)  # the same mask without the updates
    error = np.linalg.norm(x @ (new - w).T)
    assert error < np.linalg.norm(x @ (masked - w).T)  # the updates repair part of the loss
    if nm is None:  # magnitude pruning to the same pattern and count
        magnitude = w.copy()
        magnitude.reshape(-1)[np.argsort(np.abs(w), axis=None)[: int(zeros.sum())]] = 0
    else:
        groups = np.abs(w).reshape(w.shape[0], -1, nm[1])
        drop = np.argsort(groups, axis=-1)[..., : nm[1] - nm[0]]
        magnitude = w.reshape(groups.shape).copy()
        np.put_along_axis(magnitude, drop, 0.0, axis=-1)
        magnitude = magnitude.reshape(w.shape)
    assert error < 0.95 * np.linalg.norm(x @ (magnitude - w).T)


def _top1(path, data, labels) -> float:
    sess = session(str(path))
    return float((sess.run(None, {i.name: data[i.name] for i in sess.get_inputs()})[0].argmax(-1) == labels).mean())


@pytest.mark.parametrize("name,calib,test,pattern,floor", [
    ("digits_transformer", "digits_calib_tokens.npz", "digits_test_tokens.npz", "0.7", 0.85),
    ("digits_cnn", "digits_calib.npz", "digits_test.npz", "2:4", 0.95),
])
def test_sparsegpt_on_the_trained_digits_models(tmp_path, name, calib, test, pattern, floor):
    """Held-out top-1 after pruning every linear weight; magnitude at the same target is far below."""
    data = dict(np.load(f"samples/data/{test}"))
    labels = np.load("samples/data/digits_test_labels.npy")
    nm = ":" in pattern
    scores = {}
    for criterion in ("magnitude", "sparsegpt"):
        model = load_model(f"samples/models/{name}.onnx")
        report = sparsify(model, sparsity=None if nm else float(pattern), pattern=pattern if nm else "unstructured",
                          criterion=criterion, calib=f"samples/data/{calib}", format="auto", min_size=0,
                          allocate="uniform")  # the criteria alone, same ratios
        save_model(model, tmp_path / f"{criterion}.onnx")
        scores[criterion] = _top1(tmp_path / f"{criterion}.onnx", data, labels)
    assert scores["sparsegpt"] >= floor and scores["sparsegpt"] >= scores["magnitude"] + 0.1, scores
    assert any(n.startswith("sparsegpt updated") for n in report.notes)


def test_stored_sparsegpt_weights_decode_exactly(tmp_path):
    model = load_model("samples/models/digits_transformer.onnx")
    sparsify(model, sparsity=0.6, criterion="sparsegpt", calib="samples/data/digits_calib_tokens.npz",
             format="dense", min_size=0)
    save_model(model, tmp_path / "dense.onnx")
    sparsify(model, format="delta", min_size=0)  # lossless re-encode of the updated weights
    save_model(model, tmp_path / "delta.onnx")
    feeds = {k: v[:16] for k, v in np.load("samples/data/digits_test_tokens.npz").items()}
    a = session(str(tmp_path / "dense.onnx")).run(None, feeds)
    b = session(str(tmp_path / "delta.onnx")).run(None, feeds)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_weights_sparsegpt_cannot_update_fall_back_with_a_note():
    model = load_model(qdq_model(np.random.default_rng(2)))
    report = sparsify(model, sparsity=0.5, criterion="sparsegpt", calib="random", format="dense", min_size=0)
    (row,) = [r for r in report.tensors if r.pruned]
    assert "quantized weight" in row.note and "scored by magnitude" in row.note


@pytest.mark.parametrize("kwargs,message", [
    ({"pattern": "block:4x4", "sparsity": 0.5}, "unstructured and N:M"),
    ({"pattern": "row", "sparsity": 0.5}, "unstructured and N:M"),
    ({"global_scope": True, "sparsity": 0.5}, "layer by layer"),
    ({"sparsity": 0.5, "calib": None}, "needs calibration data"),
])
def test_sparsegpt_option_errors(kwargs, message):
    kwargs = {"calib": "random", **kwargs}
    with pytest.raises(UsageError, match=message):
        sparsify(load_model(mlp_model(np.random.default_rng(0))), criterion="sparsegpt", format="dense", **kwargs)


def test_hessians_in_many_small_passes_give_the_same_weights(monkeypatch):
    """Passes bound the Gram memory (one per layer here); the weights must not depend on them."""
    import onnxsparse.sparsity.sparsegpt as sg

    def pruned() -> dict[str, np.ndarray]:
        model = load_model("samples/models/digits_transformer.onnx")
        sparsify(model, sparsity=0.5, criterion="sparsegpt", calib="samples/data/digits_calib_tokens.npz",
                 format="dense", min_size=0, calib_samples=32)
        return {n: v.const_value.numpy() for n, v in model.graph.initializers.items()}

    one_pass = pruned()
    calls = []
    from onnxsparse.calibration import capture as capture_module

    real_capture = capture_module.capture
    monkeypatch.setattr(capture_module, "capture", lambda *a, **k: calls.append(1) or real_capture(*a, **k))
    monkeypatch.setattr(sg, "GRAM_BUDGET", 1)
    many_passes = pruned()
    assert len(calls) > 4  # one pass per layer
    assert one_pass.keys() == many_passes.keys()
    assert all(np.array_equal(one_pass[n], many_passes[n]) for n in one_pass)
