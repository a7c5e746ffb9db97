"""Never worse than the input: a no-op prune changes nothing onnxruntime sees; real prunes keep its fusions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import cli, cli_json, run, sample
from onnx import helper, numpy_helper

from onnxsparse.validate.fusions import compare_fusions, optimized_ops

#: Exports whose graphs onnxruntime fuses (LayerNorm, SkipLayerNorm, GELU, MatMul+Add, NCHWc Conv).
NO_OP_MODELS = [
    "real_torch_bert_ts", "real_torch_bert_dynamo", "real_torch_gpt2_ts", "real_torch_vit_ts",
    "real_tf_keras_mha", "digits_transformer", "real_torch_resnet18_ts", "real_paddle_cnn",
]


@pytest.mark.parametrize("name", NO_OP_MODELS)
def test_noop_prune_writes_the_input_unchanged(name, tmp_path):
    src, out = sample(name), tmp_path / "out.onnx"
    data = cli_json("prune", src, "-o", out, "--channels", "0")
    assert data["unchanged"] is True
    assert data["params"]["before"] == data["params"]["after"]
    # Same graph for onnxruntime: the same optimised ops, not a byte more than the input (+ an opset domain).
    before, after = optimized_ops(src), optimized_ops(out)
    assert before == after
    assert out.stat().st_size <= src.stat().st_size + 16
    a, b = onnx.load(str(src)), onnx.load(str(out))
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]


@pytest.mark.parametrize("name, args", [
    ("digits_transformer", ["--heads", "0.25", "--ffn", "0.25"]),
    ("real_torch_bert_ts", ["--ffn", "0.25"]),
    ("real_torch_gpt2_ts", ["--heads", "0.25"]),
])
def test_pruned_transformers_keep_onnxruntime_fusions(name, args, tmp_path):
    out = tmp_path / "out.onnx"
    data = cli_json("prune", sample(name), "-o", out, *args)
    assert data["params"]["after"] < data["params"]["before"], "nothing was pruned"
    comparison = compare_fusions(sample(name), out)
    assert comparison.reference, "the sample has no fusions: the test would prove nothing"
    assert not comparison.lost, comparison.as_dict()


def _layernorm_model(break_pattern: bool) -> onnx.ModelProto:
    """x + r -> LayerNormalization: onnxruntime fuses it into SkipLayerNormalization, unless a Mul sits between."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "x"], ["s"])]
    if break_pattern:
        nodes.append(helper.make_node("Mul", ["s", "k"], ["s2"]))
    nodes.append(helper.make_node("LayerNormalization", ["s2" if break_pattern else "s", "g", "b"], ["y"], axis=-1))
    inits = [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(32, np.float32), "g"), numpy_helper.from_array(np.zeros(32, np.float32), "b"),
             numpy_helper.from_array(np.array(1.5, np.float32), "k")]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 8, 32])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 8, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_fusion_comparison_names_a_lost_fusion_and_blocked_kernels(tmp_path):
    ref, cand = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    onnx.save(_layernorm_model(False), ref)
    onnx.save(_layernorm_model(True), cand)
    comparison = compare_fusions(ref, cand)
    assert comparison.lost == {"com.microsoft.SkipLayerNormalization": (1, 0)}
    assert "SkipLayerNormalization 1 -> 0" in comparison.note()
    # Odd channel counts fall off the blocked NCHWc kernels; validate says so.
    pruned = tmp_path / "odd.onnx"
    assert cli("prune", sample("digits_cnn"), "-o", pruned, "--channels", "0.3", "--round-to", "1", "-q")[0] == 0
    data = cli_json("validate", sample("digits_cnn"), pruned, "--runs", "3", "--warmup", "1", "--no-memory")
    assert data["fusions"]["lost"], data["fusions"]
    assert any("NCHWc" in note for note in data["notes"])
    # The default (--round-to auto) keeps them: on this CPU profile, multiples of 16.
    rounded = tmp_path / "auto.onnx"
    assert cli("prune", sample("digits_cnn"), "-o", rounded, "--channels", "0.5", "-q")[0] == 0
    assert not {op for op in compare_fusions(sample("digits_cnn"), rounded).lost if "nchwc" in op}
    x = {"input": np.load(sample("digits_cnn").parents[1] / "data" / "digits_test.npz")["input"][:4]}
    assert run(rounded, x)[0].shape == run(sample("digits_cnn"), x)[0].shape


def test_value_info_is_written_only_if_the_input_had_it(tmp_path):
    """Inferred shapes change what onnxruntime fuses (and its speed): outputs carry them only as the input did."""
    from onnxsparse.io import load_model, save_model
    from onnxsparse.passes.normalize import normalize
    from onnxsparse.quantize import quantize

    for name in ("real_torch_bert_ts", "digits_transformer_dynamo"):
        src = onnx.load(str(sample(name)))
        had = len(src.graph.value_info) > 0
        model = load_model(sample(name))
        normalize(model)  # infers every shape
        out = save_model(model, tmp_path / f"{name}.onnx")
        written = onnx.load(str(out)).graph.value_info
        inits = {i.name for i in src.graph.initializer}
        assert not [v.name for v in written if v.name in inits and v.type.HasField("tensor_type")], \
            "initializer types are the tensors' own"
        assert (len(written) > 0) == had, (name, had, len(written))
        quantized = quantize(sample(name), tmp_path / f"{name}_q.onnx", mode="dynamic", check=False)
        assert (len(onnx.load(str(quantized.path)).graph.value_info) > 0) == had
    assert optimized_ops(sample("real_torch_bert_ts")) == optimized_ops(tmp_path / "real_torch_bert_ts.onnx")
