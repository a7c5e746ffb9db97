"""The generality corpus (``samples/corpus``): every committed export.

23 tiny random-weight ``transformers`` architectures (``samples/export_corpus.py``: encoders, decoders
with GQA, T5/Whisper encoders, ViT/DeiT/Swin/MobileViT/CLIP, ConvNeXt/ResNet; SDPA and eager
attention) and 10 reduced torchvision CNNs (``samples/export_torchvision.py``), TorchScript and
dynamo exporters, traced at batch 2 / sequence 7.  For every file (``docs/corpus.md`` has the
measured table, ``python samples/corpus_table.py`` rebuilds it):

* ``test_prune_channels``: the ``--channels 0.3`` path (normalise, the attention rewrites as
  ``prune()`` runs them, ``build_groups`` -> ``plan_pruning`` -> ``apply_plan``, ``round_to=1`` so
  every group loses channels) has no ``internal error`` skip, and the pruned model equals the
  original with the removed channels masked (``masked_copy``) to a relative error < 1e-4 at batch
  3 / sequence 5; the masking must change the output (not vacuous).
* ``test_noop_prune_writes_the_input_unchanged``: ``onnxsparse prune --channels 0`` reports
  ``unchanged`` and writes the same nodes and initializers.
* ``test_prune_heads``: ``prune_heads(heads, ffn=0.25)`` prunes the heads of every attention (one
  per Softmax; ratio 0.5 where blocks have 2 heads, as 0.25 of 2 rounds to none) with no attention
  skipped, and every FFN, and matches the masked model (removed output-projection rows zeroed) at
  batch 1 / sequence 11.

All models, no subset: about a minute on 2 cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from helpers import ROOT, assert_pruned_matches_masked, cli, runtime_bytes
from test_heads import masked_reference

from onnxsparse import load_model
from onnxsparse.graph import apply_plan, build_groups, masked_copy
from onnxsparse.graph.export_groups import groups_document
from onnxsparse.schemas import check, load_schema
from onnxsparse.passes.prune import plan_pruning, prepare_for_analysis
from onnxsparse.passes.prune_heads import prune_heads

sys.path.insert(0, str(ROOT / "samples"))
import corpus_table  # noqa: E402  (the corpus feeds: ids in the vocabulary, one padded row)

CORPUS = ROOT / "samples" / "corpus"
MODELS = sorted(p.stem for p in CORPUS.glob("*.onnx")) if CORPUS.is_dir() else []
pytestmark = pytest.mark.skipif(not MODELS, reason="samples/corpus absent: run samples/export_corpus.py")

REL_TOL = 1e-4

#: exports with no prunable channel group (the first reason that blocks their weights)
NO_CHANNEL_GROUPS: dict[str, str] = {}
#: attention/FFN blocks prune_heads skips (reasons as reported)
HEADS_FAIL: dict[str, str] = {}
#: blocks with 2 heads (MobileViT, Swin's first stage): 0.25 rounds down to none
HEADS_RATIO = {"mobilevit": 0.5, "swin": 0.5}


def _params(names: list[str], fails: dict[str, str]) -> list[Any]:
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=fails[n])) if n in fails else n
            for n in names]


def _check(name: str, original: Any, masked: Any, pruned: Any, batch: int, seq: int) -> None:
    """pruned == masked (relative to the output's peak), masked != original."""
    assert_pruned_matches_masked(f"{name} at batch {batch} seq {seq}", original, masked, pruned,
                                 lambda s: corpus_table.feeds(s, batch, seq), REL_TOL)

GROUPS_SCHEMA = load_schema("groups")


def test_corpus_files_and_manifest() -> None:
    manifest = json.loads((CORPUS / "manifest.json").read_text())["models"]
    ok = {n for n, e in manifest.items() if e["status"] == "ok"}
    assert set(MODELS) == ok, set(MODELS) ^ ok
    assert len({manifest[n]["arch"] for n in MODELS}) >= 23
    for name in MODELS:
        assert (CORPUS / f"{name}.onnx").stat().st_size < 300_000, name
    assert sum(p.stat().st_size for p in CORPUS.glob("*.onnx")) < 12_000_000
    for name, entry in manifest.items():  # every failure says why
        assert entry["status"] == "ok" or entry.get("error"), name


@pytest.mark.parametrize("name", _params(MODELS, NO_CHANNEL_GROUPS))
def test_prune_channels(name: str) -> None:
    loaded = load_model(CORPUS / f"{name}.onnx")
    in_file = set(loaded.graph.initializers)
    model = prepare_for_analysis(loaded)  # the model as prune() analyses it
    dg = build_groups(model)
    internal = [r for g in dg.skipped for r in g.reasons if "internal error" in r]
    assert not internal, internal
    # the training hand-off (inspect --groups) is valid on every architecture
    assert check(groups_document(dg, model=name, in_file=in_file), GROUPS_SCHEMA) == [], name
    plan, _ = plan_pruning(dg, 0.3, round_to=1)
    assert plan.removed, f"{name}: no prunable channel group: {sorted({g.reason for g in dg.skipped})[:3]}"
    original = runtime_bytes(model)
    masked = runtime_bytes(masked_copy(model, plan))
    apply_plan(plan)
    pruned = runtime_bytes(model)
    onnx.checker.check_model(pruned, full_check=True)
    _check(name, original, masked, pruned, batch=3, seq=5)


@pytest.mark.parametrize("name", MODELS)
def test_noop_prune_writes_the_input_unchanged(name: str, tmp_path: Path) -> None:
    src, out = CORPUS / f"{name}.onnx", tmp_path / "out.onnx"
    code, stdout, err = cli("prune", src, "-o", out, "--channels", "0", "--json")
    assert code == 0, err
    assert json.loads(stdout)["unchanged"] is True
    a, b = onnx.load(str(src)), onnx.load(str(out))
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    assert {i.name: i.SerializeToString() for i in a.graph.initializer} == \
        {i.name: i.SerializeToString() for i in b.graph.initializer}


ATTENTION_MODELS = [n for n in MODELS if not n.startswith(("resnet_", "convnext_", "tv_"))]


@pytest.mark.parametrize("name", _params(ATTENTION_MODELS, HEADS_FAIL))
def test_prune_heads(name: str) -> None:
    path = CORPUS / f"{name}.onnx"
    softmax = sum(1 for n in onnx.load(str(path)).graph.node if n.op_type == "Softmax")
    model = load_model(path)
    report = prune_heads(model, heads=HEADS_RATIO.get(name.split("_")[0], 0.25), ffn=0.25).report
    skipped = [s["reason"] for s in report["skipped"] if s["kind"] == "attention"]
    assert not skipped, skipped
    # one entry per head group; T5 computes its relative-position bias once and adds it in every
    # layer, which ties the heads of all its layers into one group (``attentions`` counts them)
    assert sum(b["attentions"] for b in report["attention"]) == softmax
    for block in report["attention"]:
        assert block["heads_kept"] < block["heads_total"], block
    assert report["ffn"] and all(b["kept"] < b["total"] for b in report["ffn"])
    _check(name, str(path), masked_reference(path, report), model, batch=1, seq=11)
