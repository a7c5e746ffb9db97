"""Activation-aware sparsity: Wanda scores from calibration data, and per-row selection."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import cli, session
from onnx import TensorProto, helper, numpy_helper
from test_formats_util import conv_model, matmul_integer_model, mlp_model

from onnxsparse.calibration.data import DataSource
from onnxsparse.errors import UsageError
from onnxsparse.io import load_model, save_model
from onnxsparse.passes.sparsify import sparsify
from onnxsparse.sparsity import find_weights
from onnxsparse.sparsity.activations import input_feature_scales


def _source(model: onnx.ModelProto, samples: int = 40, seed: int = 0) -> tuple[DataSource, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else samples for d in value.type.tensor_type.shape.dim]
        dims[0] = samples
        arrays[value.name] = (rng.standard_normal(dims) * rng.uniform(0.1, 3.0, dims[1:])).astype(np.float32)
    return DataSource(arrays, "test data"), arrays


def _intermediates(model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    for name in names:
        proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    outs = session(proto).run(names, feeds)
    return dict(zip(names, outs))


def test_scales_are_input_feature_norms_for_matmul_and_gemm():
    proto = mlp_model(np.random.default_rng(0))
    model = load_model(proto)
    source, feeds = _source(proto)
    scales, reasons = input_feature_scales(model, [w for w in find_weights(model) if w.prunable], source,
                                           batch_size=16)
    assert not reasons
    acts = _intermediates(proto, ["r0", "r1"], feeds)
    # MatMul(x, w0): x's features along w0's axis 0; Gemm(r0, w1, transB): w1 is [out, in]; MatMul(r1, w2)
    expected = {
        "w0": np.sqrt((feeds["x"].astype(np.float64) ** 2).sum(0)).reshape(-1, 1),
        "w1": np.sqrt((acts["r0"].astype(np.float64) ** 2).sum(0)).reshape(1, -1),
        "w2": np.sqrt((acts["r1"].astype(np.float64) ** 2).sum(0)).reshape(-1, 1),
    }
    for name, want in expected.items():
        assert scales[name].shape == want.shape
        np.testing.assert_allclose(scales[name], want, rtol=1e-5)


def _grouped_conv(rng: np.random.Generator, group: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = rng.standard_normal((12, 8 // group, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=group, pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


@pytest.mark.parametrize("group", [1, 2, 4])
def test_conv_scales_per_im2col_column_or_per_group_channel(group):
    proto = _grouped_conv(np.random.default_rng(1), group)
    model = load_model(proto)
    source, feeds = _source(proto)
    scales, reasons = input_feature_scales(model, find_weights(model), source)
    assert not reasons
    x = feeds["x"].astype(np.float64)
    if group == 1:  # one norm per im2col column: channel x kernel offset (3x3, pads 1, 6x6 output)
        padded = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
        want = np.sqrt(np.stack([[(padded[:, :, i:i + 6, j:j + 6] ** 2).sum(axis=(0, 2, 3)) for j in range(3)]
                                 for i in range(3)]).transpose(2, 0, 1))  # [C, kh, kw]
        assert scales["w"].shape == (1, 8, 3, 3)
        np.testing.assert_allclose(scales["w"][0], want, rtol=1e-5)
        return
    channel = np.sqrt((x ** 2).sum(axis=(0, 2, 3)))  # grouped: one norm per input channel of the group
    per = 8 // group
    want = np.stack([channel[(o // (12 // group)) * per:(o // (12 // group) + 1) * per] for o in range(12)])
    assert scales["w"].shape == (12, per, 1, 1)
    np.testing.assert_allclose(scales["w"][:, :, 0, 0], want, rtol=1e-5)


def test_wanda_prunes_what_the_activations_make_small():
    """A weight row multiplying a near-silent feature goes first, however large the weight."""
    rng = np.random.default_rng(2)
    proto = mlp_model(rng)
    source, feeds = _source(proto)
    feeds["x"][:, :8] *= 1e-4  # features 0..7 are almost always ~0
    model = load_model(proto)
    w0 = model.graph.initializers["w0"].const_value.numpy().copy()
    w0[:8] *= 100  # ... while their weights are the largest
    model.graph.initializers["w0"].const_value = ir.Tensor(w0, name="w0")
    by_magnitude = load_model(ir.to_proto(model))
    report = sparsify(model, sparsity=0.2, criterion="wanda", calib=feeds, exclude=["w1", "w2"],
                      format="dense", min_size=0)
    sparsify(by_magnitude, sparsity=0.2, exclude=["w1", "w2"], format="dense", min_size=0)
    pruned = model.graph.initializers["w0"].const_value.numpy()
    assert np.all(pruned[:8] == 0) and np.count_nonzero(pruned == 0) == round(0.2 * w0.size)
    silent_rows = by_magnitude.graph.initializers["w0"].const_value.numpy()[:8]
    assert np.count_nonzero(silent_rows == 0) < 0.05 * silent_rows.size  # magnitude keeps them
    assert any("activation statistics" in note for note in report.notes)


def test_weights_without_statistics_fall_back_to_magnitude_with_a_note():
    model = load_model(matmul_integer_model(np.random.default_rng(3)))
    report = sparsify(model, sparsity=0.5, criterion="wanda", calib="random", format="dense", min_size=0)
    pruned = [r for r in report.tensors if r.pruned]
    assert pruned and all("scored by magnitude" in (r.note or "") for r in pruned)


def test_wanda_needs_calibration_data(tmp_path):
    with pytest.raises(UsageError, match="needs calibration data"):
        sparsify(load_model(mlp_model(np.random.default_rng(0))), sparsity=0.5, criterion="wanda", format="dense")
    out = tmp_path / "x.onnx"
    code, _, err = cli("sparsify", "samples/models/digits_cnn.onnx", "-o", out, "--sparsity", "0.5",
                       "--criterion", "wanda")
    assert code == 2 and "needs calibration data" in err and not out.exists()


def test_row_pattern_prunes_the_same_share_of_every_output():
    proto = conv_model(np.random.default_rng(4))
    model = load_model(proto)
    original = {n: v.const_value.numpy().copy() for n, v in model.graph.initializers.items()}
    sparsify(model, sparsity=0.6, pattern="row", format="dense", min_size=0)
    for name in ("w0", "w1"):
        pruned = model.graph.initializers[name].const_value.numpy()
        per_filter = (pruned == 0).reshape(pruned.shape[0], -1).sum(1)  # Conv: output channels on axis 0
        assert np.all(per_filter == round(0.6 * pruned[0].size))
        for o in range(pruned.shape[0]):  # within a filter, the smallest magnitudes go
            row, kept = np.abs(original[name][o]), pruned[o] != 0
            assert row[~kept].max() <= row[kept].min()
    with pytest.raises(UsageError, match="does not apply"):
        sparsify(load_model(proto), sparsity=0.5, pattern="row", global_scope=True, format="dense")


def test_row_pattern_uses_the_output_axis_of_matmul_weights():
    model = load_model(mlp_model(np.random.default_rng(5)))
    sparsify(model, sparsity=0.5, pattern="row", format="dense", min_size=0)
    w0 = model.graph.initializers["w0"].const_value.numpy()  # MatMul [in, out]: outputs are columns
    assert np.all((w0 == 0).sum(axis=0) == w0.shape[0] // 2)
    w1 = model.graph.initializers["w1"].const_value.numpy()  # Gemm transB [out, in]: outputs are rows
    assert np.all((w1 == 0).sum(axis=1) == w1.shape[1] // 2)


def _top1(path, data, labels) -> float:
    sess = session(str(path))
    out = sess.run(None, {i.name: data[i.name] for i in sess.get_inputs()})[0]
    return float((out.argmax(-1) == labels).mean())


def test_wanda_keeps_more_accuracy_than_magnitude_on_the_trained_transformer(tmp_path):
    """digits_transformer (trained on sklearn digits) at 70% unstructured sparsity, held-out split."""
    data = dict(np.load("samples/data/digits_test_tokens.npz"))
    labels = np.load("samples/data/digits_test_labels.npy")
    scores = {}
    for criterion in ("magnitude", "wanda"):
        model = load_model("samples/models/digits_transformer.onnx")
        sparsify(model, sparsity=0.7, criterion=criterion, calib="samples/data/digits_calib_tokens.npz",
                 format="auto", min_size=256, allocate="uniform")  # the criteria alone
        save_model(model, tmp_path / f"{criterion}.onnx")
        scores[criterion] = _top1(tmp_path / f"{criterion}.onnx", data, labels)
    assert scores["wanda"] >= scores["magnitude"] + 0.05, scores


def test_calibration_runs_models_with_external_data(tmp_path):
    """Activation capture serialises the model to bytes: onnxruntime must still find the .data file."""
    from onnxsparse import prune

    path = "samples/models/real_zoo_external_resnet18.onnx"
    model = load_model(path)
    report = sparsify(model, sparsity=0.5, criterion="wanda", calib="random", min_size=4096, format="dense")
    assert any(n.startswith("activation statistics") and "for 4 of 4 weights" in n for n in report.notes)
    result = prune(path, channels=0.3, calib="random", calib_samples=8)
    assert result.report.pruned_groups
