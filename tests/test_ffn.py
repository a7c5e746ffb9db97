"""FFN neuron pruning: masked-equivalence oracle over every activation form we match."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import sample
from test_heads import assert_equivalent, attn_samples, load, prune_and_check

from onnxsparse.passes.normalize import normalize
from onnxsparse.passes.prune_heads import prune_heads


@pytest.mark.parametrize("name,total,gated", [
    ("transformer_encoder", 128, False),  # torch Erf-GELU: Div -> Erf -> Add -> Mul -> Mul
    ("digits_transformer", 128, False),  # real TorchScript export (bias Add with swapped inputs)
    ("tiny_gqa", 64, True),  # SwiGLU: Sigmoid * x * up
])
def test_exported_ffn(name: str, total: int, gated: bool) -> None:
    sizes = ((3, 5), (1, 8)) if name == "digits_transformer" else ((3, 5), (1, 11))
    report = prune_and_check(sample(name), ffn=0.25, sizes=sizes)
    assert report["ffn"] and all(b["total"] == total and b["kept"] == total - total // 4 for b in report["ffn"])
    assert all(b["gated"] is gated for b in report["ffn"])
    assert not report["attention"]


def test_dynamo_ffn() -> None:
    report = prune_and_check(sample("digits_transformer_dynamo"), ffn=0.5, sizes=((3, 8), (1, 8)))
    assert [b["kept"] for b in report["ffn"]] == [64, 64]
    assert [b["name"] for b in report["ffn"]] == ["layers.0.fc1", "layers.1.fc1"]


@pytest.mark.parametrize("name,act", [
    ("attn_tf2onnx", "x * 0.5 * (1 + Erf(x * 0.7071))"),
    ("attn_llama_gqa", "SwiGLU"),
    ("attn_ms_attention", "Relu"),
    ("attn_ms_mha", "com.microsoft.Gelu"),
    ("attn_ms_gqa", "SwiGLU"),
    ("attn_onnx_attention", "Gelu (opset 20)"),
])
def test_activation_forms(name: str, act: str) -> None:
    report = prune_and_check(attn_samples.BUILDERS[name](), ffn=0.5)
    assert report["ffn"], act
    assert all(b["kept"] * 2 == b["total"] for b in report["ffn"]), act
    assert not [s for s in report["skipped"] if s["kind"] == "ffn"]


def test_heads_and_ffn_together_with_round_to() -> None:
    report = prune_and_check(attn_samples.build_attn_bert_torchscript(), heads=0.25, ffn=0.3, round_to=8)
    assert [b["heads_kept"] for b in report["attention"]] == [3, 3]
    # 64 * 0.3 = 19.2 -> remove 19 -> keep 45 -> rounded up to 48
    assert [b["kept"] for b in report["ffn"]] == [48, 48]


def test_at_least_one_neuron_kept() -> None:
    report = prune_and_check(sample("transformer_encoder"), ffn=0.999)
    assert [b["kept"] for b in report["ffn"]] == [1, 1]


def _mlp(act: str, gemm: bool = False) -> onnx.ModelProto:
    """x[B, 16] -> Linear(16, 24) -> act -> Linear(24, 8); Gemm(transB=1) or MatMul+Add."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((16, 24)).astype(np.float32) * 0.3, rng.standard_normal(24).astype(np.float32)
    w2, b2 = rng.standard_normal((24, 8)).astype(np.float32) * 0.3, rng.standard_normal(8).astype(np.float32)
    inits = [numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(b2, "b2")]
    nodes = []
    if gemm:
        inits += [numpy_helper.from_array(w1.T.copy(), "w1"), numpy_helper.from_array(w2.T.copy(), "w2")]
        nodes.append(helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1))
    else:
        inits += [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
        nodes += [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
                  helper.make_node("Add", ["h0", "b1"], ["h"], name="fc1_bias")]
    if act == "tanh_gelu":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
                  (("three", 3.0), ("c", 0.044715), ("k", 0.7978846), ("one", 1.0), ("half", 0.5))]
        nodes += [helper.make_node("Pow", ["h", "three"], ["p"]), helper.make_node("Mul", ["p", "c"], ["pc"]),
                  helper.make_node("Add", ["h", "pc"], ["s"]), helper.make_node("Mul", ["s", "k"], ["sk"]),
                  helper.make_node("Tanh", ["sk"], ["t"]), helper.make_node("Add", ["t", "one"], ["t1"]),
                  helper.make_node("Mul", ["h", "t1"], ["ht"]), helper.make_node("Mul", ["ht", "half"], ["a"])]
    elif act == "prelu":  # per-neuron slope: a constant with the neuron axis, sliced too
        inits.append(numpy_helper.from_array(rng.uniform(0, 0.3, 24).astype(np.float32), "slope"))
        nodes.append(helper.make_node("PRelu", ["h", "slope"], ["a"]))
    else:
        nodes.append(helper.make_node(act, ["h"], ["a"]))
    if gemm:
        nodes.append(helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2", transB=1))
    else:
        nodes += [helper.make_node("MatMul", ["a", "w2"], ["y0"], name="fc2"),
                  helper.make_node("Add", ["y0", "b2"], ["y"], name="fc2_bias")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("act,gemm", [("tanh_gelu", False), ("prelu", False), ("Relu", True), ("Sigmoid", True)])
def test_mlp_forms(act: str, gemm: bool) -> None:
    proto = _mlp(act, gemm)
    report = prune_and_check(proto, ffn=0.5, sizes=((3, 1), (1, 1)))
    assert [b["kept"] for b in report["ffn"]] == [12]
    model = load(proto)
    prune_heads(model, ffn=0.5)
    w1 = model.graph.initializers["w1"].const_value
    assert tuple(w1.shape) == ((12, 16) if gemm else (16, 12))


def test_weakest_neurons_go_first() -> None:
    proto = _mlp("Relu")
    model = load(proto)
    normalize(model)
    w = model.graph.initializers["w1"]
    arr = w.const_value.numpy().copy()
    arr[:, [3, 7, 11]] *= 1e-4
    w.const_value = ir.tensor(arr, name="w1")
    report = prune_heads(model, ffn=0.125).report  # 24 * 0.125 = 3
    assert report["ffn"][0]["removed"] == [3, 7, 11]


def test_intermediate_with_extra_consumer_is_skipped() -> None:
    proto = _mlp("Relu")
    proto.graph.output.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 24]))
    model = load(proto)
    result = prune_heads(model, ffn=0.5)
    assert not result.report["ffn"]
    (skip,) = result.report["skipped"]
    assert "'a' is a graph output" in skip["reason"]
    assert_equivalent(proto, model, result.report, sizes=((2, 1),))


def test_plain_linear_chain_prunes_exactly_too() -> None:
    """Linear -> Identity -> Linear: the hidden width is a neuron group like any other (exact)."""
    report = prune_and_check(_mlp("Identity"), ffn=0.5, sizes=((3, 1), (1, 1)))
    assert [b["kept"] for b in report["ffn"]] == [12] and report["skipped"] == []


def _keras_dense_ffn(*, shared_dims: bool = False, flatten_down: bool = False) -> onnx.ModelProto:
    """tf2onnx's Keras ``Dense`` on [B, S, E]: ``Reshape([-1, E]) -> MatMul -> Reshape(Cast(Concat(int32)))``.

    x[B, 5, 16] -> Dense(24) + bias -> Relu -> Dense(8).  ``shared_dims``: the int32 Concat of
    the first Dense is also a graph output (its target must be cloned, not edited).
    ``flatten_down``: the second Dense reads ``[B, 5 * 24]`` (the neuron axis is mixed with S).
    """
    rng = np.random.default_rng(1)
    arrays = {
        "w1": rng.standard_normal((16, 24)).astype(np.float32) * 0.3, "b1": rng.standard_normal(24).astype(np.float32),
        "w2": rng.standard_normal((120 if flatten_down else 24, 8)).astype(np.float32) * 0.3,
        "flat_x": np.array([-1, 16], np.int64), "flat_a": np.array([-1, 24], np.int64),
        "free": np.array([0, 1], np.int32), "first": np.array([0], np.int32),
        "units1": np.array([24], np.int32), "units2": np.array([8], np.int32), "minus1": np.array([-1], np.int32),
    }
    inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]

    def target(src: str, tail: str, prefix: str, free: str = "free") -> list[onnx.NodeProto]:
        return [helper.make_node("Shape", [src], [f"{prefix}_shape"]),
                helper.make_node("Cast", [f"{prefix}_shape"], [f"{prefix}_shape32"], to=TensorProto.INT32),
                helper.make_node("Gather", [f"{prefix}_shape32", free], [f"{prefix}_lead"], axis=0),
                helper.make_node("Concat", [f"{prefix}_lead", tail], [f"{prefix}_dims"], axis=0),
                helper.make_node("Cast", [f"{prefix}_dims"], [f"{prefix}_target"], to=TensorProto.INT64)]

    nodes = [*target("x", "units1", "t1"),
             helper.make_node("Reshape", ["x", "flat_x"], ["x2"]),
             helper.make_node("MatMul", ["x2", "w1"], ["h2"], name="dense/MatMul"),
             helper.make_node("Reshape", ["h2", "t1_target"], ["h"], name="dense/Tensordot"),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["a"])]
    if flatten_down:
        nodes += [*target("a", "minus1", "flat", free="first"),
                  helper.make_node("Reshape", ["a", "flat_target"], ["a2"], name="flatten"),
                  helper.make_node("MatMul", ["a2", "w2"], ["y"], name="dense_1/MatMul")]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    else:
        nodes += [*target("a", "units2", "t2"),
                  helper.make_node("Reshape", ["a", "flat_a"], ["a2"]),
                  helper.make_node("MatMul", ["a2", "w2"], ["y2"], name="dense_1/MatMul"),
                  helper.make_node("Reshape", ["y2", "t2_target"], ["y"], name="dense_1/Tensordot")]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 8])
    outputs = [y]
    if shared_dims:
        outputs.append(helper.make_tensor_value_info("t1_dims", TensorProto.INT32, [3]))
    graph = helper.make_graph(nodes, "keras_dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["batch", 5, 16])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("shared_dims", [False, True])
def test_keras_dense_reshapes_with_cast_targets(shared_dims: bool) -> None:
    """The neuron axis crosses ``[B, S, E] <-> [B*S, E]`` Reshapes whose targets are ``Cast(Concat(int32))``."""
    proto = _keras_dense_ffn(shared_dims=shared_dims)
    report = prune_and_check(proto, ffn=0.5, sizes=((3, 1), (1, 1)))
    assert [(b["kept"], b["total"]) for b in report["ffn"]] == [(12, 24)]
    assert not report["skipped"]
    model = load(proto)
    prune_heads(model, ffn=0.5)
    targets = [n.inputs[1] for n in model.graph if n.name == "dense/Tensordot"]
    (cast,) = [t.producer() for t in targets]
    assert cast.op_type == "Cast"
    concat = cast.inputs[0].producer()
    assert concat.op_type == "Concat"
    tail = concat.inputs[1].const_value.numpy()
    assert tail.dtype == np.int32 and tail.tolist() == [12]  # keeps the Concat's int32
    if shared_dims:  # the graph output keeps the unpruned dims; only the Reshape got a copy
        out = next(o for o in model.graph.outputs if o.name == "t1_dims")
        assert out.producer() is not concat
        assert out.producer().inputs[1].const_value.numpy().tolist() == [24]


def test_keras_dense_reshape_mixing_the_neuron_axis_is_refused() -> None:
    """A ``[B, S, E] -> [B, S*E]`` flatten before the second Dense mixes neurons with S: refused, with a reason."""
    proto = _keras_dense_ffn(flatten_down=True)
    model = load(proto)
    result = prune_heads(model, ffn=0.5)
    assert result.report["ffn"] == []
    (skip,) = result.report["skipped"]
    assert skip["kind"] == "ffn" and "Reshape 'flatten'" in skip["reason"], skip
    assert_equivalent(proto, model, result.report, sizes=((2, 1),))
