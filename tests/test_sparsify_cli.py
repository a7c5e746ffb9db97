"""``sparsify`` / ``densify`` commands, COO files, external data and the numpy loader."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import onnx
import pytest
from helpers import cli, cli_json, random_feeds, run, sample, session
from test_formats_util import mlp_model, same_bits, with_random_weights

from onnxsparse import formats as F
from onnxsparse.io import load_model, save_model
from onnxsparse.runtime import session as sparse_session
from onnxsparse.sparsity import nm_violations


@pytest.fixture(scope="module")
def big_mlp(tmp_path_factory) -> str:
    """An MLP with tensors above the default --min-size."""
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    onnx.save(mlp_model(np.random.default_rng(0), dims=(256, 192, 128, 64)), path)
    return str(path)


def outputs(path, feeds):
    return run(str(path), feeds)


def test_sparsify_json_report_and_outputs(big_mlp, tmp_path):
    out = tmp_path / "sparse.onnx"
    result = cli_json("sparsify", big_mlp, "-o", out, "--sparsity", "0.9", "--format", "auto")
    assert result["output"] == str(out)
    assert result["config"]["lossless"] is False
    totals = result["totals"]
    assert totals["pruned"] == 3 and totals["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert totals["bytes_stored"] < 0.2 * totals["bytes_dense"]
    assert 1.0 <= totals["vs_bound"] < 1.3
    for row in result["tensors"]:
        assert {"name", "sparsity", "bytes_dense", "bytes_stored", "format", "bound_bytes", "vs_bound"} <= set(row)
        assert row["bytes_stored"] >= row["bound_bytes"]
    assert result["file_bytes_after"] < result["file_bytes_before"] / 4
    onnx.checker.check_model(str(out), full_check=True)
    dense = tmp_path / "dense.onnx"
    code, text, err = cli("densify", out, "-o", dense)
    assert code == 0, err
    assert "written" in text
    feeds = random_feeds(big_mlp, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(outputs(out, feeds), outputs(dense, feeds)))


def test_lossless_without_sparsity(big_mlp, tmp_path):
    source = load_model(big_mlp)
    array = source.graph.initializers["w0"].const_value.numpy().copy()
    array[np.abs(array) < 1.5] = 0
    source.graph.initializers["w0"].const_value = ir.Tensor(array, name="w0")
    path = tmp_path / "zeros.onnx"
    save_model(source, path)
    out = tmp_path / "packed.onnx"
    result = cli_json("sparsify", path, "-o", out)
    assert result["config"]["lossless"] is True
    rows = {r["name"]: r for r in result["tensors"]}
    assert rows["w0"]["format"] != "dense" and rows["w1"]["format"] == "dense"
    assert not any(r["pruned"] for r in rows.values())
    feeds = random_feeds(big_mlp, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(outputs(path, feeds), outputs(out, feeds)))


def test_text_output_and_reports(big_mlp, tmp_path):
    out = tmp_path / "s.onnx"
    code, text, err = cli("sparsify", big_mlp, "-o", out, "--pattern", "2:4", "--report", tmp_path / "r.md")
    assert code == 0, err
    assert "vs bound" in text and "information bound" in text
    assert (tmp_path / "r.md").read_text().startswith("# onnxsparse sparsify")
    model = load_model(out)
    for name, axis in (("w0", 0), ("w1", 1), ("w2", 0)):
        assert name in F.read_storage(model)
    densified = load_model(out)
    from onnxsparse.passes.densify import densify

    densify(densified)
    for name, axis in (("w0", 0), ("w1", 1), ("w2", 0)):
        assert nm_violations(densified.graph.initializers[name].const_value.numpy(), 2, 4, axis) == 0
    code, _, err = cli("sparsify", big_mlp, "-o", tmp_path / "t.onnx", "--sparsity", "0.5", "--report",
                       tmp_path / "r.json")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["tensors"] == 3


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sparsity", "0.3", "--pattern", "2:4"], "fixes the sparsity"),
        (["--pattern", "block:0x4", "--sparsity", "0.5"], "block sides"),
        (["--ratio", "fc0"], "(GLOB=R), got"),
        (["--block", "4by4"], "expected RxC"),
        (["--decoder", "bitmask"], "FORMAT=VARIANT"),
        (["--sparsity", "2"], "[0, 1)"),
        (["--report", "x.txt"], "unknown report format"),
    ],
)
def test_usage_errors_exit_2(big_mlp, tmp_path, argv, message):
    code, _, err = cli("sparsify", big_mlp, "-o", tmp_path / "o.onnx", *argv)
    assert code == 2
    assert message in err and err.startswith("onnxsparse: error:")
    assert not (tmp_path / "o.onnx").exists()


def test_refuses_to_overwrite_input(big_mlp):
    code, _, err = cli("sparsify", big_mlp, "-o", big_mlp, "--sparsity", "0.5")
    assert code == 2 and "refusing to overwrite" in err


def test_format_choices_come_from_registry():
    code, text, _ = cli("sparsify", "--help")
    assert code == 0
    for name in ("auto", *F.FORMATS.names()):
        assert name in text
    assert "N:M" in text and "block:RxC" in text


def test_coo_file_passes_checker_and_loads_back(big_mlp, tmp_path):
    out = tmp_path / "coo.onnx"
    result = cli_json("sparsify", big_mlp, "-o", out, "--sparsity", "0.95", "--format", "coo")
    assert set(result["totals"]["formats"]) <= {"coo", "dense"} and "coo" in result["totals"]["formats"]
    proto = onnx.load(str(out))
    # (full_check=True runs shape inference, which types sparse initializers as sparse_tensor
    # and rejects them as MatMul/Gemm inputs: an ONNX limitation of sparse_initializer itself)
    onnx.checker.check_model(proto)
    assert len(proto.graph.sparse_initializer) == 3
    for sparse in proto.graph.sparse_initializer:
        assert sparse.indices.data_type == onnx.TensorProto.INT64
        assert len(sparse.indices.dims) == 1
    assert not any(n.name.startswith(F.NODE_PREFIX) for n in proto.graph.node)
    assert F.META_KEY not in {p.key for p in proto.metadata_props}
    masked = tmp_path / "masked.onnx"
    cli_json("sparsify", big_mlp, "-o", masked, "--sparsity", "0.95", "--format", "dense")
    feeds = random_feeds(big_mlp, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(outputs(masked, feeds), outputs(out, feeds)))
    assert all(np.array_equal(a, b) for a, b in zip(outputs(masked, feeds), sparse_session(out).run(None, feeds)))
    dense = tmp_path / "dense.onnx"
    result = cli_json("densify", out, "-o", dense)
    assert result["formats"] == {"coo (sparse_initializer)": 3}
    a, b = load_model(dense), load_model(masked)
    for name in ("w0", "w1", "w2"):
        assert same_bits(a.graph.initializers[name].const_value.numpy(), b.graph.initializers[name].const_value.numpy())


def test_external_data_in_and_out(big_mlp, tmp_path):
    source = load_model(big_mlp)
    external = tmp_path / "ext" / "model.onnx"
    external.parent.mkdir()
    save_model(source, external, external_data=True)
    assert (external.parent / "model.onnx.data").exists()
    out = tmp_path / "ext" / "sparse.onnx"
    cli_json("sparsify", external, "-o", out, "--sparsity", "0.8", "--external-data")
    assert (external.parent / "sparse.onnx.data").exists()
    proto = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    masked = tmp_path / "masked.onnx"
    cli_json("sparsify", big_mlp, "-o", masked, "--sparsity", "0.8", "--format", "dense")
    feeds = random_feeds(big_mlp, seed=4)
    expected = outputs(masked, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(expected, outputs(out, feeds)))
    for strategy in ("external", "inline"):
        got = sparse_session(out, strategy=strategy).run(None, feeds)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got))
    dense = tmp_path / "ext" / "dense.onnx"
    cli_json("densify", out, "-o", dense, "--external-data")
    assert all(np.array_equal(a, b) for a, b in zip(expected, outputs(dense, feeds)))


@pytest.mark.parametrize("strategy", ["external", "inline"])
def test_loader_matches_onnxruntime(tmp_path, strategy):
    model = with_random_weights(load_model(sample("transformer_encoder")))
    big = [v for v in model.graph.initializers.values() if v.const_value is not None and v.const_value.size >= 1024]
    zero = big[-1].const_value.numpy()
    big[-1].const_value = ir.Tensor(np.zeros_like(zero), name=big[-1].name)  # all fill: stored without payload
    path = tmp_path / "te.onnx"
    save_model(model, path)
    out = tmp_path / "te_sparse.onnx"
    cli_json("sparsify", path, "-o", out, "--sparsity", "0.85", "--min-size", "1024")
    feeds = random_feeds(str(path), seed=5)
    expected = outputs(out, feeds)
    sess = sparse_session(out, strategy=strategy)
    assert all(np.array_equal(a, b) for a, b in zip(expected, sess.run(None, feeds)))
    # the loader decoded the tensors itself (the storage metadata is gone from what onnxruntime got)
    assert F.META_KEY not in sess.get_modelmeta().custom_metadata_map
    assert F.META_KEY in session(out).get_modelmeta().custom_metadata_map


def test_loader_opens_plain_models_directly():
    sess = sparse_session(sample("resnet_mini"))
    feeds = random_feeds(sample("resnet_mini"), seed=6)
    expected = session(sample("resnet_mini")).run(None, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(expected, sess.run(None, feeds)))


def test_loader_rejects_unknown_strategy():
    from onnxsparse.errors import UsageError

    with pytest.raises(UsageError, match="strategy"):
        sparse_session(sample("resnet_mini"), strategy="magic")


def test_densify_plain_model_is_a_no_op(tmp_path):
    result = cli_json("densify", sample("digits_cnn"), "-o", tmp_path / "d.onnx")
    assert result["densified"] == 0


def test_loader_without_metadata_falls_back_to_densify(big_mlp, tmp_path):
    out = tmp_path / "s.onnx"
    cli_json("sparsify", big_mlp, "-o", out, "--sparsity", "0.8")
    proto = onnx.load(str(out))
    for entry in list(proto.metadata_props):
        proto.metadata_props.remove(entry)
    stripped = tmp_path / "stripped.onnx"
    onnx.save(proto, str(stripped))
    feeds = random_feeds(big_mlp, seed=7)
    expected = outputs(out, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(expected, sparse_session(stripped).run(None, feeds)))
