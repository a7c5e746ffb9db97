"""Hugging Face exports (``samples/export_hf_attention.py``): heads, KV groups, FFN and channels.

Tiny random-weight BertModel, LlamaModel (8 query / 2 KV heads, SwiGLU, RoPE) and ViTModel, each
with ``attn_implementation="sdpa"`` and ``"eager"``, exported by TorchScript (``dynamo=False``) and
dynamo with dynamic batch (and sequence) axes.  Today's exporters lower SDPA as
``Softmax -> IsNaN -> Where(isnan, 0, p) -> MatMul(V)`` (and dynamo folds the heads into the
batch for ``K^T``); every attention block must be pruned anyway.

Oracle (as ``test_heads.py``): the removed heads' / neurons' output-projection rows zeroed in the
original; the pruned model must match it to ``atol=1e-5, rtol=1e-4`` at batch/sequence sizes other
than the export's (batch 2, sequence 7), and the masking must change the output (not vacuous).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from helpers import SAMPLES, cli, session
from test_heads import masked_reference

from onnxsparse import load_model, normalize
from onnxsparse.graph import apply_plan, build_groups, masked_copy
from onnxsparse.io import max_runtime_ir_version, to_proto
from onnxsparse.passes.prune import plan_pruning, prepare_for_analysis
from onnxsparse.passes.prune_heads import prune_heads

ATOL, RTOL = 1e-5, 1e-4
MANIFEST = json.loads((SAMPLES / "hf_manifest.json").read_text())
MODELS = sorted(p.stem for p in SAMPLES.glob("hf_*.onnx"))
#: (batch, sequence) for the oracle; the exports were traced at (2, 7)
SIZES = ((3, 5), (1, 11))


def _arch(name: str) -> str:
    return name.split("_")[1]


def _config(name: str) -> dict[str, Any]:
    return MANIFEST["models"][name]["config"]


def _softmax_count(name: str) -> int:
    return sum(1 for n in onnx.load(str(SAMPLES / f"{name}.onnx")).graph.node if n.op_type == "Softmax")


def _heads_ratio(name: str) -> float:
    # Llama has 2 KV groups: 0.25 of 2 rounds down to none, 0.5 removes one group (4 query heads)
    return 0.5 if _arch(name) == "llama" else 0.25


def _feeds(sess, batch: int, seq: int, seed: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) else (batch if d == "batch" else seq) for d in arg.shape]
        if arg.name == "input_ids":
            feeds[arg.name] = rng.integers(0, vocab, shape).astype(np.int64)
        elif arg.name == "attention_mask":
            mask = np.ones(shape, np.int64)
            mask[0, -2:] = 0  # one padded row
            feeds[arg.name] = mask
        else:
            feeds[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _bytes(model: ir.Model | onnx.ModelProto) -> bytes:
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    return proto.SerializeToString()


def _oracle(name: str, reference: Any, masked: Any, pruned: Any) -> float:
    """Pruned == masked at SIZES; masked != original somewhere.  Returns the largest error."""
    ref_s, masked_s, new_s = session(_bytes(reference)), session(_bytes(masked)), session(_bytes(pruned))
    assert [i.name for i in new_s.get_inputs()] == [i.name for i in masked_s.get_inputs()]
    assert [o.name for o in new_s.get_outputs()] == [o.name for o in masked_s.get_outputs()]
    vocab = _config(name).get("vocab_size", 0)
    worst, differs = 0.0, False
    for n, (batch, seq) in enumerate(SIZES):
        feeds = _feeds(masked_s, batch, seq, n, vocab)
        expected, got, orig = masked_s.run(None, feeds), new_s.run(None, feeds), ref_s.run(None, feeds)
        for e, g, o in zip(expected, got, orig):
            assert np.isfinite(e).all() and e.shape == g.shape
            np.testing.assert_allclose(g, e, atol=ATOL, rtol=RTOL, err_msg=f"{name} at batch {batch} seq {seq}")
            worst = max(worst, float(np.abs(g - e).max()))
            differs |= not np.allclose(o, e, atol=ATOL, rtol=RTOL)
    assert differs, f"{name}: masking changed nothing, the oracle proves nothing"
    return worst


def test_manifest_lists_every_export_and_no_failure() -> None:
    assert len(MODELS) == 12, MODELS
    assert set(MODELS) == set(MANIFEST["models"]), MANIFEST.get("failed")
    assert not MANIFEST["failed"]
    for name in MODELS:
        assert (SAMPLES / f"{name}.onnx").stat().st_size < 400_000


def test_sdpa_exports_guard_the_probabilities() -> None:
    """What the brief is about: the SDPA exports put IsNaN -> Where between Softmax and P V
    (except TorchScript ViT, which has no mask and keeps Softmax -> MatMul)."""
    chains = {name: MANIFEST["models"][name]["softmax_to_pv"] for name in MODELS}
    guarded = {n for n, c in chains.items() if c == ["Softmax -> IsNaN -> Where -> MatMul"]}
    assert guarded == {"hf_bert_sdpa_ts", "hf_bert_sdpa_dynamo", "hf_llama_sdpa_ts", "hf_llama_sdpa_dynamo",
                       "hf_vit_sdpa_dynamo"}, chains


@pytest.mark.parametrize("name", MODELS)
def test_heads_and_ffn_pruned_in_every_block(name: str) -> None:
    cfg = _config(name)
    blocks = _softmax_count(name)
    assert blocks == cfg["num_hidden_layers"]
    model = load_model(SAMPLES / f"{name}.onnx")
    report = prune_heads(model, heads=_heads_ratio(name), ffn=0.25).report
    assert not report["skipped"], report["skipped"]
    assert len(report["attention"]) == blocks
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    for block in report["attention"]:
        assert block["heads_total"] == heads and block["kv_heads_total"] == kv
        if kv < heads:  # GQA: whole KV groups go, with their query heads
            assert block["kv_heads_kept"] == kv // 2 and block["heads_kept"] == heads // 2
        else:
            assert block["heads_kept"] == heads - heads // 4
    assert len(report["ffn"]) == cfg["num_hidden_layers"]
    for block in report["ffn"]:
        assert block["total"] == cfg["intermediate_size"] and block["kept"] == cfg["intermediate_size"] * 3 // 4
    assert block["gated"] == (_arch(name) == "llama")
    source = SAMPLES / f"{name}.onnx"
    ref = load_model(source)
    normalize(ref)
    _oracle(name, ref, masked_reference(source, report), model)


@pytest.mark.parametrize("name", MODELS)
def test_heads_only_on_the_cli_path(name: str, tmp_path) -> None:
    """``onnxsparse prune MODEL --heads R`` (the brief's command) removes heads in every block."""
    out = tmp_path / "pruned.onnx"
    code, stdout, err = cli("prune", SAMPLES / f"{name}.onnx", "-o", out, "--heads", str(_heads_ratio(name)),
                            "--json", "--force")
    assert code == 0, err
    report = json.loads(stdout)
    text = json.dumps(report)
    assert "do not feed a MatMul with V" not in text
    pruned = onnx.load(str(out))
    before = sum(int(np.prod(i.dims)) for i in onnx.load(str(SAMPLES / f"{name}.onnx")).graph.initializer)
    after = sum(int(np.prod(i.dims)) for i in pruned.graph.initializer)
    assert after < before


# ----------------------------------------------------------------------------- --channels


def _channel_model(name: str) -> ir.Model:
    """The model as ``prune()`` analyses it: normalised, attention rewritten."""
    model = prepare_for_analysis(load_model(SAMPLES / f"{name}.onnx"))
    return model


@pytest.mark.parametrize("name", MODELS)
def test_channels_groups_prune_and_match_masked_model(name: str) -> None:
    model = _channel_model(name)
    dg = build_groups(model)
    reasons = [r for g in dg.skipped for r in g.reasons]
    # dims fixed by the weights behind run-time shapes are known (onnxruntime's symbolic inference)
    assert not [r for r in reasons if "is unknown" in r], reasons
    # dynamo's batch-folded K^T is unfolded for --channels too: Q and K pair their axes
    assert not [r for r in reasons if "cannot pair input and output axes" in r], reasons
    plan, _ = plan_pruning(dg, 0.3)
    assert plan.removed, f"{name}: nothing to prune"
    original = to_proto(model)
    masked = to_proto(masked_copy(model, plan))
    apply_plan(plan)
    _oracle(name, original, masked, to_proto(model))


def test_llama_quarter_ratio_says_why_nothing_goes() -> None:
    """8 query heads in 2 KV groups: --heads 0.25 is floor(0.5) = 0 groups; the report says so."""
    model = load_model(SAMPLES / "hf_llama_sdpa_ts.onnx")
    report = prune_heads(model, heads=0.25).report
    assert len(report["attention"]) == 2 and not report["skipped"]
    for block in report["attention"]:
        assert block["heads_kept"] == block["heads_total"] == 8 and block["removed"] == []
        assert "rounds down to none" in block["note"] and "0.5" in block["note"]
