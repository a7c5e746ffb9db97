"""Fused attention ops as op rules of the one engine (``onnxsparse/graph/rules/attention.py``).

For each fused-attention sample (``samples/models/attn_ms_*``, ``attn_onnx_attention*``), after
``normalize`` and ``build_groups``:

* every attention node has a prunable head group (``kind`` ``head``, or ``kv_group`` for grouped
  query attention) whose members include the node's head slot (the rule's virtual ``#<node>#heads``
  and, for 4-D inputs, axis 1 of query/key/value), with ``size`` = heads (KV heads for GQA);
* removing unit 1 of every prunable group (heads and the rest) gives the outputs of the original
  model with those units masked (``masked_copy``, built before ``apply_plan``) to a relative error
  < 1e-4 at batch 3 / sequence 5 (the samples' checks run at batch 2 / sequence 7 and 3 / 5), the
  masking changes the output (not vacuous), and the head-count attributes equal the kept counts.

Models built here cover what no sample has: past KV graph inputs / present outputs and per-head
masks (prunable with ``allow_signature_change``; the pruned model is fed the inputs with the removed
heads sliced out), ``qkv_hidden_sizes``, and GroupQueryAttention with packed QKV and ``do_rotary``.
Unsupported variants (MultiHeadAttention's packed QKV, com.microsoft Attention's ``do_rotary``, a used
``qk_matmul_output``) decline with a reason the blocked group carries; ``build_groups`` does not raise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import assert_pruned_matches_masked, runtime_bytes, sample, session
from onnx import TensorProto, helper, numpy_helper

from onnxsparse import load_model, normalize
from onnxsparse.graph import PrunePlan, apply_plan, build_groups, masked_copy
from onnxsparse.graph.kinds import HEAD_KINDS

REL_TOL = 1e-4
MS = "com.microsoft"

#: sample -> (op domain, op type, head-count attributes before, units per node, kind, head attrs after
#: removing one unit)
CASES: dict[str, tuple[str, str, dict[str, int], int, str, dict[str, int]]] = {
    "attn_ms_attention": (MS, "Attention", {"num_heads": 4}, 4, "head", {"num_heads": 3}),
    "attn_ms_mha": (MS, "MultiHeadAttention", {"num_heads": 4}, 4, "head", {"num_heads": 3}),
    "attn_ms_gqa": (MS, "GroupQueryAttention", {"num_heads": 4, "kv_num_heads": 2}, 2, "kv_group",
                    {"num_heads": 2, "kv_num_heads": 1}),
    "attn_onnx_attention": ("", "Attention", {"q_num_heads": 4, "kv_num_heads": 2}, 2, "kv_group",
                            {"q_num_heads": 2, "kv_num_heads": 1}),
    "attn_onnx_attention_4d": ("", "Attention", {}, 4, "head", {}),
}

#: attention nodes whose inputs have no shape when the analysis reaches them (not the attention rules'
#: doing): attn_ms_mha's second layer sits after a com.microsoft::Gelu, which no rule knows, so no shape
#: reaches it.  Their heads must then be reported by ``unattached_heads`` (not silently missing).
NOT_REACHED = {"attn_ms_mha": {"/layers.1.attn/MultiHeadAttention"}}


def _feeds(sess, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {arg.name: rng.standard_normal([d if isinstance(d, int) and d > 0 else (batch if k == 0 else seq)
                                           for k, d in enumerate(arg.shape)]).astype(np.float32)
            for arg in sess.get_inputs()}


def _attention_nodes(model: ir.Model, domain: str, op: str) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == op and (n.domain or "") == domain]


def _head_group(dg, node: ir.Node):
    """The prunable head group holding ``node``'s virtual head slot (``None`` if none)."""
    virtual = f"#{node.name}#heads"
    for g in dg.groups:
        if g.prunable and any(m.slot.value == virtual for m in g.members):
            return g
    return None


@pytest.mark.parametrize("name", list(CASES))
def test_fused_attention_heads_prune_exactly(name: str) -> None:
    domain, op, before, units, kind, after = CASES[name]
    model = load_model(sample(name))
    normalize(model)
    model.ir_version = max(model.ir_version, 4)
    nodes = _attention_nodes(model, domain, op)
    assert nodes, f"{name}: no {domain or 'ai.onnx'}::{op} node"
    dg = build_groups(model)
    found = {}
    for node in nodes:
        for attr, value in before.items():
            assert node.attributes.get_int(attr) == value, (node.name, attr)
        g = _head_group(dg, node)
        if g is None and node.name in NOT_REACHED.get(name, ()):
            unattached = dict(dg.unattached_heads())
            assert f"#{node.name}#heads" in unattached, unattached
            assert "unknown" in unattached[f"#{node.name}#heads"][0]
            continue
        assert g is not None, f"{name}: no prunable head group for {node.name}: " \
                              f"{sorted({r for x in dg.skipped for r in x.reasons})[:4]}"
        assert g.kind == kind and g.kind in HEAD_KINDS, (node.name, g.kind)
        assert g.size == units, (node.name, g.size)
        assert node.name in g.nodes
        slots = {m.slot.key for m in g.members}
        if len(node.inputs[0].shape) == 4:  # [B, H, S, D]: the heads axis of query/key/value is a member
            assert all((node.inputs[i].name, 1) in slots for i in range(3)), slots
        elif op == "Attention" and domain == MS:  # the packed weight's columns and the output
            assert {(node.inputs[1].name, 1), (node.outputs[0].name, 2)} <= slots, slots
        else:  # [B, S, H*D]: the hidden axes, block by block
            assert {(node.inputs[i].name, 2) for i in range(3)} | {(node.outputs[0].name, 2)} <= slots, slots
        found[node.name] = g
    assert found, f"{name}: no attention node reached"

    original = runtime_bytes(model)
    plan = PrunePlan.create(dg, {g.id: [1] for g in dg.prunable})
    assert set(plan.removed) == {g.id for g in dg.prunable}, f"{name}: a rewrite check refused a group"
    masked = runtime_bytes(masked_copy(model, plan))  # the oracle, before the model is pruned
    apply_plan(plan)
    pruned = runtime_bytes(model)
    onnx.checker.check_model(pruned, full_check=True)

    for node in nodes:
        if node.name not in found:
            continue
        for attr, value in after.items():
            assert node.attributes.get_int(attr) == value, (node.name, attr, node.attributes.get_int(attr))
        if not after:  # 4-D: the head counts live in the shapes
            assert node.inputs[0].shape[1] == units - 1 and node.outputs[0].shape[1] == units - 1

    assert_pruned_matches_masked(name, original, masked, pruned, lambda s: _feeds(s, batch=3, seq=5), REL_TOL)


# ------------------------------------------------------------------ unsupported variants decline


def _model(nodes, inits: dict[str, np.ndarray], outputs: list[str], opset: int = 17) -> ir.Model:
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 32])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    proto.ir_version = 10
    model = ir.from_proto(proto)
    normalize(model)
    return model


def _packed_mha() -> tuple[ir.Model, str]:
    """MultiHeadAttention's packed QKV ``[B, S, N, 3, H]`` (query only)."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((32, 96)).astype(np.float32),
             "o": rng.standard_normal((32, 32)).astype(np.float32),
             "shape": np.array([0, 0, 4, 3, 8], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["qkv"], name="qkv"),
             helper.make_node("Reshape", ["qkv", "shape"], ["packed"], name="split"),
             helper.make_node("MultiHeadAttention", ["packed"], ["a"], name="mha", domain=MS, num_heads=4),
             helper.make_node("MatMul", ["a", "o"], ["y"], name="o_proj")]
    return _model(nodes, inits, ["y"]), "packed QKV"


def _rotary_attention() -> tuple[ir.Model, str]:
    rng = np.random.default_rng(1)
    inits = {"p": rng.standard_normal((32, 32)).astype(np.float32),
             "w": rng.standard_normal((32, 96)).astype(np.float32),
             "b": np.zeros(96, np.float32), "o": rng.standard_normal((32, 32)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "p"], ["h"], name="pre"),  # its output channels reach the op
             helper.make_node("Attention", ["h", "w", "b"], ["a"], name="attn", domain=MS, num_heads=4,
                              do_rotary=1),
             helper.make_node("MatMul", ["a", "o"], ["y"], name="o_proj")]
    return _model(nodes, inits, ["y"]), "do_rotary"


def _onnx_attention_qk_output() -> tuple[ir.Model, str]:
    rng = np.random.default_rng(2)
    inits = {f"w{r}": rng.standard_normal((32, 32)).astype(np.float32) for r in "qkvo"}
    nodes = [*(helper.make_node("MatMul", ["x", f"w{r}"], [r], name=f"{r}_proj") for r in "qkv"),
             helper.make_node("Attention", ["q", "k", "v"], ["a", "", "", "qk"], name="attn", q_num_heads=4,
                              kv_num_heads=4),
             helper.make_node("MatMul", ["a", "wo"], ["y"], name="o_proj")]
    return _model(nodes, inits, ["y", "qk"], opset=23), "qk_matmul_output is used"


@pytest.mark.parametrize("make", [_packed_mha, _rotary_attention, _onnx_attention_qk_output],
                         ids=["mha_packed_qkv", "ms_attention_do_rotary", "onnx_attention_qk_output"])
def test_unsupported_variants_decline_with_a_reason(make: Any) -> None:
    model, reason = make()
    node = next(n for n in model.graph if "ttention" in n.op_type)
    dg = build_groups(model)  # must not raise
    assert dg.rule_for(node.name) is None, f"{node.name} was accepted"
    assert not any(g.kind in HEAD_KINDS for g in dg.groups)
    producer = node.inputs[0].producer()
    while producer.op_type != "MatMul":
        producer = producer.inputs[0].producer()
    weight = producer.inputs[1]  # the projection feeding the op: its group stops there
    groups = dg.groups_at(weight.name, 1)
    assert groups and not any(g.prunable for g in groups), [g.describe() for g in groups]
    reasons = [r for g in groups for r in g.reasons]
    assert any(reason in r and node.name in r for r in reasons), reasons
    assert not any("internal error" in r for r in reasons), reasons


# ------------------------------------------------------------------ KV cache, per-head masks, qkv_hidden_sizes
#
# Built here (no sample has them): the units reach graph inputs (past KV, a per-head mask) and outputs
# (present KV), so the groups are prunable only with ``allow_signature_change``; the pruned model is fed
# the inputs with the removed heads sliced out, and its outputs must equal the masked model's with the
# same heads sliced out.

P, S, B = 3, 5, 2  # past length, new tokens, batch


def _io(name: str, dims: list, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _kv_model(nodes, inits, inputs, outputs, opset: int = 17) -> ir.Model:
    graph = helper.make_graph(nodes, "t", [_io("x", ["batch", "seq", 32]), *inputs], outputs,
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    proto.ir_version = 10
    model = ir.from_proto(proto)
    normalize(model)
    return model


def _projections(rng, widths: dict[str, int]) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    inits = {f"w{r}": (rng.standard_normal((32, n)) / 4).astype(np.float32) for r, n in widths.items()}
    return [helper.make_node("MatMul", ["x", f"w{r}"], [r], name=f"{r}_proj") for r in widths], inits


def _gqa_with_past():
    rng = np.random.default_rng(3)
    nodes, inits = _projections(rng, {"q": 32, "k": 16, "v": 16})
    inits["wo"] = (rng.standard_normal((32, 32)) / 4).astype(np.float32)
    nodes += [helper.make_node("GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "seqlens_k",
                                                       "total_sequence_length"], ["a", "present_key", "present_value"],
                               name="gqa", domain=MS, num_heads=4, kv_num_heads=2),
              helper.make_node("MatMul", ["a", "wo"], ["y"], name="o_proj")]
    inputs = [_io("past_key", ["batch", 2, "past", 8]), _io("past_value", ["batch", 2, "past", 8]),
              _io("seqlens_k", ["batch"], TensorProto.INT32), _io("total_sequence_length", [], TensorProto.INT32)]
    outputs = [_io("y", ["batch", "seq", 32]), _io("present_key", ["batch", 2, "total", 8]),
               _io("present_value", ["batch", 2, "total", 8])]
    # onnxruntime's CPU kernel takes past context only for one new token per batch row (a decoding step)
    feeds = {"seqlens_k": np.full(B, P, np.int32), "total_sequence_length": np.array(P + 1, np.int32)}
    return _kv_model(nodes, inits, inputs, outputs), feeds, {"num_heads": 2, "kv_num_heads": 1}


def _mha_with_past_and_bias():
    rng = np.random.default_rng(4)
    nodes, inits = _projections(rng, {"q": 32, "k": 32, "v": 32})
    inits["wo"] = (rng.standard_normal((32, 32)) / 4).astype(np.float32)
    inits["qkv_bias"] = (rng.standard_normal(96) / 4).astype(np.float32)
    nodes += [helper.make_node("MultiHeadAttention", ["q", "k", "v", "qkv_bias", "", "attention_bias", "past_key",
                                                      "past_value"], ["a", "present_key", "present_value"],
                               name="mha", domain=MS, num_heads=4),
              helper.make_node("MatMul", ["a", "wo"], ["y"], name="o_proj")]
    inputs = [_io("attention_bias", ["batch", 4, "seq", "total"]), _io("past_key", ["batch", 4, "past", 8]),
              _io("past_value", ["batch", 4, "past", 8])]
    outputs = [_io("y", ["batch", "seq", 32]), _io("present_key", ["batch", 4, "total", 8]),
               _io("present_value", ["batch", 4, "total", 8])]
    return _kv_model(nodes, inits, inputs, outputs), {}, {"num_heads": 3}


def _onnx_attention_with_past_and_mask():
    rng = np.random.default_rng(5)
    nodes, inits = _projections(rng, {"q": 32, "k": 16, "v": 16})
    inits["wo"] = (rng.standard_normal((32, 32)) / 4).astype(np.float32)
    nodes += [helper.make_node("Attention", ["q", "k", "v", "attn_mask", "past_key", "past_value"],
                               ["a", "present_key", "present_value"], name="attn", q_num_heads=4, kv_num_heads=2),
              helper.make_node("MatMul", ["a", "wo"], ["y"], name="o_proj")]
    inputs = [_io("attn_mask", ["batch", 4, "seq", "total"]), _io("past_key", ["batch", 2, "past", 8]),
              _io("past_value", ["batch", 2, "past", 8])]
    outputs = [_io("y", ["batch", "seq", 32]), _io("present_key", ["batch", 2, "total", 8]),
               _io("present_value", ["batch", 2, "total", 8])]
    return _kv_model(nodes, inits, inputs, outputs, opset=23), {}, {"q_num_heads": 2, "kv_num_heads": 1}


def _ms_attention_qkv_hidden_sizes():
    rng = np.random.default_rng(6)
    inits = {"w": (rng.standard_normal((32, 80)) / 4).astype(np.float32),
             "b": (rng.standard_normal(80) / 4).astype(np.float32),
             "wo": (rng.standard_normal((16, 32)) / 4).astype(np.float32)}
    nodes = [helper.make_node("Attention", ["x", "w", "b", "", "", "attention_bias"], ["a"], name="attn", domain=MS,
                              num_heads=4, qkv_hidden_sizes=[32, 32, 16]),
             helper.make_node("MatMul", ["a", "wo"], ["y"], name="o_proj")]
    inputs = [_io("attention_bias", [1, 4, "seq", "seq"])]
    return (_kv_model(nodes, inits, inputs, [_io("y", ["batch", "seq", 32])]), {},
            {"num_heads": 3, "qkv_hidden_sizes": [24, 24, 12]})


def _kv_feeds(sess, fixed: dict[str, np.ndarray], seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    sizes = {"batch": B, "seq": seq, "past": P, "total": P + seq}
    out = dict(fixed)
    for arg in sess.get_inputs():
        if arg.name not in out:
            shape = [d if isinstance(d, int) else sizes[d] for d in arg.shape]
            out[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _slice(array: np.ndarray, name: str, masks) -> np.ndarray:
    for (value, axis), keep in masks.items():
        if value == name:
            array = np.compress(keep, array, axis=axis)
    return array


@pytest.mark.parametrize("make", [_gqa_with_past, _mha_with_past_and_bias, _onnx_attention_with_past_and_mask,
                                  _ms_attention_qkv_hidden_sizes],
                         ids=["gqa_past", "mha_past_bias", "onnx_attention_past_mask", "ms_attention_qkv_sizes"])
def test_kv_cache_and_per_head_inputs_prune_with_signature_change(make: Any) -> None:
    model, fixed, after = make()
    node = next(n for n in model.graph if "ttention" in n.op_type)
    assert not any(g.prunable and g.kind in HEAD_KINDS for g in build_groups(model.clone()).groups), \
        "graph inputs/outputs must block the heads without allow_signature_change"
    dg = build_groups(model, allow_signature_change=True)
    g = _head_group(dg, node)
    assert g is not None, [x.describe() for x in dg.groups]
    plan = PrunePlan.create(dg, {g.id: [1]})
    assert plan.removed
    masks = plan.masks()
    assert any(not v.startswith("#") and dg.value(v) is not None and dg.value(v).is_graph_input() for v, _ in masks) \
        or "qkv_hidden_sizes" in after
    original = runtime_bytes(model)
    masked = runtime_bytes(masked_copy(model, plan))
    apply_plan(plan)
    pruned = runtime_bytes(model)
    onnx.checker.check_model(pruned, full_check=True)
    for attr, value in after.items():
        got = node.attributes[attr].value
        assert (list(got) if isinstance(value, list) else got) == value, (attr, got)
    s_orig, s_masked, s_pruned = session(original), session(masked), session(pruned)
    feeds = _kv_feeds(s_masked, fixed, seq=1 if "seqlens_k" in fixed else S)
    try:
        expected, reference = s_masked.run(None, feeds), s_orig.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - one onnxruntime deviation from the spec, named
        if "broadcastable to (batch_size, kv_num_heads" in str(exc):  # onnxruntime 1.24.1 (1.32 follows the spec)
            pytest.skip("this onnxruntime checks attn_mask's head axis against kv_num_heads, the ONNX spec "
                        "(and onnxruntime 1.32) against q_num_heads")
        raise
    got = s_pruned.run(None, {k: _slice(v, k, masks) for k, v in feeds.items()})
    names = [o.name for o in s_masked.get_outputs()]
    for name, e, gv, r in zip(names, expected, got, reference):
        e = _slice(e, name, masks)  # present KV: the kept heads
        assert e.shape == gv.shape and np.isfinite(e).all(), name
        peak = float(np.abs(e).max())
        err = float(np.abs(gv.astype(np.float64) - e).max()) / peak
        assert err < REL_TOL, f"{name}: pruned vs masked relative error {err:.2e}"
    peak = float(np.abs(expected[0]).max())
    assert not np.allclose(reference[0], expected[0], rtol=1e-3, atol=1e-4 * peak), "masking changed nothing"


# ------------------------------------------------------------------ GroupQueryAttention: packed QKV, rotary


def _gqa(packed: bool, rotary: bool):
    rng = np.random.default_rng(8 + 2 * packed + rotary)
    d = 16 if rotary else 8  # onnxruntime's rotary kernel wants a head size multiple of 16
    nodes, inits = _projections(rng, {"qkv": 8 * d} if packed else {"q": 4 * d, "k": 2 * d, "v": 2 * d})
    inits["wo"] = (rng.standard_normal((4 * d, 32)) / 4).astype(np.float32)
    qkv = ["qkv", "", ""] if packed else ["q", "k", "v"]
    extra, attrs = [], {}
    if rotary:  # cos/sin caches [max_seq, D/2], shared by every head
        angles = np.arange(16)[:, None] / (100.0 ** (np.arange(d // 2) / (d // 2)))[None, :]
        inits.update(cos=np.cos(angles).astype(np.float32), sin=np.sin(angles).astype(np.float32))
        extra, attrs = ["cos", "sin"], {"do_rotary": 1}
    nodes += [helper.make_node("GroupQueryAttention", [*qkv, "", "", "seqlens_k", "total_sequence_length", *extra],
                               ["a", "present_key", "present_value"],  # onnxruntime 1.24 requires all three
                               name="gqa", domain=MS, num_heads=4, kv_num_heads=2, **attrs),
              helper.make_node("MatMul", ["a", "wo"], ["y"], name="o_proj")]
    inputs = [_io("seqlens_k", ["batch"], TensorProto.INT32), _io("total_sequence_length", [], TensorProto.INT32)]
    return _kv_model(nodes, inits, inputs, [_io("y", ["batch", "seq", 32])])


@pytest.mark.parametrize("packed,rotary", [(True, False), (False, True), (True, True)],
                         ids=["packed", "rotary", "packed_rotary"])
def test_gqa_packed_and_rotary_prune_exactly(packed: bool, rotary: bool) -> None:
    model = _gqa(packed, rotary)
    node = next(n for n in model.graph if n.op_type == "GroupQueryAttention")
    dg = build_groups(model)
    g = _head_group(dg, node)
    assert g is not None and g.size == 2, [x.describe() for x in dg.groups]
    # the op declares its unit as a KV head read by 2 query heads, packed or not
    assert g.kind == "kv_group" and dg.queries_per_unit(g) == 2
    if packed:  # one KV group: its 2 query heads, its key head and its value head in the packed axis
        d = 16 if rotary else 8
        assert dg.positions(g, ("qkv", 2)).tolist()[1] == [*range(2 * d, 4 * d), *range(5 * d, 6 * d),
                                                            *range(7 * d, 8 * d)]
    plan = PrunePlan.create(dg, {g.id: [1]})
    assert plan.removed
    original, masked = runtime_bytes(model), runtime_bytes(masked_copy(model, plan))
    apply_plan(plan)
    pruned = runtime_bytes(model)
    onnx.checker.check_model(pruned, full_check=True)
    assert (node.attributes.get_int("num_heads"), node.attributes.get_int("kv_num_heads")) == (2, 1)
    fixed = {"seqlens_k": np.full(3, S - 1, np.int32), "total_sequence_length": np.array(S, np.int32)}

    def feeds(s):
        out = _kv_feeds(s, fixed, seq=S)
        out["x"] = np.random.default_rng(9).standard_normal((3, S, 32)).astype(np.float32)  # batch 3
        return out

    assert_pruned_matches_masked("packed gqa", original, masked, pruned, feeds, REL_TOL)


def test_ms_attention_input_channels_are_contracted_like_gemm() -> None:
    """com.microsoft Attention's packed weight reads its input's channels (``CONSUME`` + contraction on
    ``E``): a projection feeding it loses channels with the weight's rows, together with a head."""
    rng = np.random.default_rng(10)
    inits = {"p": (rng.standard_normal((32, 24)) / 4).astype(np.float32),
             "w": (rng.standard_normal((24, 96)) / 4).astype(np.float32),
             "b": (rng.standard_normal(96) / 4).astype(np.float32),
             "wo": (rng.standard_normal((32, 32)) / 4).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "p"], ["h"], name="pre"),
             helper.make_node("Attention", ["h", "w", "b"], ["a"], name="attn", domain=MS, num_heads=4),
             helper.make_node("MatMul", ["a", "wo"], ["y"], name="o_proj")]
    model = _kv_model(nodes, inits, [], [_io("y", ["batch", "seq", 32])])
    node = next(n for n in model.graph if n.op_type == "Attention")
    dg = build_groups(model)
    channels = dg.groups_at("p", 1)
    assert len(channels) == 1 and channels[0].prunable and channels[0].size == 24, [g.describe() for g in channels]
    member = {m.slot.key: m for m in channels[0].members}[("w", 0)]
    assert "consume" in {r.value for r in member.roles}
    heads = _head_group(dg, node)
    assert heads is not None and heads.size == 4
    plan = PrunePlan.create(dg, {channels[0].id: [0, 5, 23], heads.id: [2]})
    original, masked = runtime_bytes(model), runtime_bytes(masked_copy(model, plan))
    apply_plan(plan)
    assert node.inputs[1].const_value.shape == (21, 72) and node.attributes.get_int("num_heads") == 3
    pruned = runtime_bytes(model)
    onnx.checker.check_model(pruned, full_check=True)
    feeds = {"x": np.random.default_rng(11).standard_normal((3, S, 32)).astype(np.float32)}
    assert_pruned_matches_masked("ms attention", original, masked, pruned, feeds, REL_TOL)
