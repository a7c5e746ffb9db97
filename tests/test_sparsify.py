"""Sparsify pass: patterns, criteria, round trips, onnxruntime equivalence, quantized weights, opsets."""

from __future__ import annotations

import fnmatch

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import random_feeds, run, sample
from hypothesis import given, settings
from hypothesis import strategies as st
from test_formats_util import (
    conv_model,
    initializer_arrays,
    matmul_integer_model,
    mlp_model,
    qdq_model,
    qlinear_conv_model,
    same_bits,
    with_random_weights,
)

from onnxsparse import formats as F
from onnxsparse.errors import Decline, UsageError
from onnxsparse.io import load_model
from onnxsparse.passes.densify import densify
from onnxsparse.passes.sparsify import SparsifyConfig, sparsify
from onnxsparse.sparsity import NM, Block, Unstructured, Wanda, WeightInfo, find_weights, nm_violations, parse_pattern

FORMATS = ["auto", "bitmask", "delta", "csr", "bsr", "coo"]


def masked_and_sparse(source, fmt: str, **kwargs) -> tuple[ir.Model, ir.Model]:
    """(masked dense model, the same masks stored in ``fmt``)."""
    masked = load_model(source)
    sparsify(masked, format="dense", **kwargs)
    stored = load_model(ir.to_proto(masked))
    sparsify(stored, format=fmt, min_size=kwargs.get("min_size", 0))
    return masked, stored


def assert_same_outputs(a, b, feeds) -> None:
    for x, y in zip(run(a, feeds), run(b, feeds)):
        assert np.array_equal(x, y)


# ----------------------------------------------------------------------- patterns


def _info(shape, in_axis=None) -> WeightInfo:
    return WeightInfo("w", tuple(shape), "float32", ("MatMul:x",), in_axis, None, None)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    nm=st.sampled_from([(1, 2), (2, 4), (4, 8), (3, 8), (1, 16)]),
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    axis_seed=st.integers(0, 100),
    seed=st.integers(0, 2**16),
)
def test_nm_mask_property(nm, shape, axis_seed, seed):
    n, m = nm
    axis = axis_seed % len(shape)
    shape = list(shape)
    shape[axis] *= m
    scores = np.random.default_rng(seed).random(shape).astype(np.float32)
    keep = NM(n, m).mask(scores, 0.0, _info(shape, axis))
    groups = np.moveaxis(keep, axis, -1).reshape(-1, m)
    assert np.all(groups.sum(axis=1) == n)
    # the kept ones are the N highest of each group
    values = np.moveaxis(scores, axis, -1).reshape(-1, m)
    kept_min = np.where(groups, values, np.inf).min(axis=1)
    dropped_max = np.where(groups, -np.inf, values).max(axis=1)
    assert np.all(kept_min >= dropped_max)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    shape=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    sparsity=st.floats(0, 0.99),
    block=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    seed=st.integers(0, 2**16),
)
def test_unstructured_and_block_mask_properties(shape, sparsity, block, seed):
    scores = np.random.default_rng(seed).random(shape).astype(np.float32)
    keep = Unstructured().mask(scores, sparsity, _info(shape))
    assert np.count_nonzero(~keep) == round(sparsity * scores.size)
    if (~keep).any() and keep.any():
        assert scores[~keep].max() <= scores[keep].min()
    pattern = Block(*block)
    keep = pattern.mask(scores, sparsity, _info(shape))
    rows = shape[0] if len(shape) > 1 else 1
    view = keep.reshape(rows, -1)
    for r0 in range(0, view.shape[0], block[0]):
        for c0 in range(0, view.shape[1], block[1]):
            tile = view[r0: r0 + block[0], c0: c0 + block[1]]
            assert tile.all() or not tile.any()


def test_unstructured_prunes_exact_count_per_tensor():
    model = load_model(mlp_model(np.random.default_rng(0)))
    report = sparsify(model, sparsity=0.7, format="dense", min_size=0)
    for name in ("w0", "w1", "w2"):
        array = model.graph.initializers[name].const_value.numpy()
        assert np.count_nonzero(array == 0) == round(0.7 * array.size)
    assert "b1" not in {r.name for r in report.tensors if r.pruned}  # biases are not linear-op weights


def test_unstructured_prunes_smallest_magnitudes():
    model = load_model(mlp_model(np.random.default_rng(0)))
    original = initializer_arrays(model)["w0"]
    sparsify(model, sparsity=0.5, format="dense", min_size=0)
    pruned = model.graph.initializers["w0"].const_value.numpy()
    assert np.abs(original[pruned == 0]).max() <= np.abs(original[pruned != 0]).min()
    assert np.array_equal(pruned[pruned != 0], original[pruned != 0])


def test_global_threshold_is_shared():
    model = load_model(mlp_model(np.random.default_rng(0)))
    original = initializer_arrays(model)
    sparsify(model, sparsity=0.6, global_scope=True, format="dense", min_size=0)
    kept, dropped = [], []
    total = zeros = 0
    for name in ("w0", "w1", "w2"):
        pruned = model.graph.initializers[name].const_value.numpy()
        kept.append(np.abs(original[name][pruned != 0]))
        dropped.append(np.abs(original[name][pruned == 0]))
        total += pruned.size
        zeros += np.count_nonzero(pruned == 0)
    assert zeros == round(0.6 * total)
    assert np.concatenate(dropped).max() <= np.concatenate(kept).min()


@pytest.mark.parametrize("spec", ["2:4", "4:8", "1:4", "3:8"])
def test_nm_pattern_along_reduction_axis(spec):
    pattern = parse_pattern(spec)
    assert isinstance(pattern, NM)
    model = load_model(mlp_model(np.random.default_rng(1)))
    report = sparsify(model, pattern=spec, format="dense", min_size=0)
    infos = {w.name: w for w in find_weights(model)}
    assert (infos["w0"].in_axis, infos["w1"].in_axis, infos["w2"].in_axis) == (0, 1, 0)  # MatMul, Gemm transB
    for name in ("w0", "w1", "w2"):
        array = model.graph.initializers[name].const_value.numpy()
        assert nm_violations(array, pattern.n, pattern.m, infos[name].in_axis) == 0
        groups = np.moveaxis(array != 0, infos[name].in_axis, -1).reshape(-1, pattern.m)
        assert np.all(groups.sum(axis=1) == pattern.n)  # random weights: exactly N kept
        # the other axis does not hold the pattern (the axis choice matters)
        other = 1 - infos[name].in_axis
        if array.shape[other] % pattern.m == 0:
            assert nm_violations(array, pattern.n, pattern.m, other) > 0
    rows = {r.name: r for r in report.tensors}
    assert rows["w0"].sparsity == pytest.approx(pattern.fixed_sparsity)


def test_nm_on_conv_uses_input_channels_and_skips_indivisible():
    model = load_model(conv_model(np.random.default_rng(2)))
    report = sparsify(model, pattern="2:4", format="dense", min_size=0)
    w1 = model.graph.initializers["w1"].const_value.numpy()
    assert nm_violations(w1, 2, 4, axis=1) == 0
    assert {r.name for r in report.tensors if r.pruned} == {"w0", "w1"}
    model = load_model(conv_model(np.random.default_rng(2)))
    report = sparsify(model, pattern="16:32", format="dense", min_size=0)
    notes = {r.name: r.note for r in report.tensors}
    assert "not a multiple of M=32" in notes["w0"]


def test_block_pattern_zeros_whole_blocks():
    model = load_model(mlp_model(np.random.default_rng(3), dims=(64, 96, 80, 12)))
    sparsify(model, sparsity=0.75, pattern="block:4x8", format="dense", min_size=0)
    w0 = model.graph.initializers["w0"].const_value.numpy()  # 64 x 96: 16 x 12 blocks
    blocks = (w0.reshape(16, 4, 12, 8) != 0).any(axis=(1, 3))
    full = (w0.reshape(16, 4, 12, 8) != 0).all(axis=(1, 3))
    assert np.array_equal(blocks, full)  # every block is all zero or all kept
    assert np.count_nonzero(~blocks) == round(0.75 * blocks.size)
    w2 = model.graph.initializers["w2"].const_value.numpy()  # 80 x 12: partial edge blocks
    assert np.count_nonzero(w2 == 0) > 0


def test_block_pattern_with_bsr_stores_blocks_exactly():
    masked, stored = masked_and_sparse(mlp_model(np.random.default_rng(3)), "bsr", sparsity=0.8,
                                       pattern="block:4x4", min_size=0)
    spec = F.read_storage(stored)["w0"]
    assert spec.params["block"] in ([4, 4], [4, 8], [8, 4], [8, 8], [4, 16], [16, 4], [16, 16])
    densify(stored)
    assert same_bits(stored.graph.initializers["w0"].const_value.numpy(),
                     masked.graph.initializers["w0"].const_value.numpy())


def test_wanda_criterion_plugs_in():
    rng = np.random.default_rng(4)
    model = load_model(mlp_model(rng))
    norms = np.ones(64)
    norms[:4] = 1e6  # the first 4 input features are huge: their 384 weights must survive (614 kept)
    sparsify(model, sparsity=0.9, criterion=Wanda(), stats={"w0": norms}, exclude=["w1", "w2"],
             format="dense", min_size=0)
    w0 = model.graph.initializers["w0"].const_value.numpy()
    assert np.all(w0[:4] != 0)
    assert np.count_nonzero(w0 == 0) == round(0.9 * w0.size)
    with pytest.raises(UsageError, match="needs calibration data"):
        sparsify(load_model(mlp_model(rng)), sparsity=0.5, criterion=Wanda(), format="dense", min_size=0)


def test_ratios_exclude_and_min_size():
    model = load_model(mlp_model(np.random.default_rng(5)))
    report = sparsify(model, sparsity=0.5, ratios=[("fc1", 0.9)], exclude=["w2"], min_size=1000,
                      format="dense")
    rows = {r.name: r for r in report.tensors}
    assert rows["w0"].sparsity == pytest.approx(0.5)
    assert rows["w1"].sparsity == pytest.approx(0.9, abs=1e-3)  # matched by its consumer node name
    assert "w2" not in rows
    skipped = {s["name"]: s["reason"] for s in report.skipped}
    assert "excluded" in skipped["w2"]
    assert any("min-size" in reason for reason in skipped.values())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"sparsity": 0.3, "pattern": "2:4"}, "fixes the sparsity"),
        ({"sparsity": 0.5, "pattern": "2:4", "global_scope": True}, "does not apply"),
        ({"pattern": "3:2"}, "0 < N < M"),
        ({"pattern": "diagonal"}, "unknown sparsity pattern"),
        ({"sparsity": 1.5}, r"\[0, 1\)"),
        ({"format": "zip"}, "unknown storage format"),
        ({"decoders": {"bitmask": "magic"}}, "no decode graph"),
        ({"global_scope": True}, "needs --sparsity"),
    ],
)
def test_bad_configs(kwargs, message):
    with pytest.raises(UsageError, match=message):
        SparsifyConfig(**kwargs).resolved()


# ------------------------------------------------------------- exact round trips


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["resnet_mini", "transformer_encoder", "digits_cnn"])
def test_sparse_model_runs_like_masked_model(name, fmt):
    masked, stored = masked_and_sparse(sample(name), fmt, sparsity=0.8, min_size=256)
    report_formats = {s.format for s in F.read_storage(stored).values()}
    assert report_formats and report_formats <= {"bitmask", "delta", "csr", "bsr", "coo"}
    feeds = random_feeds(masked, batch=2, seed=0)
    assert_same_outputs(masked, stored, feeds)
    densified = stored.clone()
    densify(densified)
    assert not F.read_storage(densified)
    assert not any(F.is_decode_node(n) for n in densified.graph)
    expected = initializer_arrays(masked)
    got = initializer_arrays(densified)
    for key, array in expected.items():
        assert same_bits(got[key], array), key
    assert not [k for k in got if k.startswith("onnxsparse:") or "/onnxsparse/" in k]


def test_lossless_reencode_keeps_model_exact():
    source = load_model(sample("transformer_encoder"))
    with_random_weights(source)
    for value in source.graph.initializers.values():  # existing zeros
        array = value.const_value.numpy()
        if array.size >= 4096:
            array = array.copy()
            array[np.abs(array) < 1.0] = 0
            value.const_value = ir.Tensor(array, name=value.name)
    original = load_model(ir.to_proto(source))
    report = sparsify(source, min_size=4096)
    assert report.config["lossless"] and not any(r.pruned for r in report.tensors)
    assert any(r.format != "dense" for r in report.tensors)
    assert_same_outputs(original, source, random_feeds(original, seed=1))
    densify(source)
    for key, array in initializer_arrays(original).items():
        assert same_bits(initializer_arrays(source)[key], array)


def test_resparsify_reencodes_stored_model():
    _, stored = masked_and_sparse(sample("resnet_mini"), "csr", sparsity=0.8, min_size=256)
    again = load_model(ir.to_proto(stored))
    report = sparsify(again, sparsity=0.9, format="delta", min_size=256)
    assert set(report.reencoded.values()) == {"csr"}
    assert {s.format for s in F.read_storage(again).values()} == {"delta"}
    assert all(r.sparsity == pytest.approx(0.9, abs=2e-3) for r in report.tensors if r.pruned)


def test_densify_without_metadata_evaluates_the_graph():
    masked, stored = masked_and_sparse(sample("resnet_mini"), "auto", sparsity=0.8, min_size=256)
    stored.metadata_props.pop(F.META_KEY)
    for node in stored.graph:
        node.metadata_props.pop(F.NODE_META_KEY, None)
    densify(stored)
    for key, array in initializer_arrays(masked).items():
        assert same_bits(initializer_arrays(stored)[key], array)


# ------------------------------------------------------------------- dtypes


def test_float16_weights():
    rng = np.random.default_rng(6)
    masked, stored = masked_and_sparse(mlp_model(rng, dtype=np.float16), "auto", sparsity=0.8, min_size=0)
    assert {s.dtype for s in F.read_storage(stored).values()} == {"float16"}
    assert_same_outputs(masked, stored, random_feeds(masked, seed=2))


def test_bfloat16_weights_through_cast():
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((256, 64))).astype(ml_dtypes.bfloat16)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Cast", ["w"], ["wf"], to=onnx.TensorProto.FLOAT, name="cast"),
         onnx.helper.make_node("MatMul", ["x", "wf"], ["y"], name="fc")],
        "bf16",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 256])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 64])],
        initializer=[onnx.numpy_helper.from_array(w, "w")],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    for fmt in ("bitmask", "delta", "csr", "bsr", "coo"):
        masked, stored = masked_and_sparse(proto, fmt, sparsity=0.9, pattern="unstructured", min_size=0)
        assert F.read_storage(stored)["w"].dtype == "bfloat16"
        assert_same_outputs(masked, stored, random_feeds(masked, seed=3))


def test_qdq_int8_weight_pruned_in_quantized_domain():
    rng = np.random.default_rng(8)
    proto = qdq_model(rng)
    original = load_model(proto)
    infos = {w.name: w for w in find_weights(original)}
    assert infos["wq"].quant is not None and infos["wq"].in_axis == 0
    masked, stored = masked_and_sparse(proto, "auto", sparsity=0.8, min_size=0)
    q = masked.graph.initializers["wq"].const_value.numpy()
    assert q.dtype == np.int8 and np.count_nonzero(q == 0) >= round(0.8 * q.size)
    # the dequantized magnitude ranks the weights (scales differ per column)
    real = (initializer_arrays(original)["wq"].astype(np.float32) * initializer_arrays(original)["ws"])
    assert np.abs(real[q == 0]).max() <= np.abs(real[q != 0]).min()
    assert F.read_storage(stored)["wq"].dtype == "int8"
    assert [n.op_type for n in stored.graph if not F.is_decode_node(n)] == ["DequantizeLinear", "MatMul"]
    assert_same_outputs(masked, stored, random_feeds(masked, seed=4))


def test_qlinear_conv_zero_point_is_the_fill_value():
    rng = np.random.default_rng(9)
    masked, stored = masked_and_sparse(qlinear_conv_model(rng, zero_point=128), "auto", sparsity=0.75, min_size=0)
    w = masked.graph.initializers["w"].const_value.numpy()
    assert np.count_nonzero(w == 128) >= round(0.75 * w.size)
    spec = F.read_storage(stored)["w"]
    assert spec.fill().item() == 128
    feeds = {"x": np.random.default_rng(5).integers(0, 256, (1, 32, 6, 6)).astype(np.uint8)}
    assert_same_outputs(masked, stored, feeds)
    report = sparsify(load_model(ir.to_proto(masked)), format="coo", min_size=1000)
    (row,) = report.tensors
    assert row.format == "dense" and "fill value is 128" in row.note


def test_matmul_integer_weight():
    rng = np.random.default_rng(10)
    masked, stored = masked_and_sparse(matmul_integer_model(rng), "delta", sparsity=0.85, min_size=0)
    assert F.read_storage(stored)["w"].format == "delta"
    feeds = {"x": np.random.default_rng(6).integers(0, 256, (3, 256)).astype(np.uint8)}
    assert_same_outputs(masked, stored, feeds)


# -------------------------------------------------------------------- opsets


def test_opset_is_raised_only_when_safe():
    rng = np.random.default_rng(11)
    model = load_model(mlp_model(rng, opset=13))
    report = sparsify(model, sparsity=0.8, format="csr", min_size=0)
    assert (report.opset_before, report.opset_after) == (13, 16)
    # w2 (800 elements): csr + its optimizer guards (formats._graph) is a few bytes larger than dense
    assert all(r.format == "csr" for r in report.tensors if r.name not in ("b1", "w2"))

    # ReduceMean changed at opset 18 (axes became an input): the model cannot be raised to 18,
    # but 13 -> 16 is fine; at opset 11 Squeeze/ReduceSum-style changes are checked per node.
    proto = mlp_model(rng, opset=11)
    proto.graph.node.append(onnx.helper.make_node("Unsqueeze", ["y"], ["y2"], axes=[0], name="unsq"))
    proto.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, None))
    model = load_model(proto)
    report = sparsify(model, sparsity=0.8, format="csr", min_size=0)
    assert report.opset_after == 11
    notes = [r.note for r in report.tensors if r.name != "b1"]
    assert all("needs opset 16" in n and "Unsqueeze changed" in n for n in notes)
    # bitmask has an opset-11 decode graph: used without raising
    model = load_model(proto)
    report = sparsify(model, sparsity=0.8, format="bitmask", min_size=0)
    assert report.opset_after == 11
    assert {s.decoder for s in F.read_storage(model).values()} == {"gather"}
    masked = load_model(proto)
    sparsify(masked, sparsity=0.8, format="dense", min_size=0)
    assert_same_outputs(masked, model, random_feeds(masked, seed=7))


def test_no_raise_opset_option():
    model = load_model(mlp_model(np.random.default_rng(12), opset=13))
    report = sparsify(model, sparsity=0.8, format="auto", raise_opset=False, min_size=0)
    assert report.opset_after == 13
    assert {s.format for s in F.read_storage(model).values()} <= {"delta", "bitmask"}


def test_pruned_names_match_globs_on_nodes():
    model = load_model(mlp_model(np.random.default_rng(13)))
    report = sparsify(model, sparsity=0.5, exclude=["fc*"], format="dense", min_size=0)
    assert not any(r.pruned for r in report.tensors)
    assert all(fnmatch.fnmatch("fc0", "fc*") for _ in report.skipped)


def test_old_opset_is_raised_to_the_newest_safe_version():
    rng = np.random.default_rng(14)
    proto = mlp_model(rng, opset=9)
    # Softmax changed meaning at 13 and Dropout's unused mask output changed type at 10:
    # 9 -> 11 is safe, 9 -> 13/16 is not.
    proto.graph.node.append(onnx.helper.make_node("Dropout", ["y"], ["d", "mask"], name="drop"))
    proto.graph.node.append(onnx.helper.make_node("Softmax", ["d"], ["p"], name="softmax", axis=1))
    proto.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, None))
    model = load_model(proto)
    with pytest.raises(Decline, match="Softmax changed between opset 9 and 13"):
        F.check_opset_raise(model, 13)
    F.check_opset_raise(model, 11)  # safe: returns
    report = sparsify(model, sparsity=0.8, min_size=0)
    assert (report.opset_before, report.opset_after) == (9, 11)
    assert {s.format for s in F.read_storage(model).values()} <= {"delta", "bitmask"}
    masked = load_model(proto)
    sparsify(masked, sparsity=0.8, format="dense", min_size=0)
    assert_same_outputs(masked, model, random_feeds(masked, seed=8))
    # csr needs 16: stays dense with the reason
    report = sparsify(load_model(proto), sparsity=0.8, format="csr", min_size=0)
    assert all("Softmax" in r.note for r in report.tensors if r.name != "b1")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.85), ("2:4", None), ("4:8", None),
                                              ("block:4x4", 0.75)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_pattern_dtype_round_trips_exactly(fmt, pattern, sparsity, dtype):
    proto = mlp_model(np.random.default_rng(15), dims=(64, 96, 80, 16), dtype=dtype)
    masked = load_model(proto)
    sparsify(masked, format="dense", sparsity=sparsity, pattern=pattern, min_size=0)
    expected = initializer_arrays(masked)
    stored = load_model(ir.to_proto(masked))
    for name in ("w0", "w1", "w2"):  # store even where dense would be smaller: exercise every decode
        tensor = F.TensorData(name, expected[name])
        if fmt == "auto":
            chosen, _ = F.choose(tensor, fmt, F.CodecOptions(), 17)
        else:
            chosen = F.candidate(tensor, fmt, F.CodecOptions(), 17)
        if chosen.format != "dense":
            F.store(stored, name, tensor, chosen)
    assert F.read_storage(stored)
    for name, spec in F.read_storage(stored).items():
        assert same_bits(F.decode_stored(stored, spec), expected[name])
    assert_same_outputs(masked, stored, random_feeds(masked, seed=9))
    densified = load_model(ir.to_proto(stored))
    densify(densified)
    for name in ("w0", "w1", "w2"):
        assert same_bits(initializer_arrays(densified)[name], expected[name]), name


def test_public_save_model_writes_coo_as_sparse_initializer(tmp_path):
    import onnxsparse

    model = load_model(mlp_model(np.random.default_rng(9)))
    sparsify(model, sparsity=0.9, format="coo", min_size=0)
    path = onnxsparse.save_model(model, tmp_path / "coo.onnx")
    proto = onnx.load(str(path))
    assert {t.values.name for t in proto.graph.sparse_initializer} == {"w0", "w1", "w2"}
    onnx.checker.check_model(proto)


def test_auto_slack_trades_a_few_bytes_for_a_cheaper_decode():
    """Near 50% sparsity bitmask is smallest; a slack of 8% lets auto take delta (cheaper to fold)."""
    def formats(slack: float) -> tuple[set[str], int]:
        model = load_model(mlp_model(np.random.default_rng(3), dims=(256, 384, 320, 10)))
        report = sparsify(model, sparsity=0.5, format="auto", min_size=0, auto_slack=slack)
        pruned = [r for r in report.tensors if r.pruned and r.elements >= 10_000]
        return {r.format for r in pruned}, sum(r.bytes_stored for r in pruned)

    tight, tight_bytes = formats(0.02)
    loose, loose_bytes = formats(0.08)
    assert tight == {"bitmask"} and loose == {"delta"}
    assert tight_bytes < loose_bytes <= 1.08 * tight_bytes
    with pytest.raises(UsageError, match="auto-slack"):
        SparsifyConfig(auto_slack=-0.1).resolved()
