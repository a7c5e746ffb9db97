"""``inspect`` numbers against hand computations, and the command's errors and outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import cli, cli_json, light, run, sample, session
from onnxsparse.analysis import (
    count_macs,
    count_params,
    infer_shapes,
    model_stats,
    nm_pattern,
    node_macs,
)
from onnxsparse.errors import UsageError
from onnxsparse.io import load_model, save_model


# --------------------------------------------------------------------------- hand counts


def conv_macs(cin: int, cout: int, k: int, hout: int, wout: int | None = None, group: int = 1, n: int = 1) -> int:
    wout = hout if wout is None else wout
    return n * cout * hout * wout * (cin // group) * k * k


def conv_params(cin: int, cout: int, k: int, group: int = 1, bias: bool = False) -> int:
    return cout * (cin // group) * k * k + (cout if bias else 0)


def resnet_mini_expected(n: int = 1) -> tuple[int, int]:
    """From samples/build_samples.py: stem 3->16 (bias), blocks 16->16, 16->32/2 (+1x1 proj), 32->32, fc 32->10."""
    convs = [  # cin, cout, k, out size, bias
        (3, 16, 3, 32, True),
        (16, 16, 3, 32, False), (16, 16, 3, 32, False),
        (16, 32, 3, 16, False), (32, 32, 3, 16, False), (16, 32, 1, 16, False),
        (32, 32, 3, 16, False), (32, 32, 3, 16, False),
    ]
    bn_channels = [16, 16, 16, 32, 32, 32, 32, 32]
    macs = sum(conv_macs(ci, co, k, h, n=n) for ci, co, k, h, _ in convs) + n * 32 * 10
    params = sum(conv_params(ci, co, k, bias=b) for ci, co, k, _, b in convs)
    params += sum(4 * c for c in bn_channels) + 32 * 10 + 10
    return params, macs


def resnet50_expected() -> tuple[int, int]:
    """ResNet-50 with the stride on the 3x3 conv (as in the onnx light/caffe2 model), 224x224.

    Params include BatchNorm's 4 tensors per channel (scale, bias, running mean/var).
    """
    macs = conv_macs(3, 64, 7, 112)
    params = conv_params(3, 64, 7) + 4 * 64
    size, cin = 56, 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            out = size // (stride if b == 0 else 1)
            macs += conv_macs(cin, width, 1, size) + conv_macs(width, width, 3, out) + conv_macs(width, 4 * width, 1, out)
            params += conv_params(cin, width, 1) + conv_params(width, width, 3) + conv_params(width, 4 * width, 1)
            params += 4 * (width + width + 4 * width)
            if b == 0:
                macs += conv_macs(cin, 4 * width, 1, out)
                params += conv_params(cin, 4 * width, 1) + 4 * 4 * width
            cin, size = 4 * width, out
    macs += 2048 * 1000
    params += 2048 * 1000 + 1000
    return params, macs


def test_resnet_mini_by_hand() -> None:
    model = load_model(sample("resnet_mini"))
    params, macs = resnet_mini_expected(n=1)
    assert count_params(model) == params
    assert count_macs(model, {"input": (1, 3, 32, 32)}) == macs
    _, macs4 = resnet_mini_expected(n=4)
    assert count_macs(model, dims={"batch": 4}) == macs4
    conv = {r.name: r.macs for r in node_macs(model, {"input": (1, 3, 32, 32)})}
    assert conv["layer2.0.downsample.conv"] == conv_macs(16, 32, 1, 16)
    assert conv["stem.conv"] == conv_macs(3, 16, 3, 32)


def test_light_resnet50_by_hand_and_published() -> None:
    """Exact against the hand count; and the published torchvision figures (25,557,032 params,
    ~4.09 GMACs at 224x224, e.g. fvcore/ptflops) once BatchNorm running stats are added."""
    model = load_model(light("resnet50"))
    params, macs = resnet50_expected()
    stats = model_stats(model, sparsity=False)
    assert stats.params == params
    assert stats.macs == macs
    bn_running_stats = 2 * (64 + sum(
        blocks * (w + w + 4 * w) + 4 * w for w, blocks in ((64, 3), (128, 4), (256, 6), (512, 3))
    ))
    assert stats.params - bn_running_stats == 25_557_032
    assert macs == pytest.approx(4.09e9, rel=2e-3)
    assert stats.op_histogram["Conv"] == 53


def test_transformer_encoder_by_hand() -> None:
    """2 layers, hidden 64, 4 heads x 16, FFN 128 (build_samples.py); attention MatMuls counted."""
    b, s, h, heads, hd, ff = 2, 8, 64, 4, 16, 128
    per_layer_proj = 4 * b * s * h * h + 2 * b * s * h * ff
    per_layer_attn = 2 * b * heads * s * s * hd
    model = load_model(sample("transformer_encoder"))
    stats = model_stats(model, {"input": (b, s, h)}, sparsity=False)
    assert stats.macs == 2 * (per_layer_proj + per_layer_attn)
    assert stats.attention_macs == 2 * per_layer_attn
    attn_rows = [r for r in stats.node_rows if r.activations_only]
    assert sorted(r.name for r in attn_rows) == sorted(
        f"layers.{i}.attn.{k}.MatMul" for i in range(2) for k in ("scores", "context")
    )
    params = 2 * (4 * (h * h + h) + (h * ff + ff) + (ff * h + h) + 2 * 2 * h)
    assert stats.params == params


def test_lstm_by_hand() -> None:
    seq, batch, i, hidden = 5, 3, 8, 16
    model = load_model(sample("lstm"))
    expected = seq * batch * 4 * hidden * (i + hidden) + batch * hidden * 4
    assert count_macs(model, {"input": (batch, seq, i)}) == expected
    assert count_params(model) == 4 * hidden * i + 4 * hidden * hidden + 8 * hidden + 4 * hidden + 4


def test_decoder_with_kv_cache_by_hand() -> None:
    """GPT-style decoder: 2 blocks, hidden 32, 4 heads x 8, FFN 128, vocab 64; 8 new + 4 cached tokens.

    ``--shape input_ids=1x8`` fixes ``batch``/``seq`` for the cache inputs too; ``past_seq`` via dims.
    """
    b, s, past, h, heads, hd, ff, vocab = 1, 8, 4, 32, 4, 8, 128, 64
    total = s + past
    per_block = 4 * b * s * h * h + 2 * b * s * h * ff + 2 * b * heads * s * total * hd
    model = load_model(sample("tiny_decoder_kv"))
    assert count_macs(model, {"input_ids": (b, s)}) is None  # past_seq still unknown
    stats = model_stats(model, {"input_ids": (b, s)}, dims={"past_seq": past}, sparsity=False)
    assert stats.macs == 2 * per_block + b * s * h * vocab
    assert stats.attention_macs == 2 * 2 * b * heads * s * total * hd


def test_exporters_agree() -> None:
    """The TorchScript and dynamo exports of the same digits transformer count the same."""
    a = model_stats(load_model(sample("digits_transformer")), dims={"batch": 3, "seq": 8}, sparsity=False)
    b = model_stats(load_model(sample("digits_transformer_dynamo")), dims={"batch": 3}, sparsity=False)
    assert a.macs is not None and a.macs == b.macs
    assert a.params == b.params
    assert a.attention_macs == b.attention_macs > 0


# --------------------------------------------------------------------------- a model built here


def built_model() -> tuple[onnx.ModelProto, dict[str, int], int]:
    """Every counted op family once, weights in every storage form; returns (model, node MACs, params)."""
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(f32(8), "conv.b"),
        numpy_helper.from_array(f32(8, 3, 2, 2), "deconv.w"),
        numpy_helper.from_array(f32(300, 7), "fc.w"),
        numpy_helper.from_array(np.array([7], np.int64), "fc.b_shape"),
        numpy_helper.from_array(f32(6, 4), "wq"),
        numpy_helper.from_array(f32(6, 4), "wk"),
        numpy_helper.from_array(f32(3, 4, 2), "w3"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
        numpy_helper.from_array(f32(50), "unused"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Constant", [], ["conv.w"], value=numpy_helper.from_array(f32(8, 2, 3, 3))),
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["y1"], name="conv", group=2,
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["y1", "deconv.w"], ["y2"], name="deconv",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["y2"], ["flat"], axis=1),
        helper.make_node("ConstantOfShape", ["fc.b_shape"], ["fc.b"],
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["out_fc"], name="fc"),
        helper.make_node("MatMul", ["t", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["t", "wk"], ["k"], name="k_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "two"], ["scores2"]),
        helper.make_node("MatMul", ["scores2", "q"], ["ctx"], name="pv"),
        helper.make_node("Unsqueeze", ["ctx", "axes1"], ["u"]),
        helper.make_node("MatMul", ["u", "w3"], ["out_bc"], name="broadcast"),
    ]
    graph = helper.make_graph(
        nodes, "built",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 10, 10]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, ["n", 5, 6])],
        [helper.make_tensor_value_info("out_fc", TensorProto.FLOAT, ["n", 7]),
         helper.make_tensor_value_info("out_bc", TensorProto.FLOAT, ["n", 3, 5, 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    n = 2
    macs = {
        "conv": n * 8 * 5 * 5 * (4 // 2) * 3 * 3,  # N*Cout*Hout*Wout*(Cin/g)*k*k
        "deconv": n * 8 * 5 * 5 * 3 * 2 * 2,  # N*Cin*Hin*Win*(Cout/g)*k*k
        "fc": n * 7 * 300,  # M*N*K
        "q_proj": n * 5 * 4 * 6,
        "k_proj": n * 5 * 4 * 6,
        "qk": n * 5 * 5 * 4,
        "pv": n * 5 * 4 * 5,
        "broadcast": n * 3 * 5 * 2 * 4,  # [n,1,5,4] x [3,4,2] -> [n,3,5,2], K=4
    }
    params = (8 * 2 * 9 + 8) + 8 * 3 * 4 + (300 * 7 + 7) + 6 * 4 * 2 + 3 * 4 * 2
    return model, macs, params


def test_built_model_by_hand() -> None:
    proto, expected, params = built_model()
    onnx.checker.check_model(proto, full_check=True)
    model = load_model(proto)
    stats = model_stats(model, {"x": (2, 4, 10, 10), "t": (2, 5, 6)})
    by_name = {r.name: r.macs for r in stats.node_rows if r.counted}
    assert by_name == expected
    assert stats.macs == sum(expected.values())
    assert stats.attention_macs == expected["qk"] + expected["pv"]
    # Constant-node and ConstantOfShape weights count; int64 shapes, scalars and unused tensors do not.
    assert stats.params == params
    sources = {w.name: w.source for w in stats.weight_rows}
    assert sources["conv.w"] == "constant" and sources["fc.b"] == "computed"
    assert {"unused", "two", "fc.b_shape", "axes1"}.isdisjoint(sources)
    assert {r.name: r.params for r in stats.node_rows}["fc"] == 300 * 7 + 7
    # inferred shapes agree with what onnxruntime produces
    feeds = {"x": np.ones((2, 4, 10, 10), np.float32), "t": np.ones((2, 5, 6), np.float32)}
    sess = session(proto)
    names = [o.name for o in sess.get_outputs()]
    shapes = infer_shapes(model, {"x": (2, 4, 10, 10), "t": (2, 5, 6)})
    for name, out in zip(names, run(sess, feeds)):
        assert shapes[name] == out.shape
    assert stats.op_histogram["MatMul"] == 5


def test_dynamic_dims_are_unknown_not_guessed() -> None:
    proto, expected, _ = built_model()
    model = load_model(proto)
    stats = model_stats(model)
    assert stats.macs is None
    assert {r.name for r in stats.unknown_macs} == set(expected)
    assert all("dynamic dim" in (r.reason or "") for r in stats.unknown_macs)
    # one symbol fixes every input that uses it
    assert count_macs(model, {"x": (2, 4, 10, 10)}) == sum(expected.values())
    assert count_macs(model, dims={"n": 2}) == sum(expected.values())


def test_shape_overrides_are_checked() -> None:
    model = load_model(sample("resnet_mini"))
    with pytest.raises(UsageError, match="unknown input"):
        infer_shapes(model, {"nope": (1, 3, 32, 32)})
    with pytest.raises(UsageError, match="rank 4"):
        infer_shapes(model, {"input": (1, 3, 32)})
    with pytest.raises(UsageError, match="fixed to 3"):
        infer_shapes(model, {"input": (1, 4, 32, 32)})


def test_analysis_does_not_modify_the_model() -> None:
    for name in ("transformer_encoder", "constant_weights", "constantofshape_weights"):
        model = load_model(sample(name))
        before = ir.to_proto(model).SerializeToString(deterministic=True)
        model_stats(model, dims={"batch": 2, "seq": 4})
        assert ir.to_proto(model).SerializeToString(deterministic=True) == before


def test_if_counts_the_costlier_branch() -> None:
    model = load_model(sample("if_model"))
    rows = {r.name: r.macs for r in node_macs(model, dims={"batch": 1})}
    then_macs, else_macs = rows["then.conv"], rows["else.conv"]
    assert then_macs == conv_macs(8, 8, 3, 16) and else_macs == conv_macs(8, 8, 1, 16)
    total = rows["pre.conv"] + max(then_macs, else_macs) + rows["post.conv"] + rows["fc"]
    assert count_macs(model, dims={"batch": 1}) == total


def test_quantized_and_normalized_models_keep_param_count(tmp_path: Path) -> None:
    """Params count the weights layers see: int8 storage does not change the count."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = sample("transformer_encoder")
    quantized = tmp_path / "q.onnx"
    quantize_dynamic(str(src), str(quantized), weight_type=QuantType.QInt8)
    before, after = load_model(src), load_model(quantized)
    assert count_params(after) == count_params(before)
    assert count_macs(after, dims={"batch": 1, "seq": 8}) == count_macs(before, dims={"batch": 1, "seq": 8})


# --------------------------------------------------------------------------- sparsity


def sparse_gemm_model(weight: np.ndarray, trans_b: int, computed_mask: np.ndarray | None = None) -> onnx.ModelProto:
    k = weight.shape[1] if trans_b else weight.shape[0]
    nodes = []
    inits = [numpy_helper.from_array(weight, "w")]
    name = "w"
    if computed_mask is not None:  # the weight is made at run time from constants (like a sparse decode)
        inits.append(numpy_helper.from_array(computed_mask, "mask"))
        nodes.append(helper.make_node("Mul", ["w", "mask"], ["w_masked"]))
        name = "w_masked"
    nodes.append(helper.make_node("Gemm", ["x", name], ["y"], name="fc", transB=trans_b))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def two_four(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random [rows, cols] with exactly 2 nonzeros in every 4 consecutive columns."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) + 3.0
    for r in range(rows):
        for g in range(0, cols, 4):
            w[r, g + rng.permutation(4)[:2]] = 0.0
    return w


def test_nm_pattern_along_reduction_axis() -> None:
    w = two_four(6, 16)  # [N, K] with transB=1: K is axis 1
    stats = model_stats(load_model(sparse_gemm_model(w, trans_b=1)))
    row = stats.weight_rows[0]
    assert (row.nm_pattern, row.nm_axis) == ("2:4", 1)
    assert row.zeros == 6 * 16 // 2 and row.sparsity == 0.5
    assert stats.nm_patterns == {"2:4": 1} and stats.sparsity == 0.5
    # the same matrix stored [K, N] (transB=0): the reduction axis is 0
    row = model_stats(load_model(sparse_gemm_model(np.ascontiguousarray(w.T), trans_b=0))).weight_rows[0]
    assert (row.nm_pattern, row.nm_axis) == ("2:4", 0)


def test_nm_pattern_rules() -> None:
    w = two_four(4, 8)
    assert nm_pattern(w, 1) == "2:4"
    one = w.copy()
    one[:, 1::2] = 0
    one[:, 0::4] = 0  # at most one nonzero per group of 4
    assert nm_pattern(one, 1) == "1:4"
    dense_group = w.copy()
    dense_group[0, :3] = 1.0  # three nonzeros in one group of 4: 2:4 broken; 4:8 still holds?
    assert nm_pattern(dense_group, 1) in (None, "4:8")
    assert nm_pattern(np.zeros((4, 8), np.float32), 1) is None
    unstructured = np.ones((4, 8), np.float32)
    unstructured[0, 0] = 0
    assert nm_pattern(unstructured, 1) is None


def test_computed_weights_are_evaluated_for_sparsity() -> None:
    w = np.arange(1, 33, dtype=np.float32).reshape(4, 8)
    mask = (two_four(4, 8, seed=3) != 0).astype(np.float32)
    proto = sparse_gemm_model(w, trans_b=1, computed_mask=mask)
    stats = model_stats(load_model(proto))
    (row,) = stats.weight_rows
    assert row.source == "computed" and row.name == "w_masked" and row.params == 32
    assert row.zeros == 16 and row.nm_pattern == "2:4"


# --------------------------------------------------------------------------- the command


def test_inspect_json(tmp_path: Path) -> None:
    data = cli_json("inspect", sample("resnet_mini"), "--shape", "input=1x3x32x32")
    params, macs = resnet_mini_expected()
    assert data["params"] == params and data["macs"] == macs
    assert data["bytes"] == os.path.getsize(sample("resnet_mini"))
    assert data["nodes"] == 29 and len(data["per_node"]) == 29
    assert data["inputs"][0] == {"name": "input", "dtype": "float", "declared_shape": ["batch", 3, 32, 32],
                                 "shape": [1, 3, 32, 32]}
    assert data["opsets"] == {"ai.onnx": 17} and data["ir_version"] == 8
    assert data["producer"].startswith("onnxsparse-samples")
    assert sum(r["macs"] for r in data["per_node"]) == macs
    assert sum(w["params"] for w in data["per_weight"]) == params
    assert data["op_histogram"]["Conv"] == 8
    assert data["sparsity"]["zero_fraction"] == 0.0
    conv = next(r for r in data["per_node"] if r["name"] == "layer2.0.conv1")
    assert conv["output_shapes"] == [[1, 32, 16, 16]] and conv["params"] == 16 * 32 * 9
    assert "prunable_groups" not in data or isinstance(data["prunable_groups"], list)


def test_inspect_sparse_stored_model_reports_storage_apart(tmp_path: Path) -> None:
    """Decode nodes of stored weights are not model nodes: same params/MACs/histogram as the dense model."""
    out = tmp_path / "sparse.onnx"
    cli_json("sparsify", sample("resnet_mini"), "-o", out, "--sparsity", "0.8", "--min-size", "1024")
    dense = cli_json("inspect", sample("resnet_mini"), "--shape", "input=1x3x32x32")
    data = cli_json("inspect", out, "--shape", "input=1x3x32x32")
    assert (data["params"], data["macs"], data["nodes"]) == (dense["params"], dense["macs"], dense["nodes"])
    assert data["op_histogram"] == dense["op_histogram"] and len(data["per_node"]) == dense["nodes"]
    storage = data["storage"]
    assert storage["tensors"] and storage["decode_nodes"] >= 3 * len(storage["tensors"])
    assert {t["format"] for t in storage["tensors"]} <= {"delta", "bitmask", "csr", "bsr"}
    assert storage["bytes_stored"] < 0.5 * storage["bytes_dense"]
    assert data["sparsity"]["zero_fraction"] > 0.5  # the decoded weights are measured
    assert dense["storage"] == {"decode_nodes": 0, "bytes_dense": 0, "bytes_stored": 0, "tensors": []}
    code, text, _ = cli("inspect", out)
    assert code == 0 and "Sparse storage:" in text and "delta" in text


def test_inspect_unknown_dims_json() -> None:
    data = cli_json("inspect", sample("resnet_mini"))
    assert data["macs"] is None and data["unknown_macs"]
    assert data["inputs"][0]["shape"] == [None, 3, 32, 32]
    assert cli_json("inspect", sample("resnet_mini"), "--dim", "batch=1")["macs"] == resnet_mini_expected()[1]


def test_inspect_text() -> None:
    code, out, err = cli("inspect", sample("resnet_mini"), "--shape", "input=1x3x32x32", "--top", "3")
    assert code == 0 and err == ""
    params, macs = resnet_mini_expected()
    assert f"({params:,})" in out and f"({macs:,})" in out
    assert "Top 3 of" in out and "Op histogram" in out and "Sparsity:" in out
    assert "[batch,3,32,32] -> [1,3,32,32]" in out
    code, out_all, _ = cli("inspect", sample("resnet_mini"), "--all")
    assert code == 0 and "All 29 nodes" in out_all and "MACs unknown" in out_all and "--dim batch=N" in out_all


@pytest.mark.parametrize("suffix", [".json", ".md", ".html"])
def test_inspect_report(suffix: str, tmp_path: Path) -> None:
    report = tmp_path / f"report{suffix}"
    code, out, err = cli("inspect", sample("densenet_block"), "--dim", "batch=1", "--report", report, "-q")
    assert code == 0, err
    text = report.read_text()
    if suffix == ".json":
        assert json.loads(text)["params"] == json.loads(json.dumps(cli_json("inspect", sample("densenet_block"))))["params"]
    else:
        assert "per_node" in text and "params" in text
    assert [p.name for p in tmp_path.iterdir()] == [report.name]


def test_inspect_external_data_model(tmp_path: Path) -> None:
    out = save_model(load_model(sample("resnet_mini")), tmp_path / "ext.onnx", external_data=True)
    data = cli_json("inspect", out, "--dim", "batch=1")
    assert data["bytes"] == out.stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size
    assert (data["params"], data["macs"]) == resnet_mini_expected()


# --------------------------------------------------------------------------- errors


def _write_external(tmp_path: Path, location: str | None = None, drop_data: bool = False) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(onnx.load(str(sample("resnet_mini"))), str(path), save_as_external_data=True,
                    location="w.data", size_threshold=0)
    if drop_data:
        (folder / "w.data").unlink()
    if location is not None:
        os.replace(folder / "w.data", tmp_path / "w.data")
        proto = onnx.load(str(path), load_external_data=False)
        for t in onnx.external_data_helper._get_all_tensors(proto):
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        path.write_bytes(proto.SerializeToString())
    return path


def _bad_models(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = sample("resnet_mini").read_bytes()
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp_path / "missing.onnx", "not found")
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    cases["not_onnx"] = (tmp_path / "text.onnx", "not a valid ONNX model")
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    cases["truncated"] = (tmp_path / "trunc.onnx", "not a valid ONNX model")
    proto = onnx.load(str(sample("resnet_mini")))
    proto.ir_version = onnx.IR_VERSION + 5
    (tmp_path / "new.onnx").write_bytes(proto.SerializeToString())
    cases["ir_too_new"] = (tmp_path / "new.onnx", "newer than supported")
    for key, location, match in (("absolute", "/tmp/w.data", "absolute path"),
                                 ("dotdot", "../w.data", "escapes the model's folder")):
        sub = tmp_path / key
        sub.mkdir()
        cases[key] = (_write_external(sub, location=location), match)
    sub = tmp_path / "nodata"
    sub.mkdir()
    cases["missing_external"] = (_write_external(sub, drop_data=True), "external data file missing")
    return cases


ERROR_CASES = ["missing", "not_onnx", "truncated", "ir_too_new", "absolute", "dotdot", "missing_external"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_inspect_errors(case: str, tmp_path: Path) -> None:
    path, match = _bad_models(tmp_path)[case]
    before = path.read_bytes() if path.exists() else None
    report = tmp_path / "report.json"
    for extra in ([], ["--json"], ["--report", str(report)]):
        code, out, err = cli("inspect", path, *extra)
        assert code == 2, (case, extra, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("onnxsparse: error: ") and match in lines[0], err
        assert "Traceback" not in err and out == ""
        assert not report.exists()
        assert (path.read_bytes() if path.exists() else None) == before  # input never touched
    assert not [p for p in tmp_path.rglob(".onnxsparse-*")]


def test_inspect_debug_shows_the_exception(tmp_path: Path) -> None:
    from onnxsparse.errors import ModelLoadError

    with pytest.raises(ModelLoadError):
        cli("inspect", tmp_path / "missing.onnx", "--debug")


@pytest.mark.parametrize(
    "args, match",
    [
        (["--shape", "input=1x3"], "rank 4"),
        (["--shape", "nope=1x3x32x32"], "unknown input"),
        (["--shape", "input=axb"], "bad --shape"),
        (["--dim", "batch"], "bad --dim"),
        (["--dim", "seq=4"], "symbolic dims are: batch"),
        (["--report", "r.txt"], "unknown report format"),
        (["--top", "-1"], "--top"),
    ],
)
def test_inspect_usage_errors(args: list[str], match: str, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, out, err = cli("inspect", sample("resnet_mini"), *args)
    finally:
        os.chdir(cwd)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and match in err
    assert list(tmp_path.iterdir()) == []


def test_fused_attention_ops_by_hand() -> None:
    """com.microsoft Attention / MultiHeadAttention / GroupQueryAttention and ONNX Attention (opset 23)."""
    b, s, past, hidden, heads, kv_heads = 2, 6, 4, 32, 4, 2
    head = hidden // heads
    f = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    w = numpy_helper.from_array(np.ones((hidden, 3 * hidden), np.float32), "qkv_w")
    nodes = [
        helper.make_node("Attention", ["x", "qkv_w"], ["a_out"], name="ms_attention", domain="com.microsoft",
                         num_heads=heads),
        helper.make_node("MultiHeadAttention", ["x", "k", "v"], ["m_out"], name="ms_mha",
                         domain="com.microsoft", num_heads=heads),
        helper.make_node("GroupQueryAttention", ["x", "gk", "gv", "past_k", "past_v", "seqlens", "total"],
                         ["g_out", "g_pk", "g_pv"], name="ms_gqa", domain="com.microsoft",
                         num_heads=heads, kv_num_heads=kv_heads),
        helper.make_node("Attention", ["q4", "k4", "v4"], ["o_out"], name="onnx_attention"),
    ]
    graph = helper.make_graph(
        nodes, "attn",
        [vi("x", f, [b, s, hidden]), vi("k", f, [b, past, hidden]), vi("v", f, [b, past, hidden]),
         vi("gk", f, [b, s, kv_heads * head]), vi("gv", f, [b, s, kv_heads * head]),
         vi("past_k", f, [b, kv_heads, past, head]), vi("past_v", f, [b, kv_heads, past, head]),
         vi("seqlens", TensorProto.INT32, [b]), vi("total", TensorProto.INT32, []),
         vi("q4", f, [b, heads, s, head]), vi("k4", f, [b, kv_heads, past, head]),
         vi("v4", f, [b, kv_heads, past, head])],
        [vi(n, f, None) for n in ("a_out", "m_out", "g_out", "o_out")],
        initializer=[w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23),
                                                    helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 10
    rows = {r.name: r.macs for r in node_macs(load_model(proto))}
    core = lambda kv_len: 2 * b * s * kv_len * hidden  # noqa: E731  QK^T + PV, Dq = Dv = hidden
    assert rows["ms_attention"] == b * s * hidden * 3 * hidden + core(s)
    assert rows["ms_mha"] == core(past)
    assert rows["ms_gqa"] == core(past + s)
    assert rows["onnx_attention"] == core(past)


def test_prunable_groups_section_follows_the_graph_package() -> None:
    """Present exactly when ``onnxsparse.graph`` exports ``build_groups``; never a placeholder."""
    import onnxsparse.graph as graph_pkg

    data = cli_json("inspect", sample("resnet_mini"), "--dim", "batch=1")
    if getattr(graph_pkg, "build_groups", None) is None:
        assert "prunable_groups" not in data
    else:
        groups = data["prunable_groups"]
        assert groups and all({"id", "root", "channels", "prunable", "reasons"} <= set(g) for g in groups)
        assert all(g["reasons"] for g in groups if not g["prunable"])


def test_nm_pattern_of_conv_is_along_input_channels() -> None:
    cout, cin, k = 4, 8, 3
    # 2:4 along Cin for every (cout, kh, kw): build it as [cout*k*k, cin] and move Cin to axis 1
    w = two_four(cout * k * k, cin, seed=5).reshape(cout, k, k, cin).transpose(0, 3, 1, 2).copy()
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[k, k])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (row,) = model_stats(load_model(proto)).weight_rows
    assert (row.nm_pattern, row.nm_axis) == ("2:4", 1)
    assert nm_pattern(w, 0) is None  # not along output channels


BERT_FAMILY = ["attn_bert_torchscript", "attn_tf2onnx", "attn_ms_attention", "attn_ms_mha"]
GQA_FAMILY = ["attn_llama_gqa", "attn_ms_gqa"]


def test_attention_exports_agree_and_match_hand_count() -> None:
    """The same attention written out (TorchScript, tf2onnx) or fused (com.microsoft ops) counts the same."""
    b, s = 2, 8
    h, ffn, layers = 32, 64, 2  # samples/build_attention_samples.py: build_bert
    per_layer_attn = 2 * b * s * s * h
    bert = b * s * (4 * h * h + 2 * h * ffn) * layers + per_layer_attn * layers
    hq, hkv, d, inter = 4, 2, 8, 48  # build_attn_llama_gqa
    gqa = b * s * (2 * h * hq * d + 2 * h * hkv * d + 3 * h * inter) + 2 * b * hq * s * s * d
    for names, expected, attention in ((BERT_FAMILY, bert, per_layer_attn * layers),
                                       (GQA_FAMILY, gqa, 2 * b * hq * s * s * d)):
        for name in names:
            model = load_model(sample(name))
            symbols = {dim.value for v in model.graph.inputs for dim in v.shape if not isinstance(dim, int)}
            stats = model_stats(model, dims={"batch": b, **{k: s for k in symbols - {"batch"}}}, sparsity=False)
            assert (name, stats.macs, stats.attention_macs) == (name, expected, attention)


def test_failing_group_analysis_is_reported_not_fatal(monkeypatch) -> None:
    import onnxsparse.graph as graph_pkg

    def broken(model):
        raise RuntimeError("rule exploded")

    monkeypatch.setattr(graph_pkg, "build_groups", broken, raising=False)
    data = cli_json("inspect", sample("resnet_mini"), "--dim", "batch=1")
    assert data["prunable_groups_error"] == "RuntimeError: rule exploded"
    assert "prunable_groups" not in data and data["macs"] == resnet_mini_expected()[1]
    code, out, _ = cli("inspect", sample("resnet_mini"))
    assert code == 0 and "Prunable groups: not available (RuntimeError: rule exploded)" in out


@pytest.mark.parametrize("name", ["attn_llama_gqa", "tiny_decoder_kv", "real_torch_gpt2_ts", "real_torch_bert_ts",
                                  "real_torch_vit_ts"])
def test_concrete_input_shapes_make_every_shape_known(name) -> None:
    """onnx's inference leaves some Shape-derived dims unknown (Range lengths, masks, KV caches); onnxruntime's
    symbolic shape inference, run after it, resolves them: with every input dim given, no dim stays unknown."""
    from onnxsparse.analysis.shapes import infer_shapes
    from onnxsparse.io import load_model

    model = load_model(sample(name))
    given = {v.name: tuple(d if isinstance(d, int) else 3 for d in v.shape)
             for v in model.graph.inputs if not v.is_initializer()}
    shapes = infer_shapes(model, given)
    produced = [out.name for node in model.graph for out in node.outputs if out.name]
    unknown = [n for n in produced if shapes.get(n) is None or None in shapes[n]]
    assert not unknown, unknown[:5]
