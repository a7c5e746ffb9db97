"""Quantization keeps pruned zeros exact, runs in onnxruntime, and reports what it did."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import cli, run, sample, session
from onnx import numpy_helper
from test_quantize_helpers import (
    assert_zeros_exact,
    cnn_model,
    by_source,
    float_weights,
    int_weights,
    mlp_model,
    prune,
    quantized_name,
)

import onnxsparse
from onnxsparse.quantize._nodes import diff_nodes
from onnxsparse.errors import DataError, ModelSaveError, UsageError
from onnxsparse.quantize import (
    QuantizeConfig,
    check_zeros,
    find_quantized_weights,
    match_sources,
    mode_names,
    parse_cpuinfo,
    quantize,
    resolve,
)

VNNI = parse_cpuinfo("model name : Test CPU\nflags : fpu sse avx2 avx512f avx512_vnni\n", "x86_64")
NO_VNNI = parse_cpuinfo("model name : Old CPU\nflags : fpu sse avx2 fma\n", "x86_64")
ARM = parse_cpuinfo("Features : fp asimd asimddp\n", "aarch64")

#: (mode, options) for every storage combination whose zeros we verify.
SETTINGS = [
    ("dynamic", {}),
    ("dynamic", {"per_channel": False}),
    ("dynamic", {"symmetric": False, "weight_type": "uint8"}),
    ("static", {}),
    ("static", {"format": "qoperator"}),
    ("static", {"per_channel": False, "reduce_range": True}),
    ("static", {"symmetric": False}),
    ("static", {"calibrate": "entropy"}),
    ("int4", {}),
    ("int4", {"block_size": 16}),
    ("int4", {"symmetric": False}),
    ("int4", {"format": "qdq"}),
]


def _id(setting) -> str:
    mode, opts = setting
    return mode + "".join(f"-{k}={v}" for k, v in opts.items())


def _calib(model: onnx.ModelProto, samples: int = 32, seed: int = 1) -> dict[str, np.ndarray]:
    shape = {"mlp": (samples, 48), "cnn": (samples, 3, 12, 12)}[model.graph.name]
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def _quantized_weights(model: onnx.ModelProto, mode: str) -> set[str]:
    """The weights each mode must quantize in the test models."""
    names = set(float_weights(model))
    if mode == "int4":  # MatMul and Gemm (converted) only
        return {n for n in names if not n.startswith("c")} if model.graph.name == "cnn" else names
    return names


# --------------------------------------------------------------------------- zeros


@pytest.mark.parametrize("pattern", ["rows", "elements"])
@pytest.mark.parametrize("build", [mlp_model, cnn_model], ids=["mlp", "cnn"])
@pytest.mark.parametrize("setting", SETTINGS, ids=_id)
def test_pruned_zeros_stay_exact(setting, build, pattern):
    mode, opts = setting
    fp32 = prune(build(), pattern, min_size=16)
    result = quantize(fp32, mode=mode, calib=_calib(fp32), **opts)
    after = ir.to_proto(result.model)

    expected = _quantized_weights(fp32, mode)
    zeros = assert_zeros_exact(fp32, after, expect=expected)
    assert zeros > 0
    # The library's own check agrees with the independent one.
    report = result.report
    assert report.zeros["exact"] and not report.zeros["violations"]
    assert report.zeros["zeros_before"] == report.zeros["zeros_kept"]
    assert report.zeros["zeros_before"] >= zeros
    assert not report.zeros["unmatched"]

    # It runs in onnxruntime and stays close to fp32.
    feeds = {"x": _calib(fp32, samples=8, seed=7)["x"]}
    ref, got = run(fp32, feeds)[0], run(after, feeds)[0]
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    assert rel < (0.25 if mode == "int4" else 0.08), rel


def test_int4_dequantization_matches_the_kernel():
    """Our reading of MatMulNBits' packed nibbles is what onnxruntime computes with."""
    model = prune(mlp_model(), "elements")
    result = quantize(model, mode="int4", calib=_calib(model))
    after = ir.to_proto(result.model)
    deq = by_source(model, after)
    x = np.random.default_rng(3).standard_normal((5, 48)).astype(np.float32)
    # First layer: y1 = x @ W1 + b1, read off an intermediate output.
    probe = onnx.ModelProto()
    probe.CopyFrom(after)
    mm = next(n for n in probe.graph.node if n.op_type == "MatMulNBits" and n.input[0] == "x")
    probe.graph.output.append(onnx.helper.make_tensor_value_info(mm.output[0], onnx.TensorProto.FLOAT, None))
    got = run(probe, {"x": x})[1]
    np.testing.assert_allclose(got, x @ deq["w1"][0].astype(np.float32), rtol=1e-4, atol=1e-4)
    # And the library's dequantizer reads the same values.
    weights = find_quantized_weights(after)[0]
    assert not match_sources(model, after, weights)
    lib = {w.source: w.values for w in weights}
    np.testing.assert_array_equal(lib["w1"], deq["w1"][0].astype(np.float32))


def test_zero_check_detects_a_broken_zero():
    """The report's zero check can fail: corrupt one stored code where the weight was 0."""
    model = prune(mlp_model(), "elements")
    result = quantize(model, mode="static", calib=_calib(model))
    after = ir.to_proto(result.model)
    stored = quantized_name(model, after, "w1")
    init = next(i for i in after.graph.initializer if i.name == stored)
    q = numpy_helper.to_array(init).copy()
    w1 = float_weights(model)["w1"]
    q[np.argwhere(w1 == 0)[0][0], np.argwhere(w1 == 0)[0][1]] = 5
    init.CopyFrom(numpy_helper.from_array(q, init.name))
    check = check_zeros(model, after)
    assert not check.exact
    assert check.zeros_kept == check.zeros_before - 1
    assert check.violations[0]["weight"] == "w1"


def test_int8_weights_stay_plain_initializers():
    """Sparse storage passes need the int8 weights as initializers (not Constant nodes)."""
    model = prune(cnn_model(), "rows")
    for mode, opts in (("static", {}), ("dynamic", {}), ("static", {"format": "qoperator"})):
        after = ir.to_proto(quantize(model, mode=mode, calib=_calib(model), **opts).model)
        stored = {i.name: i for i in after.graph.initializer}
        for name in float_weights(model):
            init = stored[quantized_name(model, after, name)]
            assert init.data_type == onnx.TensorProto.INT8, (mode, name)
            assert not any(n.op_type == "Constant" for n in after.graph.node)


# --------------------------------------------------------------------------- report and API


def test_report_lists_quantized_excluded_and_bytes(tmp_path):
    model = prune(mlp_model(), "elements")
    src = tmp_path / "mlp.onnx"
    onnx.save(model, src)
    out = tmp_path / "q.onnx"
    result = quantize(src, out, mode="dynamic", exclude=["fc3"])
    report = result.report
    assert result.path == out and out.exists()
    assert report.bytes_before == src.stat().st_size
    assert report.bytes_after == out.stat().st_size
    assert report.bytes_after < report.bytes_before
    assert report.params_before == report.params_after == 48 * 96 + 96 + 40 * 96 + 40 + 40 * 24
    assert {r["node"] for r in report.quantized} == {"fc1", "fc2"}
    # Pre-processing fused fc1 (MatMul) with its bias Add; the report keeps the user's name.
    assert next(r for r in report.quantized if r["node"] == "fc1")["graph_node"] == "fc1/MatMulAddFusion"
    excluded = {r["node"]: r["reason"] for r in report.excluded}
    assert "--exclude fc3" in excluded["fc3"]
    # The excluded MatMul kept its float weight.
    after = onnx.load(out)
    assert any(n.name == "fc3" and n.op_type == "MatMul" and "w3" in n.input for n in after.graph.node)
    # Settings and kernels are reported.
    assert report.settings["weight_type"] == "int8" and report.settings["weight_symmetric"] is True
    assert "MatMulInteger" in report.kernels
    assert report.check["samples"] > 0 and report.check["provider"] == "CPUExecutionProvider"


def test_int4_reports_what_it_cannot_handle():
    result = quantize(prune(cnn_model(), "rows"), mode="int4", calib=_calib(cnn_model()))
    excluded = {r["node"]: r["reason"] for r in result.report.excluded}
    assert set(excluded) == {"conv1", "conv2"}
    assert all("Conv is not quantized in int4 mode" in r for r in excluded.values())
    assert [r["node"] for r in result.report.quantized] == ["fc"]  # Gemm, via MatMul
    assert result.report.quantized_by_op == {"Gemm": 1}


def test_int4_activation_matmul_is_excluded_with_reason():
    """int4 only handles MatMul with a constant weight; a MatMul of two activations is reported."""
    model = mlp_model()
    extra = onnx.helper.make_node("MatMul", ["a1", "a1t"], ["gram"], name="gram")
    transpose = onnx.helper.make_node("Transpose", ["a1"], ["a1t"], name="t")
    model.graph.node.extend([transpose, extra])
    model.graph.output.append(onnx.helper.make_tensor_value_info("gram", onnx.TensorProto.FLOAT, None))
    result = quantize(model, mode="int4", check=False)
    excluded = {r["node"]: r["reason"] for r in result.report.excluded}
    assert excluded["gram"] == "int4 only handles MatMul with a constant weight B"


def test_min_weight_elements_keeps_small_weights_float():
    model = cnn_model()
    result = quantize(model, mode="dynamic", min_weight_elements=1000)
    excluded = {r["node"]: r["reason"] for r in result.report.excluded}
    # c1 has 432 elements and fc 240; c2 has 3456.
    assert set(excluded) == {"conv1", "fc"}
    assert "< --min-weight-elements 1000" in excluded["conv1"]
    assert [r["node"] for r in result.report.quantized] == ["conv2"]


def test_exclude_glob_and_unknown_names():
    model = mlp_model()
    result = quantize(model, mode="dynamic", exclude=["fc[12]"])
    assert [r["node"] for r in result.report.quantized] == ["fc3"]
    with pytest.raises(UsageError, match=r"matches no node.*did you mean 'fc1'"):
        quantize(model, mode="dynamic", exclude=["fc_1"])


def test_static_needs_calibration_and_checks_it():
    model = mlp_model()
    with pytest.raises(UsageError, match="needs calibration data"):
        quantize(model, mode="static")
    with pytest.raises(DataError, match=r"no data for model input\(s\) \['x'\]"):
        quantize(model, mode="static", calib={"input": np.zeros((4, 48), np.float32)})
    with pytest.raises(DataError, match="has shape"):
        quantize(model, mode="static", calib={"x": np.zeros((4, 47), np.float32)})


def test_output_checks_happen_before_work(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(mlp_model(), src)
    with pytest.raises(ModelSaveError, match="overwrite the input"):
        quantize(src, src)
    (tmp_path / "exists.onnx").write_bytes(b"x")
    with pytest.raises(ModelSaveError, match="already exists"):
        quantize(src, tmp_path / "exists.onnx")
    quantize(src, tmp_path / "exists.onnx", force=True)
    assert onnx.load(tmp_path / "exists.onnx").graph.node


def test_package_is_callable_and_config_api():
    model = mlp_model()
    result = onnxsparse.quantize(model, mode="dynamic", check=False)
    assert result.report.mode == "dynamic"
    config = QuantizeConfig(mode="int4", block_size=64)
    result = quantize(model, config=config, check=False)
    assert result.report.settings["block_size"] == 64
    assert set(mode_names()) >= {"dynamic", "static", "int4"}


def test_input_model_is_not_modified():
    model = ir.serde.deserialize_model(mlp_model())
    before = ir.to_proto(model).SerializeToString()
    quantize(model, mode="static", calib=_calib(mlp_model()), check=False)
    assert ir.to_proto(model).SerializeToString() == before


def test_quantizes_constant_node_weights():
    """Weights held in Constant nodes are lifted first, so they get quantized too."""
    model = mlp_model()
    w1 = next(i for i in model.graph.initializer if i.name == "w1")
    model.graph.initializer.remove(w1)
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["w1"], value=w1))
    result = quantize(model, mode="dynamic", check=False)
    assert "fc1" in {r["node"] for r in result.report.quantized}


def test_check_compares_with_fp32_on_this_cpu():
    model = cnn_model()
    result = quantize(model, mode="static", calib=_calib(model))
    check = result.report.check
    assert check["samples"] == 32 and check["top1_agreement"] >= 0.9
    assert 0 < check["rel_l2_error"] < 0.05
    # Without calibration data the check runs on random inputs...
    result = quantize(model, mode="dynamic")
    assert result.report.check["data"] == "random data" and result.report.check["samples"] == 8
    # ...unless a dynamic non-batch dim has no shape: then it says why it was skipped.
    result = quantize(sample("digits_transformer"), mode="dynamic")
    assert "give its shape with --shape input=" in result.report.check["skipped"]


# --------------------------------------------------------------------------- settings and CPU


def test_cpuinfo_parsing():
    assert VNNI.has_vnni and VNNI.vnni_flags == ("avx512_vnni",) and not VNNI.u8s8_may_saturate
    assert not NO_VNNI.has_vnni and NO_VNNI.u8s8_may_saturate
    assert not ARM.u8s8_may_saturate
    amx = parse_cpuinfo("flags : avx2 amx_tile amx_int8\n", "x86_64")
    assert amx.vnni_flags == ("amx_int8",)
    avx_vnni = parse_cpuinfo("flags : avx2 avx_vnni\n", "x86_64")
    assert avx_vnni.has_vnni


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_reduce_range_auto_follows_vnni(mode):
    config = QuantizeConfig(mode=mode)
    assert resolve(config, NO_VNNI).reduce_range is True
    assert "without VNNI" in resolve(config, NO_VNNI).reasons["reduce_range"]
    assert resolve(config, VNNI).reduce_range is False
    assert resolve(config, ARM).reduce_range is False
    forced = QuantizeConfig(mode=mode, reduce_range=False)
    assert resolve(forced, NO_VNNI).reduce_range is False
    assert "warning" in resolve(forced, NO_VNNI).reasons["reduce_range"]


def test_reduce_range_reaches_the_weights():
    """With reduce_range the symmetric int8 weights use 7 bits: |q| <= 64."""
    model = mlp_model()
    after = ir.to_proto(quantize(model, mode="static", calib=_calib(model), cpu=NO_VNNI).model)
    q = int_weights(after)[quantized_name(model, after, "w1")]
    assert np.abs(q.astype(int)).max() <= 64
    after = ir.to_proto(quantize(model, mode="static", calib=_calib(model), cpu=VNNI).model)
    q = int_weights(after)[quantized_name(model, after, "w1")]
    assert np.abs(q.astype(int)).max() == 127


def test_dynamic_per_channel_default_is_the_accurate_one():
    """Outlier output columns (as in transformer projections) ruin one per-tensor scale; per-channel keeps them."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 96)).astype(np.float32) * 0.05
    w[:, :3] *= 60  # three outlier output columns
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "outliers",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 96])],
        [numpy_helper.from_array(w, "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = {"x": rng.standard_normal((32, 64)).astype(np.float32)}
    ref = run(model, x)[0][:, 3:]

    def error(**opts) -> float:
        got = run(ir.to_proto(quantize(model, mode="dynamic", check=False, cpu=VNNI, **opts).model), x)[0][:, 3:]
        return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))

    default, per_tensor = error(), error(per_channel=False)
    assert default == error(per_channel=True)
    assert default * 5 < per_tensor, (default, per_tensor)


def test_static_defaults():
    settings = resolve(QuantizeConfig(mode="static"), VNNI)
    assert (settings.format, settings.per_channel, settings.activation_type, settings.weight_type) == (
        "qdq", True, "uint8", "int8")
    assert settings.weight_symmetric and settings.calibrate == "minmax"
    assert resolve(QuantizeConfig(mode="static"), ARM).activation_type == "int8"
    dyn = resolve(QuantizeConfig(mode="dynamic"), VNNI)
    assert dyn.per_channel is True and dyn.reduce_range is False
    assert resolve(QuantizeConfig(mode="dynamic"), NO_VNNI).reduce_range is True
    int4 = resolve(QuantizeConfig(mode="int4"), VNNI)
    assert (int4.format, int4.block_size, int4.weight_type, int4.reduce_range) == ("qoperator", 32, "int4", None)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "float8"}, "unknown quantization mode"),
        ({"mode": "int4", "per_channel": True}, "blocks"),
        ({"mode": "int4", "reduce_range": True}, "int8 kernels"),
        ({"mode": "int4", "block_size": 48}, "--block-size"),
        ({"mode": "dynamic", "format": "qdq"}, "needs --mode static"),
        ({"mode": "dynamic", "activation_type": "int8"}, "uint8"),
        ({"mode": "static", "calibrate": "kl"}, "unknown calibration method"),
        ({"mode": "static", "calib_samples": 0}, "at least 1"),
    ],
)
def test_config_rejects_nonsense(options, message):
    with pytest.raises(UsageError, match=message):
        QuantizeConfig(**options)


def test_quantized_model_sessions_use_cpu():
    model = mlp_model()
    result = quantize(model, mode="int4", check=False)
    sess = session(result.model)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert any(n.op_type == "MatMulNBits" for n in result.model.graph)


def _to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in list(out.graph.input) + list(out.graph.output):
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return out


def test_float16_models():
    """int4 quantizes float16 weights (zeros exact); the int8 modes refuse with a clear reason.

    onnxruntime's CPU optimiser would wrap float16 weights in Casts (so nothing gets
    quantized), which is why pre-processing skips it for such models.
    """
    model = _to_float16(prune(mlp_model(), "elements"))
    calib = {"x": np.random.default_rng(0).standard_normal((8, 48)).astype(np.float16)}
    result = quantize(model, mode="int4", calib=calib)
    assert result.report.quantized_by_op == {"Gemm": 1, "MatMul": 2}
    assert result.report.zeros["exact"] and result.report.zeros["zeros_before"] > 0
    assert result.report.check["top1_agreement"] == 1.0
    for mode in ("dynamic", "static"):
        with pytest.raises(UsageError, match="float16/bfloat16.*need a float32 model"):
            quantize(model, mode=mode, calib=calib)


# --------------------------------------------------------------------------- by structure, not by name


def _renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer, node and intermediate tensor renamed (inputs/outputs of the graph kept)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = {v.name for v in (*out.graph.input, *out.graph.output)}
    names: dict[str, str] = {}

    def new(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in out.graph.initializer:
        init.name = new(init.name)
    for i, node in enumerate(out.graph.node):
        node.name = f"n{i}"
        node.input[:] = [new(x) for x in node.input]
        node.output[:] = [new(x) for x in node.output]
    del out.graph.value_info[:]
    return out


@pytest.mark.parametrize("setting", SETTINGS, ids=_id)
def test_zero_check_reads_structure_not_names(setting):
    """A quantizer that names things differently (onnxruntime 1.32 did) changes nothing in the check."""
    mode, opts = setting
    fp32 = prune(mlp_model(), "elements", min_size=16)
    after = ir.to_proto(quantize(fp32, mode=mode, calib=_calib(fp32), check=False, **opts).model)
    renamed = _renamed(after)
    assert not {i.name for i in renamed.graph.initializer} & {i.name for i in after.graph.initializer}
    plain, blind = check_zeros(fp32, after), check_zeros(fp32, renamed)
    assert plain.passed and blind.passed, (plain.unmatched, blind.unmatched)
    assert blind.weights_checked == plain.weights_checked >= 3
    assert blind.zeros_before == plain.zeros_before > 0
    weights = find_quantized_weights(renamed)[0]
    assert not match_sources(fp32, renamed, weights)
    assert {w.source for w in weights} >= {"w1", "w2", "w3"}
    # Every node whose weight was quantized is reported as quantized without a name to go by.
    blind_nodes = {r["node"] for r in diff_nodes(fp32, renamed, None, blind.weights)[0]}
    plain_nodes = {r["node"] for r in diff_nodes(fp32, after, None, plain.weights)[0]}
    assert {"fc1", "fc2", "fc3"} <= blind_nodes <= plain_nodes


def test_an_unverifiable_weight_fails_by_name(tmp_path, monkeypatch):
    """A quantized weight we cannot tie to a float weight is a named failure (exit 1), never a warning."""
    fp32 = prune(mlp_model(), "elements")
    after = ir.to_proto(quantize(fp32, mode="dynamic", check=False).model)
    stored = quantized_name(fp32, after, "w1")
    init = next(i for i in after.graph.initializer if i.name == stored)
    scrambled = np.random.default_rng(0).permutation(numpy_helper.to_array(init).ravel())
    init.CopyFrom(numpy_helper.from_array(scrambled.reshape(tuple(init.dims)), stored))
    check = check_zeros(fp32, after)
    assert not check.passed and not check.verified
    assert [u["initializer"] for u in check.unmatched] == [stored]
    assert stored in check.failure()

    import onnxsparse.quantize.api as api

    monkeypatch.setattr(api, "check_zeros", lambda before, after, **_: check)
    src = tmp_path / "mlp.onnx"
    onnx.save(fp32, src)
    result = quantize(src, mode="dynamic", check=False)
    assert not result.report.passed and stored in result.report.failures[0]
    code, out, err = cli("quantize", src, "-o", tmp_path / "q.onnx", "--no-check")
    assert code == 1
    assert "NOT VERIFIED" in out and stored in err


# --------------------------------------------------------------------------- error per node


def test_node_errors_cover_every_quantized_node():
    """Each quantized node gets its input/output error; a QDQ Conv whose Relu was folded is paired by structure."""
    for build, mode in ((mlp_model, "dynamic"), (cnn_model, "static")):
        model = build()
        report = quantize(model, mode=mode, calib=_calib(model)).report
        rows = {r["node"]: r for r in report.node_errors}
        assert {r["node"] for r in report.quantized} <= set(rows) | {"gap", "flatten"}, (mode, rows)
        first = rows["fc1" if build is mlp_model else "conv1"]
        assert first["input_rel_error"] < 0.02  # the graph input (static: its own QuantizeLinear only)
        for row in rows.values():
            assert 0 <= row["added_rel_error"] <= row["output_rel_error"] < 0.1, row
        assert [r["added_rel_error"] for r in report.node_errors] == sorted(
            (r["added_rel_error"] for r in report.node_errors), reverse=True)


def test_max_node_error_keeps_the_costly_node_float():
    """Mixed precision: the node whose quantization adds the most error stays float, and the model gets closer."""
    model = mlp_model()
    w2 = next(i for i in model.graph.initializer if i.name == "w2")
    weights = numpy_helper.to_array(w2).copy()
    weights[:, :4] *= 40  # outlier input columns: one per-row scale cannot hold both
    w2.CopyFrom(numpy_helper.from_array(weights, "w2"))
    calib = _calib(model)
    plain = quantize(model, mode="dynamic", calib=calib, per_channel=False).report
    worst = plain.node_errors[0]
    assert worst["node"] == "fc2", plain.node_errors
    threshold = (worst["added_rel_error"] + plain.node_errors[1]["added_rel_error"]) / 2
    mixed = quantize(model, mode="dynamic", calib=calib, per_channel=False, max_node_error=threshold).report
    kept = {r["node"]: r["reason"] for r in mixed.excluded}
    assert "kept float" in kept["fc2"] and set(kept) == {"fc2"}
    assert {r["node"] for r in mixed.quantized} == {"fc1", "fc3"}
    assert mixed.check["rel_l2_error"] < plain.check["rel_l2_error"]
    with pytest.raises(UsageError, match="max-node-error"):
        QuantizeConfig(mode="dynamic", max_node_error=0)


@pytest.mark.parametrize("target, reduce_range, activation", [
    ("avx512_vnni", False, "uint8"), ("avx512", True, "uint8"), ("avx2", True, "uint8"), ("arm64", False, "int8"),
])
def test_target_cpu_sets_what_optimums_preset_for_it_sets(target, reduce_range, activation):
    """--target quantizes for a deployment CPU: optimum's presets turn reduce_range on exactly without VNNI."""
    model = mlp_model()
    report = quantize(model, mode="static", calib=_calib(model), target=target, check=False).report
    assert report.settings["reduce_range"] is reduce_range
    assert report.settings["activation_type"] == activation
    assert report.settings["per_channel"] is True and report.settings["weight_symmetric"] is True
    assert report.cpu["source"] == f"--target {target}"
    with pytest.raises(UsageError, match="unknown --target"):
        QuantizeConfig(target="avx9")
