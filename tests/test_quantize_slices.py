"""Issue 16: onnxruntime's quantizer over slices of a model gives what one whole-model call gives."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsparse.quantize._slices as slices_module
import onnxsparse.quantize.api as api
from onnxsparse.errors import Decline
from onnxsparse.quantize import quantize
from onnxsparse.quantize._prepare import pre_process, pre_process_external, save_proto
from onnxsparse.quantize._slices import plan_slices, quantize_in_slices
from onnxsparse.quantize.config import QuantizeConfig
from onnxsparse.quantize.cpu import detect_cpu
from onnxsparse.quantize.modes import RunContext, get_mode

from test_quantize_child import _files

H = 64


def _w(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    array = rng.standard_normal(shape).astype(np.float32)
    array[..., ::5] = 0.0  # pruned zeros
    return numpy_helper.from_array(array, name)


def _mlp(rng: np.random.Generator) -> tuple[list, list]:
    nodes, inits = [], []
    for i in range(3):
        x = "x" if i == 0 else f"h{i - 1}"
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"h{i}" if i < 2 else "y"], name=f"relu{i}")]
        inits += [_w(rng, f"w{i}", (H, H)), _w(rng, f"b{i}", (H,))]
    return nodes, inits


def _attention_like(rng: np.random.Generator) -> tuple[list, list]:
    """Q, K and V read one activation (one DynamicQuantizeLinear for the three); a Gemm after them."""
    nodes = [helper.make_node("MatMul", ["x", f"w{p}"], [p], name=f"proj_{p}") for p in "qkv"]
    nodes += [helper.make_node("Add", ["q", "k"], ["qk"], name="qk"),
              helper.make_node("Mul", ["qk", "v"], ["z"], name="z"),
              helper.make_node("Gemm", ["z", "wo", "bo"], ["g"], name="out", transB=1),
              helper.make_node("MatMul", ["g", "w2"], ["y"], name="mm2")]
    inits = [_w(rng, f"w{p}", (H, H)) for p in "qkv"]
    inits += [_w(rng, "wo", (H, H)), _w(rng, "bo", (H,)), _w(rng, "w2", (H, H))]
    return nodes, inits


def _build(folder: Path, kind: str) -> Path:
    rng = np.random.default_rng(3)
    nodes, inits = (_mlp if kind == "mlp" else _attention_like)(rng)
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model)  # what pre-processing leaves: every activation typed
    path = folder / f"{kind}.onnx"
    save_proto(model, path, external_data=True)
    return path


def _settings(mode: str):
    config = QuantizeConfig(mode=mode, block_size=32) if mode == "int4" else QuantizeConfig(mode=mode)
    return get_mode(mode).resolve(config, detect_cpu())


def _content(path: Path) -> tuple[dict[str, tuple[int, tuple[int, ...], bytes]], Counter]:
    model = onnx.load(str(path), load_external_data=True)
    tensors = {t.name: (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer}
    nodes = Counter(
        (n.op_type, n.domain, n.name, tuple(n.input), tuple(n.output),
         tuple(sorted(a.SerializeToString() for a in n.attribute)))
        for n in model.graph.node
    )
    return tensors, nodes


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("kind", ["mlp", "attention"])
@pytest.mark.parametrize("mode", ["dynamic", "int4"])
def test_slices_give_the_whole_model_result(tmp_path: Path, mode: str, kind: str) -> None:
    src = _build(tmp_path, kind)
    quant_mode, settings = get_mode(mode), _settings(mode)
    whole = tmp_path / "whole.onnx"
    quant_mode.run(settings, RunContext(src, whole, [], None, True))
    count: list[int] = []

    def run_slice(a: Path, b: Path) -> None:
        count.append(1)
        quant_mode.run(settings, RunContext(a, b, [], None, True))

    sliced = tmp_path / "sliced.onnx"
    n = quantize_in_slices(run_slice, src, sliced, mode, [], budget=1)
    onnx.checker.check_model(str(sliced))
    structure = onnx.load(str(src), load_external_data=False)
    weighted = [node for node in structure.graph.node
                if node.op_type in slices_module.SLICED_OPS[mode] and node.input[1] in {i.name for i in structure.graph.initializer}]
    # every weighted node alone, except that q, k and v share their activation (dynamic: one quantized x)
    assert n == len(count) == (len(weighted) - 2 if kind == "attention" else len(weighted)) and n >= 2
    got_tensors, got_nodes = _content(sliced)
    want_tensors, want_nodes = _content(whole)
    assert got_tensors.keys() == want_tensors.keys()
    for name, value in want_tensors.items():
        assert got_tensors[name] == value, name
    assert got_nodes == want_nodes
    x = np.random.default_rng(5).standard_normal((3, H)).astype(np.float32)
    np.testing.assert_array_equal(_run(sliced, x), _run(whole, x))
    # left beside the stitched model: only the slices' weights it refers to
    assert sorted(p.name for p in tmp_path.glob("slice[0-9]*")) == [f"slice{k}.quantized.onnx.data" for k in range(n)]


def _embedding_mlp(rng: np.random.Generator, reader: str) -> tuple[list, list]:
    """ids -> Gather(table) -> READER -> the MLP: an embedding as transformer exports have it."""
    nodes, inits = _mlp(rng)
    nodes[0].input[0] = "e"
    nodes[:0] = [helper.make_node("Gather", ["table", "ids"], ["g"], name="embed"),
                 helper.make_node(reader, ["g", "pos"] if reader == "Add" else ["g"], ["e"], name="after_embed",
                                  **({"perm": [0, 1]} if reader == "Transpose" else {}))]
    inits += [_w(rng, "table", (50, H)), _w(rng, "pos", (H,))]
    return nodes, inits


def _embedding_model(folder: Path, reader: str) -> Path:
    nodes, inits = _embedding_mlp(np.random.default_rng(0), reader)
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", H])], inits)
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    path = folder / "emb.onnx"
    save_proto(model, path, external_data=True)
    return path


def test_a_gather_of_a_weight_is_sliced_alone_when_its_output_is_read_as_float(tmp_path: Path) -> None:
    src = _embedding_model(tmp_path, "Add")
    quant_mode, settings = get_mode("dynamic"), _settings("dynamic")
    whole = tmp_path / "whole.onnx"
    quant_mode.run(settings, RunContext(src, whole, [], None, True))
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(str(whole), load_external_data=False).graph.node}
    sliced = tmp_path / "sliced.onnx"
    n = quantize_in_slices(lambda a, b: quant_mode.run(settings, RunContext(a, b, [], None, True)),
                           src, sliced, "dynamic", [], budget=1)
    assert n == 4
    assert _content(sliced) == _content(whole)
    ids = np.array([3, 0, 49, 7], np.int64)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0] for p in (sliced, whole)]
    np.testing.assert_array_equal(*run)


def test_a_gather_whose_output_may_stay_quantized_is_not_sliced(tmp_path: Path) -> None:
    nodes, inits = _embedding_mlp(np.random.default_rng(0), "Transpose")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(Decline, match="feeds Transpose"):
        plan_slices(model, "dynamic", budget=1)
    assert len(plan_slices(model, "dynamic", exclude=["embed"], budget=1)) == 3
    assert len(plan_slices(model, "int4", budget=1)) == 3  # int4 leaves Gather alone
    model.graph.node.append(helper.make_node("LSTM", ["y", "w", "r"], ["l"], name="lstm"))
    with pytest.raises(Decline, match="LSTM"):
        plan_slices(model, "dynamic", exclude=["embed"], budget=1)


def test_one_slice_is_declined_so_small_models_keep_one_call(tmp_path: Path) -> None:
    structure = onnx.load(str(_build(tmp_path, "mlp")), load_external_data=False)
    with pytest.raises(Decline, match="fit one slice"):
        plan_slices(structure, "dynamic")
    with pytest.raises(Decline, match="whole model"):
        plan_slices(structure, "static", budget=1)


@pytest.mark.parametrize("mode", ["dynamic", "int4"])
def test_the_command_writes_the_same_model_in_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Through ``quantize()`` on the external-data path (in-process here): files equal to one whole call."""
    src = _build(tmp_path, "attention")
    monkeypatch.setattr(api, "EXTERNAL_DATA_THRESHOLD", 0)
    monkeypatch.setattr(api, "in_child", lambda fn, *args, tmp: fn(*args))
    opts = {"mode": mode, "calib": "random", "shape": {"x": (4, H)}, **({"block_size": 32} if mode == "int4" else {})}
    results = {}
    for name, budget in (("whole", 2**40), ("sliced", 1)):
        monkeypatch.setattr(slices_module, "SLICE_BYTES", budget)
        (tmp_path / name).mkdir()
        results[name] = quantize(src, tmp_path / name / "q.onnx", **opts).report.as_dict()
    for report in results.values():
        # the file sizes differ by a few dozen bytes of graph order and value_info, not by tensors (below)
        for key in ("seconds", "output", "bytes_after", "bytes_ratio"):
            report.pop(key)
    steps = {name: report.pop("preprocess") for name, report in results.items()}
    assert results["sliced"] == results["whole"]
    assert any(re.fullmatch(r"onnxruntime's quantizer over [23] weight slices .*", s) for s in steps["sliced"]["steps"])
    assert {"step": "quantizer in weight slices", "reason": f"the weights fit one slice of {2**40} bytes; quantized in one call"} \
        in steps["whole"]["skipped"]
    assert not any("weight slices" in s for s in steps["whole"]["steps"])
    assert results["whole"]["zeros"]["zeros_kept"] == results["whole"]["zeros"]["zeros_before"] > 0
    got_tensors, got_nodes = _content(tmp_path / "sliced" / "q.onnx")
    want_tensors, want_nodes = _content(tmp_path / "whole" / "q.onnx")
    assert got_tensors == want_tensors and got_nodes == want_nodes
    assert set(_files(tmp_path / "sliced")) == {"q.onnx", "q.onnx.data"}


def _conv_bn_reshape(folder: Path) -> Path:
    """Conv + BatchNorm (the optimisation folds them), a Reshape by an initializer, a symbolic batch."""
    rng = np.random.default_rng(1)
    c = 16
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["bn"], name="bn"),
             helper.make_node("Reshape", ["bn", "shape"], ["flat"], name="flat"),
             helper.make_node("MatMul", ["flat", "w2"], ["y"], name="mm")]
    inits = [_w(rng, "cw", (c, 3, 3, 3)), numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), "s"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "bb"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "mu"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), "var"),
             numpy_helper.from_array(np.array([-1, c * 64], np.int64), "shape"), _w(rng, "w2", (c * 64, 16))]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = folder / "cnn.onnx"
    save_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path, True)
    return path


def _whole(path: Path) -> tuple[dict, Counter, dict, dict]:
    model = onnx.load(str(path), load_external_data=True)
    tensors, nodes = _content(path)
    infos = {vi.name: vi.type.SerializeToString() for vi in (*model.graph.value_info, *model.graph.output)}
    return tensors, nodes, infos, {p.key: p.value for p in model.metadata_props}


@pytest.mark.parametrize("build", [_conv_bn_reshape, lambda folder: _build(folder, "attention")])
@pytest.mark.parametrize("options", [{}, {"skip_symbolic_shape": True}, {"skip_optimization": True}])
def test_pre_processing_with_weights_on_disk_matches_onnxruntimes(tmp_path: Path, build, options: dict) -> None:
    src = build(tmp_path)
    ours, theirs = tmp_path / "ours.onnx", tmp_path / "theirs.onnx"
    pre_process(src, theirs, True, options)
    pre_process_external(src, ours, options)
    got, want = _whole(ours), _whole(theirs)
    source_ops = Counter(n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node)
    ops = [Counter(k[0] for k in nodes.elements()) for nodes in (got[1], want[1])]
    if options == {"skip_symbolic_shape": True} and ops[1] == source_ops != ops[0]:
        # onnxruntime 1.24's quant_pre_process runs the optimisation without symbolic inference, then
        # saves the model it loaded before it (fixed in later releases); ours keeps the optimised graph
        pytest.skip(f"onnxruntime {ort.__version__} drops its own optimisation when symbolic inference is skipped")
    assert got == want
    if not options:
        assert "BatchNormalization" not in {k[0] for k in want[1]} or build is not _conv_bn_reshape


@pytest.mark.parametrize("name", ["bert_sdpa_dynamo", "llama_sdpa_ts", "tv_resnet50_none_ts"])
def test_corpus_exports_quantize_the_same_in_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Real exports (embeddings as Gather, fused and decomposed attention, convolutions), dynamic mode."""
    src = Path(__file__).resolve().parents[1] / "samples" / "corpus" / f"{name}.onnx"
    monkeypatch.setattr(api, "EXTERNAL_DATA_THRESHOLD", 0)
    monkeypatch.setattr(api, "in_child", lambda fn, *args, tmp: fn(*args))
    counts: list[int] = []
    real = slices_module.quantize_in_slices

    def counted(*args, **kwargs) -> int:
        counts.append(real(*args, **kwargs))
        return counts[-1]

    monkeypatch.setattr(slices_module, "quantize_in_slices", counted)
    for tag, budget in (("whole", 2**40), ("sliced", 1)):
        monkeypatch.setattr(slices_module, "SLICE_BYTES", budget)
        (tmp_path / tag).mkdir()
        quantize(src, tmp_path / tag / "q.onnx", mode="dynamic", check_fp32=False)
    assert counts and counts[-1] >= 8, "the model was quantized in slices"
    assert _content(tmp_path / "sliced" / "q.onnx") == _content(tmp_path / "whole" / "q.onnx")
