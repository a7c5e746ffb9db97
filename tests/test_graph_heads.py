"""Attention heads found by the one engine (``onnxsparse.graph``), export by export.

For every attention export of the corpus (``samples/corpus``), the Hugging Face samples
(``samples/models/hf_*``) and the other attention samples: after ``normalize`` and the attention
rewrites ``prune()`` runs (``rewrite_attention``), ``build_groups`` finds
one prunable head group (``kind`` ``head`` or ``kv_group``) per attention block (one per Softmax;
T5's relative-position bias is one per-head input of both layers, so both share one group),
and removing unit 0 of every head group gives the same outputs as the original model with those
heads masked (``masked_copy``), to a relative error < 1e-4 at batch 3 / sequence 5 (the exports were
traced at batch 2 / sequence 7); the masking must change the output.  Exports the engine cannot
read yet are ``xfail(strict=True)`` naming what blocks them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import ROOT, assert_pruned_matches_masked, runtime_bytes

from onnxsparse import load_model
from onnxsparse.passes.prune import prepare_for_analysis
from onnxsparse.graph import PrunePlan, apply_plan, build_groups, masked_copy
from onnxsparse.graph.kinds import HEAD_KINDS

CORPUS = ROOT / "samples" / "corpus"
MODELS = ROOT / "samples" / "models"
REL_TOL = 1e-4
VOCAB = 32  # below every sample's vocabulary

_SAMPLES = ("attn_bert_torchscript", "attn_llama_gqa", "attn_tf2onnx", "digits_transformer",
            "digits_transformer_dynamo", "real_torch_gpt2_ts", "real_torch_gpt2_dynamo", "real_torch_bert_ts",
            "real_torch_bert_dynamo", "real_tf_keras_mha")


def _paths() -> dict[str, Any]:
    # corpus names are <arch>_<attention>_<exporter>; attention "none": a CNN
    out = {p.stem: p for p in sorted(CORPUS.glob("*.onnx")) if "_none_" not in p.stem}
    out.update({p.stem: p for p in sorted(MODELS.glob("hf_*.onnx"))})
    out.update({name: MODELS / f"{name}.onnx" for name in _SAMPLES if (MODELS / f"{name}.onnx").exists()})
    return out


PATHS = _paths()

#: exports whose heads the engine does not find (the reason that blocks them)
FAIL: dict[str, str] = {}


def _params() -> list[Any]:
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=FAIL[n]))
            if n in FAIL else n for n in PATHS]


def _feeds(sess, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (batch if k == 0 else seq) for k, d in enumerate(arg.shape)]
        int_type = "int" in arg.type
        if arg.name == "attention_mask":
            mask = np.ones(shape, np.int64)
            mask[0, -2:] = 0
            out[arg.name] = mask if int_type else mask.astype(np.float32)
        elif arg.name == "token_type_ids":
            out[arg.name] = np.zeros(shape, np.int64)
        elif int_type:
            out[arg.name] = rng.integers(3, VOCAB, shape).astype(np.int64)
        else:
            out[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _softmax(model: ir.Model) -> set[str]:
    return {n.name for n in model.graph if n.op_type == "Softmax"}


@pytest.mark.parametrize("name", _params())
def test_heads_found_and_exact(name: str) -> None:
    model = prepare_for_analysis(load_model(PATHS[name]))  # the model as prune() analyses it
    blocks = _softmax(model)
    dg = build_groups(model)
    heads = [g for g in dg.groups if g.kind in HEAD_KINDS]
    prunable = [g for g in heads if g.prunable]
    reasons = sorted({g.reason for g in heads if not g.prunable}) or [r for _, rs in dg.unattached_heads() for r in rs]
    # one group per block; blocks that share a per-head input (T5's position bias) share one group
    covered = [s for g in prunable for s in blocks.intersection(g.nodes)]
    assert sorted(covered) == sorted(blocks), \
        f"{name}: {len(prunable)} prunable head groups for {len(blocks)} blocks: {reasons[:3]}"
    assert len(prunable) == len(blocks) or name.startswith("t5_"), f"{name}: {len(prunable)} head groups"
    original = runtime_bytes(model)
    plan = PrunePlan.create(dg, {g.id: [0] for g in prunable})
    assert len(plan.removed) == len(prunable), f"{name}: a rewrite check refused a head group"
    masked = runtime_bytes(masked_copy(model, plan))
    apply_plan(plan)
    pruned = runtime_bytes(model)
    onnx.checker.check_model(pruned, full_check=True)
    assert_pruned_matches_masked(name, original, masked, pruned, lambda s: _feeds(s, batch=3, seq=5), REL_TOL)


# ------------------------------------------------------------------ the rules the exports need, in small


def _node(op: str, inputs, outputs, **attrs) -> onnx.NodeProto:
    return onnx.helper.make_node(op, list(inputs), list(outputs), name=f"{op}_{outputs[0]}", **attrs)


def test_slice_with_run_time_bounds_couples_the_other_axes() -> None:
    """rotate_half's ``x[..., : x.shape[-1] // 2]``: the channels pass through, the sliced axis is blocked."""
    from test_prune_support import check_oracle, make_model

    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((8, 3, 1, 1)).astype(np.float32),
             "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32),
             "i3": np.array(3, np.int64), "two": np.array(2, np.int64), "ax0": np.array([0], np.int64),
             "zero": np.array([0], np.int64), "ax3": np.array([3], np.int64)}
    nodes = [_node("Conv", ["x", "w1"], ["h"]), _node("Shape", ["h"], ["sh"]), _node("Gather", ["sh", "i3"], ["d"]),
             _node("Div", ["d", "two"], ["half"]), _node("Unsqueeze", ["half", "ax0"], ["end"]),
             _node("Slice", ["h", "zero", "end", "ax3"], ["s"]), _node("Conv", ["s", "w2"], ["y"])]
    model = make_model(nodes, [("x", ["N", 3, 6, "W"])], [("y", None)], inits)
    sl = next(n for n in model.graph if n.op_type == "Slice")
    assert sl.inputs[2].const_value is None  # the bound is computed at run time
    assert build_groups(model).groups_at("h", 1)[0].prunable
    check_oracle(model, dims={"W": 6})


def test_view_minus_one_last_dim_absorbs_symbolic_dims() -> None:
    """``x.view(-1, x.size(-1))`` on ``[N, 4, 4, C]``: the ``-1`` is ``N*16``, the channels pair with the
    last axis (GPT-2's Conv1D input, TorchScript)."""
    from test_prune_support import check_oracle, make_model

    rng = np.random.default_rng(1)
    inits = {"w1": rng.standard_normal((8, 3, 1, 1)).astype(np.float32),
             "wg": rng.standard_normal((8, 5)).astype(np.float32),
             "m1": np.array([-1], np.int64), "s0": np.array([-1], np.int64),
             "s1": np.array([2**62], np.int64)}
    nodes = [_node("Conv", ["x", "w1"], ["h"]), _node("Transpose", ["h"], ["t"], perm=[0, 2, 3, 1]),
             _node("Shape", ["t"], ["sh"]), _node("Slice", ["sh", "s0", "s1"], ["last"]),
             _node("Concat", ["m1", "last"], ["tgt"], axis=0), _node("Reshape", ["t", "tgt"], ["f"]),
             _node("MatMul", ["f", "wg"], ["y"])]
    model = make_model(nodes, [("x", ["N", 3, 4, 4])], [("y", None)], inits)
    g = build_groups(model).groups_at("h", 1)[0]
    assert g.prunable, g.reasons
    check_oracle(model)


def test_align_dims_pairs_static_tails_after_an_unknown_block() -> None:
    from onnxsparse.graph.rules.shape import align_dims

    assert align_dims([None, None, 4, 8], [None, 32]) == [([0, 1], [0]), ([2, 3], [1])]
    assert align_dims([None, 64], [None, None, 64]) == [([0], [0, 1]), ([1], [2])]
    assert align_dims([None, 3], [None, 4]) is None
    assert align_dims([None, None], [None]) is None
