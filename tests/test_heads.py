"""Head pruning: the masked-equivalence oracle on every attention form we support.

Oracle: in the original model, zero the output-projection rows of the heads the
pass removed (so those heads contribute nothing); the pruned model must match
that masked model to float tolerance, at batch/sequence sizes other than the
ones the models were built with.  Which heads were removed comes from the
report; that the Q/K/V columns removed belong to the *same* heads is exactly
what the oracle checks (any mismatch changes the output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from helpers import ROOT, sample, session

from onnxsparse.io import load_model
from onnxsparse.passes.normalize import normalize
from onnxsparse.passes.prune_heads import masked_heads_model, prune_heads, report_table

sys.path.insert(0, str(ROOT / "samples"))
import build_attention_samples as attn_samples  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4
SIZES = ((3, 5), (1, 11))


# ----------------------------------------------------------------------------------------
# Oracle helpers (also used by test_ffn.py)
# ----------------------------------------------------------------------------------------

def load(source: Any) -> ir.Model:
    if isinstance(source, onnx.ModelProto):
        return load_model(source.SerializeToString())
    return load_model(source)


#: the heads oracle lives in the library (the corpus table uses it too)
masked_reference = masked_heads_model


def feeds_for(sess, batch: int, seq: int, seed: int, extra: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dims = {"batch": batch, "seq": seq, "past_seq": 3, **(extra or {})}
    feeds = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) else dims.get(str(d), seq) for d in arg.shape]
        if arg.type == "tensor(int64)":
            feeds[arg.name] = rng.integers(0, 32, shape).astype(np.int64)
        elif arg.name == "attention_mask":
            mask = np.ones(shape, np.float32)
            mask[:, -1] = 0.0
            feeds[arg.name] = mask
        else:
            feeds[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def assert_equivalent(source: Any, pruned: ir.Model, report: dict[str, Any], *, sizes=SIZES,
                      extra_dims: dict[str, int] | None = None) -> None:
    """Pruned == masked original on several batch/sequence sizes; signature preserved."""
    ref = masked_reference(source, report)
    proto = ir.to_proto(pruned)
    onnx.checker.check_model(proto, full_check=True)
    ref_sess, new_sess = session(ref), session(proto)
    assert [i.name for i in ref_sess.get_inputs()] == [i.name for i in new_sess.get_inputs()]
    assert [o.name for o in ref_sess.get_outputs()] == [o.name for o in new_sess.get_outputs()]
    changes = {c["name"]: c for c in report["signature_changes"]}
    for n, (batch, seq) in enumerate(sizes):
        feeds = feeds_for(ref_sess, batch, seq, seed=n, extra=extra_dims)
        new_feeds = {k: (np.take(v, changes[k]["kept"], axis=changes[k]["axis"]) if k in changes else v)
                     for k, v in feeds.items()}
        expected = ref_sess.run(None, feeds)
        got = new_sess.run(None, new_feeds)
        for out, e, g in zip(ref_sess.get_outputs(), expected, got):
            if out.name in changes:
                e = np.take(e, changes[out.name]["kept"], axis=changes[out.name]["axis"])
            assert e.shape == g.shape, (out.name, e.shape, g.shape)
            np.testing.assert_allclose(g, e, atol=ATOL, rtol=RTOL, err_msg=f"{out.name} at batch {batch} seq {seq}")


def prune_and_check(source: Any, *, sizes=SIZES, extra_dims=None, **options) -> dict[str, Any]:
    model = load(source)
    result = prune_heads(model, **options)
    assert_equivalent(source, model, result.report, sizes=sizes, extra_dims=extra_dims)
    return result.report


def params(model: ir.Model) -> int:
    """Float weights only (shape constants do not count)."""
    return sum(int(v.const_value.size) for v in model.graph.initializers.values()
               if v.const_value is not None and v.const_value.numpy().dtype.kind == "f")


# ----------------------------------------------------------------------------------------
# Samples from the exporters
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio,kept", [(0.25, 3), (0.5, 2), (0.75, 1), (0.99, 1)])
def test_torchscript_handbuilt_encoder(ratio: float, kept: int) -> None:
    report = prune_and_check(sample("transformer_encoder"), heads=ratio)
    assert [b["heads_kept"] for b in report["attention"]] == [kept, kept]
    assert all(b["heads_total"] == 4 and b["head_size"] == 16 for b in report["attention"])
    assert not report["skipped"]


def test_removed_rows_are_the_removed_heads() -> None:
    """Independent of the oracle: rows removed from o_proj are exactly h*D..h*D+D-1 of removed heads."""
    model = load(sample("transformer_encoder"))
    report = prune_heads(model, heads=0.5).report
    for block in report["attention"]:
        (sink,) = block["sinks"]
        removed_heads = sorted(set(range(4)) - set(block["kept_heads"]))
        assert sink["rows_removed"] == [h * 16 + d for h in removed_heads for d in range(16)]
    w = model.graph.initializers["layers.0.attn.q_proj.weight"].const_value
    assert tuple(w.shape) == (64, 32)  # state-dict name kept, columns removed


def test_torchscript_export_digits() -> None:
    """Real TorchScript export: merge Reshape reads C from the input shape (Gather(Shape(x), 2))."""
    report = prune_and_check(sample("digits_transformer"), heads=0.5, sizes=((3, 5), (1, 8)))
    assert [b["heads_kept"] for b in report["attention"]] == [2, 2]
    # the accuracy-bearing path still runs on real data
    x = np.load(ROOT / "samples" / "data" / "digits_test_tokens.npz")["input"][:16]
    model = load(sample("digits_transformer"))
    prune_heads(model, heads=0.25)
    assert session(model).run(None, {"input": x})[0].shape == (16, 10)


def test_dynamo_export_shared_constant_targets() -> None:
    """dynamo: every Reshape of both layers shares one constant [-1, 8, 4, 16]; it must be copied."""
    source = sample("digits_transformer_dynamo")
    model = load(source)
    result = prune_heads(model, heads=0.5, exclude=["layers.1*"])
    assert_equivalent(source, model, result.report, sizes=((3, 8), (1, 8)))
    assert [b["name"] for b in result.report["attention"]] == ["layers.0.attn"]
    assert any("excluded" in s["reason"] for s in result.report["skipped"])
    targets = {}
    for node in model.graph:
        if node.op_type == "Reshape" and node.inputs[1].const_value is not None:
            targets.setdefault(tuple(node.inputs[1].const_value.numpy().tolist()), []).append(node.name)
    assert len(targets[(-1, 8, 2, 16)]) == 3 and len(targets[(-1, 8, 4, 16)]) == 3


def test_decoder_kv_cache_needs_permission() -> None:
    model = load(sample("tiny_decoder_kv"))
    result = prune_heads(model, heads=0.5)
    assert not result.report["attention"]
    reasons = [s["reason"] for s in result.report["skipped"] if s["kind"] == "attention"]
    assert len(reasons) == 2 and all("past_key_values" in r and "allow_signature_change" in r for r in reasons)
    assert not result.modified
    assert_equivalent(sample("tiny_decoder_kv"), model, result.report)


@pytest.mark.parametrize("past", [0, 3])
def test_decoder_kv_cache_with_signature_change(past: int) -> None:
    report = prune_and_check(sample("tiny_decoder_kv"), heads=0.5, allow_signature_change=True,
                             extra_dims={"past_seq": past})
    assert [b["heads_kept"] for b in report["attention"]] == [2, 2]
    changed = {c["name"]: c for c in report["signature_changes"]}
    assert set(changed) == {f"{io}.{i}.{kv}" for io in ("past_key_values", "present") for i in (0, 1)
                            for kv in ("key", "value")}
    assert changed["past_key_values.0.key"]["new_shape"] == "[batch, 2, past_seq, 8]"
    assert changed["present.1.value"]["new_shape"] == "[batch, 2, total_seq, 8]"


def test_gqa_torchscript_removes_whole_groups() -> None:
    report = prune_and_check(sample("tiny_gqa"), heads=0.5)
    (block,) = report["attention"]
    assert (block["heads_total"], block["kv_heads_total"]) == (4, 2)
    assert (block["heads_kept"], block["kv_heads_kept"]) == (2, 1)
    kv = block["kept_kv_heads"][0]
    assert block["kept_heads"] == [2 * kv, 2 * kv + 1]  # repeat_interleave: q head h reads kv h // 2


def test_gqa_ratio_below_one_group_keeps_everything() -> None:
    model = load(sample("tiny_gqa"))
    result = prune_heads(model, heads=0.25)  # 0.25 * 2 groups < 1 group
    (block,) = result.report["attention"]
    assert block["heads_kept"] == 4 and block["removed"] == []


# ----------------------------------------------------------------------------------------
# Our attention-form samples (samples/build_attention_samples.py)
# ----------------------------------------------------------------------------------------

FORMS = {
    "attn_bert_torchscript": ("decomposed", 4, 4),
    "attn_tf2onnx": ("decomposed", 4, 4),
    "attn_llama_gqa": ("decomposed", 4, 2),
    "attn_ms_attention": ("com.microsoft.Attention", 4, 4),
    "attn_ms_mha": ("com.microsoft.MultiHeadAttention", 4, 4),
    "attn_ms_gqa": ("com.microsoft.GroupQueryAttention", 4, 2),
    "attn_onnx_attention": ("Attention", 4, 2),
    "attn_onnx_attention_4d": ("Attention", 4, 4),
}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_attention_forms(name: str) -> None:
    form, hq, hkv = FORMS[name]
    proto = attn_samples.BUILDERS[name]()
    report = prune_and_check(proto, heads=0.5)
    assert report["attention"] and not [s for s in report["skipped"] if s["kind"] == "attention"]
    for block in report["attention"]:
        assert block["form"] == form
        assert (block["heads_total"], block["kv_heads_total"]) == (hq, hkv)
        assert block["kv_heads_kept"] == hkv // 2 and block["heads_kept"] == hq // 2


def test_committed_samples_match_builders() -> None:
    for name, build in attn_samples.BUILDERS.items():
        committed = onnx.load(str(sample(name)))
        assert committed.graph == build().graph, f"samples/models/{name}.onnx is stale; rebuild it"


@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_criteria_pick_valid_heads_deterministically(criterion: str) -> None:
    proto = attn_samples.build_attn_bert_torchscript()
    first = prune_and_check(proto, heads=0.5, criterion=criterion)
    second = prune_heads(load(proto), heads=0.5, criterion=criterion).report
    assert [b["removed"] for b in first["attention"]] == [b["removed"] for b in second["attention"]]


def test_l2_removes_the_weakest_head() -> None:
    """Shrink one head's Q/K/V/O weights: l2 must pick it."""
    proto = attn_samples.build_attn_bert_torchscript()
    model = load(proto)
    normalize(model)
    for role in ("query", "key", "value"):
        w = model.graph.initializers[f"encoder.layer.0.attention.self.{role}.weight"]
        arr = w.const_value.numpy().copy()
        arr[:, 16:24] *= 1e-3  # head 2 of 4 (head size 8)
        w.const_value = ir.tensor(arr, name=w.name)
    report = prune_heads(model, heads=0.25).report
    assert report["attention"][0]["removed"] == [2]


def test_params_shrink_by_the_head_fraction() -> None:
    proto = attn_samples.build_attn_bert_torchscript()
    model = load(proto)
    normalize(model)
    before = params(model)
    prune_heads(model, heads=0.5)
    # per layer: Q/K/V weights+biases and O rows lose half: 2 layers * (3*(32*16+16) + 16*32)
    assert before - params(model) == 2 * (3 * (32 * 16 + 16) + 16 * 32)


# ----------------------------------------------------------------------------------------
# Refusals: a block the matcher cannot prove is skipped with a reason, never mangled
# ----------------------------------------------------------------------------------------

def _with_extra_consumer(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Add a graph output that reads layer 0's query projection: its columns cannot shrink."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    q = "encoder.layer.0.attention.self.query/Add"
    m.graph.output.append(onnx.helper.make_tensor_value_info(q, onnx.TensorProto.FLOAT, ["batch", "seq", 32]))
    return m


def test_extra_consumer_skips_block_with_reason() -> None:
    proto = _with_extra_consumer(attn_samples.build_attn_bert_torchscript())
    model = load(proto)
    result = prune_heads(model, heads=0.5)
    assert [b["name"] for b in result.report["attention"]] == ["encoder.layer.1.attention"]
    (skip,) = [s for s in result.report["skipped"] if s["kind"] == "attention"]
    assert "query/Add" in skip["reason"] and "output" in skip["reason"]
    assert_equivalent(proto, model, result.report)


def test_per_head_bias_input_is_refused() -> None:
    """A run-time input with one entry per head (e.g. ALiBi bias fed by the user) blocks pruning."""
    proto = attn_samples.build_bert(layers=1, hidden=16, heads=2, ffn=32, with_mask=False)
    g = proto.graph
    add = onnx.helper.make_node("Add", ["/encoder/layer.0/attention/self/Div", "head_bias"], ["biased"], name="bias")
    idx = [i for i, n in enumerate(g.node) if n.name == "/encoder/layer.0/attention/self/Div"][0]
    g.node.insert(idx + 1, add)
    for n in g.node:
        if n.op_type == "Softmax":
            n.input[0] = "biased"
    g.input.append(onnx.helper.make_tensor_value_info("head_bias", onnx.TensorProto.FLOAT, [1, 2, "seq", "seq"]))
    model = load(proto)
    result = prune_heads(model, heads=0.5)
    assert not result.report["attention"]
    (skip,) = result.report["skipped"]
    assert "head_bias" in skip["reason"]


def test_softmax_outside_attention_is_ignored() -> None:
    model = load(sample("digits_cnn"))
    result = prune_heads(model, heads=0.5, ffn=0.5)
    assert result.report["attention"] == [] and not result.modified


def test_bad_ratio_and_criterion() -> None:
    from onnxsparse.errors import UsageError

    with pytest.raises(UsageError):
        prune_heads(load(sample("tiny_gqa")), heads=1.0)
    with pytest.raises(UsageError):
        prune_heads(load(sample("tiny_gqa")), heads=0.5, criterion="nope")
    report = prune_heads(load(sample("tiny_gqa")), heads=0.5, criterion="bn").report
    assert report["attention"][0]["criterion"].startswith("l2") and "bn" in report["attention"][0]["criterion"]


# ----------------------------------------------------------------------------------------
# CLI glue for the prune command
# ----------------------------------------------------------------------------------------

def test_cli_glue() -> None:
    from onnxsparse.options.cli import add_arguments, from_args
    from onnxsparse.options.prune import PruneOptions

    parser = argparse.ArgumentParser()
    add_arguments(parser, PruneOptions)
    options = from_args(PruneOptions, parser.parse_args(["--heads", "0.5", "--ffn", "0.25"]))
    assert (options.heads, options.ffn) == (0.5, 0.25)
    # FFN neurons follow --channels unless --ffn is given
    assert from_args(PruneOptions, parser.parse_args(["--heads", "0.5"])).ffn is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--heads", "1.5"])


def test_exclude_and_round_to() -> None:
    proto = attn_samples.build_attn_bert_torchscript()
    result = prune_heads(load(proto), heads=0.5, ffn=0.25, round_to=8, exclude=["*layer.1*"])
    assert [b["name"] for b in result.report["attention"]] == ["encoder.layer.0.attention"]
    assert [b["kept"] for b in result.report["ffn"]] == [48]  # 64 - 16 = 48, a multiple of 8
    table = report_table(result.report)
    assert "2/4 heads" in table and "excluded" in table


def test_per_head_constant_bias_is_sliced() -> None:
    """A constant with one entry per head (e.g. a learned per-head score bias) is pruned with its heads."""
    proto = attn_samples.build_bert(layers=1, hidden=16, heads=4, ffn=32, with_mask=False)
    g = proto.graph
    bias = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)
    g.initializer.append(onnx.numpy_helper.from_array(bias, "head_bias"))
    add = onnx.helper.make_node("Add", ["/encoder/layer.0/attention/self/Div", "head_bias"], ["biased"], name="bias")
    idx = [i for i, n in enumerate(g.node) if n.name == "/encoder/layer.0/attention/self/Div"][0]
    g.node.insert(idx + 1, add)
    for n in g.node:
        if n.op_type == "Softmax":
            n.input[0] = "biased"
    model = load(proto)
    result = prune_heads(model, heads=0.5)
    assert_equivalent(proto, model, result.report)
    kept = result.report["attention"][0]["kept_heads"]
    (new_bias,) = [v for v in model.graph.initializers.values() if v.name.startswith("head_bias")]
    assert new_bias.const_value.numpy().ravel().tolist() == [float(h) for h in kept]


def test_prune_command(tmp_path: Path) -> None:
    """End to end through ``onnxsparse prune`` once the prune command forwards --heads/--ffn."""
    from helpers import cli

    code, _, err = cli("prune", "--help")
    if "--heads" not in _:
        pytest.skip("onnxsparse prune does not expose --heads yet (wiring pending in prune_cmd.py)")
    src = tmp_path / "bert.onnx"
    onnx.save(attn_samples.build_attn_bert_torchscript(), str(src))
    out = tmp_path / "small.onnx"
    code, stdout, err = cli("prune", str(src), "-o", str(out), "--heads", "0.5", "--ffn", "0.25")
    assert code == 0, err
    assert "2/4 heads" in stdout and "48/64 neurons" in stdout
    report = prune_heads(load(str(src)), heads=0.5, ffn=0.25).report
    assert_equivalent(onnx.load(str(src)), load(str(out)), report)


# ----------------------------------------------------------------------------------------
# tf2onnx's Einsum lowering (Keras MultiHeadAttention)
# ----------------------------------------------------------------------------------------

KERAS_MHA = ROOT / "samples" / "models" / "real_tf_keras_mha.onnx"


def _keras_check(model: ir.Model, report: dict[str, Any]) -> None:
    """The oracle at batches other than the export's (the sequence length is fixed at 16)."""
    batch_dim = onnx.load(str(KERAS_MHA)).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    for batch in (3, 1):
        assert_equivalent(KERAS_MHA, model, report, sizes=((batch, 16),), extra_dims={batch_dim: batch})


@pytest.mark.parametrize("ratio,kept", [(0.25, 3), (0.5, 2), (0.75, 1)])
def test_keras_mha_tf2onnx_einsum_lowering(ratio: float, kept: int) -> None:
    model = load(KERAS_MHA)
    report = prune_heads(model, heads=ratio).report
    assert not report["skipped"], report["skipped"]
    (block,) = report["attention"]
    assert (block["heads_total"], block["heads_kept"], block["head_size"]) == (4, kept, 8)
    for role in ("query", "key", "value"):
        w = model.graph.initializers[f"functional_1_1/multi_head_attention_1/{role}_1/Reshape:0"].const_value
        assert tuple(w.shape) == (32, kept * 8)
    wo = model.graph.initializers["functional_1_1/multi_head_attention_1/attention_output_1/Reshape_1:0"]
    assert tuple(wo.const_value.shape) == (kept * 8, 32)
    _keras_check(model, report)
    # the oracle is not vacuous: zeroing the removed heads changes the output
    ref = session(ir.to_proto(masked_reference(KERAS_MHA, report)))
    x = np.random.default_rng(0).standard_normal((2, 16, 32)).astype(np.float32)
    assert not np.allclose(ref.run(None, {"input": x})[0], session(str(KERAS_MHA)).run(None, {"input": x})[0],
                           atol=ATOL, rtol=RTOL)


def test_tf2onnx_unlowering_is_exact_and_removes_the_shape_reads() -> None:
    from onnxsparse.transformer.tf_einsum import unlower_tf_batch_matmuls

    model = load(KERAS_MHA)
    normalize(model)
    done = unlower_tf_batch_matmuls(model.graph)
    assert len(done) == 2  # scores (Q K^T) and context (P V)
    ops = [n.op_type for n in model.graph]
    assert "ReduceProd" not in ops and "Max" not in ops
    x = np.random.default_rng(1).standard_normal((3, 16, 32)).astype(np.float32)
    np.testing.assert_allclose(session(ir.to_proto(model)).run(None, {"input": x})[0],
                               session(str(KERAS_MHA)).run(None, {"input": x})[0], atol=1e-6, rtol=1e-5)


def test_tf2onnx_lowering_with_a_non_unit_middle_axis_is_refused() -> None:
    """If the scores' output reshape picks the unit axis instead of the sequence one, nothing is folded."""
    proto = onnx.load(str(KERAS_MHA))
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array([3], np.int64), "picks_unit_axis"))
    (gather,) = [n for n in proto.graph.node if n.name == "Gather__155"]
    gather.input[1] = "picks_unit_axis"
    model = load(proto)
    report = prune_heads(model, heads=0.5).report
    assert not report["attention"]
    (skip,) = report["skipped"]
    assert "Reshape__158" in skip["reason"]  # the lowering's output Reshape, left as it was


def test_keras_mha_per_head_biases_are_sliced() -> None:
    """Keras ``EinsumDense`` biases ``[H, D]`` added after the head split (use_bias=True)."""
    proto = onnx.load(str(KERAS_MHA))
    rng = np.random.default_rng(3)
    g = proto.graph
    for role in ("query", "key", "value"):
        split = f"functional_1_1/multi_head_attention_1/{role}_1/Reshape_1:0"
        g.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32),
                                                          f"{role}_bias"))
        for n in g.node:
            n.input[:] = [f"{role}_biased" if i == split else i for i in n.input]
        idx = [k for k, n in enumerate(g.node) if split in n.output][0]
        g.node.insert(idx + 1, onnx.helper.make_node("Add", [split, f"{role}_bias"], [f"{role}_biased"]))
    model = load(proto)
    report = prune_heads(model, heads=0.5).report
    assert not report["skipped"] and report["attention"][0]["heads_kept"] == 2
    assert tuple(model.graph.initializers["query_bias"].const_value.shape) == (2, 8)
    batch_dim = g.input[0].type.tensor_type.shape.dim[0].dim_param
    assert_equivalent(proto, model, report, sizes=((3, 16),), extra_dims={batch_dim: 3})
