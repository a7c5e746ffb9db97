"""Group kinds (channel, head, kv_group, neuron) and the per-kind ratios of one plan.

Heads, KV groups and FFN neurons are groups of the same dependency analysis as channels; the kind is
read off the slots (a rule's head axis, the projections' positions per unit, the ops touching the
group), and ``prune`` / ``plan_pruning`` take one ratio per kind.
"""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import ROOT, sample

from onnxsparse import load_model
from onnxsparse.errors import UsageError
from onnxsparse.graph import build_groups
from onnxsparse.passes.prune import kind_ratios, plan_pruning, prepare_for_analysis, prune

HF = ROOT / "samples" / "models"


def _groups(path):
    model = prepare_for_analysis(load_model(path))
    return build_groups(model)


def _kinds(dg, prunable_only: bool = True) -> Counter:
    return Counter(g.kind for g in (dg.prunable if prunable_only else dg.groups))


def test_bert_heads_and_ffn_are_kinds_of_groups() -> None:
    dg = _groups(HF / "hf_bert_sdpa_dynamo.onnx")
    assert _kinds(dg) == {"head": 2, "neuron": 2}
    assert all(g.size == 4 for g in dg.prunable if g.kind == "head")  # 4 heads per block
    # the residual stream goes through LayerNorm: a channel group, blocked with that reason
    assert all("LayerNormalization" in g.reason for g in dg.skipped if g.kind == "channel")


def test_grouped_query_attention_units_are_kv_groups() -> None:
    dg = _groups(HF / "hf_llama_sdpa_dynamo.onnx")
    kv = [g for g in dg.prunable if g.kind == "kv_group"]
    assert len(kv) == 2 and all(g.size == 2 for g in kv)  # 8 query heads read 2 KV heads


def test_cnn_groups_are_channels_and_dense_hidden_layers_are_neuron_groups() -> None:
    """Keras VGG (tf2onnx): 7 conv groups (the last one through the flatten into fc1), fc1 and fc2 hidden."""
    kinds = _kinds(_groups(sample("real_tf_keras_vgg")))
    assert kinds == {"channel": 7, "neuron": 2}
    assert _kinds(_groups(sample("digits_cnn"))) == {"channel": 3}


def test_per_kind_ratios() -> None:
    dg = _groups(HF / "hf_bert_sdpa_dynamo.onnx")
    plan, _ = plan_pruning(dg, 0.0, heads=0.5, round_to=1)
    assert {dg.groups[g].kind for g in plan.removed} == {"head"}
    assert all(len(v) == 2 for v in plan.removed.values())  # 0.5 of 4 heads
    dg = _groups(HF / "hf_bert_sdpa_dynamo.onnx")
    plan, _ = plan_pruning(dg, 0.25, round_to=1)  # ffn follows channels; heads only when asked
    assert {dg.groups[g].kind for g in plan.removed} == {"neuron"}
    dg = _groups(HF / "hf_bert_sdpa_dynamo.onnx")
    plan, _ = plan_pruning(dg, 0.25, ffn=0.0, round_to=1)
    assert plan.empty
    assert kind_ratios(0.3) == {"channel": 0.3, "neuron": 0.3, "head": 0.0, "kv_group": 0.0}
    with pytest.raises(UsageError):
        kind_ratios(0.3, heads=1.0)


def test_prune_reports_kinds_and_counts() -> None:
    report = prune(str(HF / "hf_llama_sdpa_dynamo.onnx"), 0.0, heads=0.5, ffn=0.25, round_to=1).report
    counts = report.kind_counts()
    assert counts["kv_group"]["pruned"] == 2 and counts["kv_group"]["units_removed"] == 2
    assert counts["neuron"]["pruned"] == 2 and counts["neuron"]["units_removed"] == 2 * 32
    assert report.to_dict()["kinds"] == counts
    assert {g.kind for g in report.skipped} == {"channel"}


def test_exclude_matches_weight_names_of_generically_named_nodes() -> None:
    """dynamo names nodes node_MatMul_3; a layer's weights keep their module path."""
    report = prune(str(sample("digits_transformer_dynamo")), 0.0, heads=0.5, exclude=["layers.1*"]).report
    pruned = [g for g in report.groups if g.kind == "head" and g.kept < g.total]
    skipped = [g for g in report.skipped if g.kind == "head"]
    assert len(pruned) == 1 and len(skipped) == 1 and "excluded" in skipped[0].reason
