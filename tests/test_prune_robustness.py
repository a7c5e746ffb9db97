"""Pruning on the real exports behind three tracker issues, and failures that must not stop a run.

* ``real_paddle_mobilenetv3`` (paddle2onnx 1.0.8): its flatten is ``Reshape(x, Concat(Shape(x)[0:1], [-1]))``,
  which onnx shape inference cannot resolve with a dynamic batch, so the file carries no shape from
  there on; the MatMul head used to be skipped with "operand ranks unknown" and its hidden group
  never listed.
* The same model (and the Keras VGG) with the batch written as ``dim_value: -1`` (older paddle2onnx,
  and the usual "make the batch dynamic" edit): the -1 used to be read as a size, and the
  dependency solve died with ``ValueError: negative axis 0 index: -2``.
* ``real_tf_keras_vgg`` (tf2onnx, dynamic batch): Flatten -> Dense -> Dense -> Dense; every conv group
  and both hidden dense groups are prunable.
* An unexpected exception in a rule (analysis or rewrite), a coupling or a criterion skips the groups
  it touches with ``internal error in ...`` as the reason; the run goes on and the result is exact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import SAMPLES, cli
from test_prune_support import check_oracle

from onnxsparse import load_model, normalize
from onnxsparse.criteria import get_criterion
from onnxsparse.graph import Offset, build_groups
from onnxsparse.graph.rules.conv import ConvRule
from onnxsparse.graph.rules.linear import MatMulRule
from onnxsparse.passes.prune import plan_pruning, prune

PADDLE = SAMPLES / "real_paddle_mobilenetv3.onnx"
KERAS = SAMPLES / "real_tf_keras_vgg.onnx"
#: the exports were checked at batch 2; the oracle runs another batch size
BATCH = 5


def _prepared(path: Path) -> ir.Model:
    model = normalize(load_model(path))
    model.ir_version = max(model.ir_version, 4)
    return model


def _negative_batch(path: Path, tmp_path: Path) -> Path:
    """The file with every symbolic dim of its inputs/outputs written as ``dim_value: -1``."""
    proto = onnx.load(str(path))
    for vi in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") or not d.HasField("dim_value"):
                d.dim_value = -1
    out = tmp_path / f"{path.stem}_neg.onnx"
    onnx.save(proto, str(out))
    return out


def _prune_json(path: Path, tmp_path: Path, *extra: str) -> dict:
    code, out, err = cli("prune", path, "-o", tmp_path / "out.onnx", "--channels", "0.3", "--round-to", "1", "--json",
                         "--force", *extra)
    assert code == 0, err
    assert "internal error" not in err
    return json.loads(out)


def _reasons(report: dict) -> list[str]:
    return [s["reason"] for s in report["skipped"]]


# ----------------------------------------------------------------------------- the real exports


@pytest.mark.parametrize("path", [PADDLE, KERAS], ids=lambda p: p.stem)
def test_prune_cli_on_real_export(path: Path, tmp_path: Path) -> None:
    report = _prune_json(path, tmp_path)
    assert report["groups_pruned"] == report["groups_prunable"] > 0
    # only the graph input/output and the softmax over the classes are left
    for reason in _reasons(report):
        assert "is a graph" in reason or "normalises over axis" in reason, reason
    assert (tmp_path / "out.onnx").exists()


def test_paddle_flatten_matmul_head_is_prunable() -> None:
    model = _prepared(PADDLE)
    dg = build_groups(model)
    assert not [g.reasons for g in dg.skipped if any("unknown" in r for r in g.reasons)]
    matmuls = [n.name for n in model.graph if n.op_type == "MatMul"]
    head = [g for g in dg.prunable if any(n in g.nodes for n in matmuls)]
    # the last conv's channels through the flatten into the first Linear, and the Linear's hidden units
    assert len(head) == 2, [g.describe() for g in dg.groups]
    assert {g.size for g in head} == {192, 360}


def test_keras_vgg_dense_groups_are_prunable() -> None:
    model = _prepared(KERAS)
    dg = build_groups(model)
    dense = {n.name for n in model.graph if n.op_type == "MatMul" and "fc" in n.name}
    dense_groups = [g for g in dg.prunable if any(n in dense for n in g.nodes)]
    # flatten -> fc1 (the last conv's channels as NHWC-strided blocks), fc1 -> fc2, fc2 -> predictions
    assert len(dense_groups) == 3
    assert {g.size for g in dense_groups} == {32, 64}


@pytest.mark.parametrize(("path", "ratio", "best"), [(PADDLE, 0.3, 0.54), (KERAS, 0.25, 0.57)], ids=["paddle", "keras"])
def test_params_ratio(path: Path, ratio: float, best: float) -> None:
    """Before the fixes: paddle 0.717 (head skipped), keras export with a -1 batch: internal error."""
    report = prune(path, ratio, round_to=1).report
    assert report.params_after / report.params_before < best


@pytest.mark.parametrize("path", [PADDLE, KERAS], ids=lambda p: p.stem)
def test_masked_oracle_at_another_batch(path: Path) -> None:
    model = _prepared(path)
    dg = build_groups(model)
    plan, _ = plan_pruning(dg, 0.3, round_to=1)
    assert len(plan.removed) == len(dg.prunable)
    check_oracle(model, plan, batch=BATCH)


@pytest.mark.parametrize("path", [PADDLE, KERAS], ids=lambda p: p.stem)
def test_negative_batch_dim(path: Path, tmp_path: Path) -> None:
    neg = _negative_batch(path, tmp_path)
    reference = _prune_json(path, tmp_path)
    report = _prune_json(neg, tmp_path)
    assert report["params"]["after"] == reference["params"]["after"] < reference["params"]["before"]
    assert sorted(_reasons(report)) == sorted(_reasons(reference))
    model = _prepared(neg)
    dg = build_groups(model)
    plan, _ = plan_pruning(dg, 0.3, round_to=1)
    check_oracle(model, plan, batch=BATCH)


# ----------------------------------------------------------------------------- failures inside a run


def _boom(*args, **kwargs):
    raise ValueError("boom")


def test_rule_that_raises_skips_its_groups(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog) -> None:
    target = "functional_1/fc2_1/MatMul"
    original = MatMulRule.couple

    def couple(self, node, ctx):
        if node.name == target:
            raise ValueError("boom")
        return original(self, node, ctx)

    monkeypatch.setattr(MatMulRule, "couple", couple)
    report = _prune_json(KERAS, tmp_path)
    hits = [r for r in _reasons(report) if "internal error in rule MatMulRule: ValueError: boom" in r]
    assert hits and all(target in r for r in hits)
    assert report["groups_pruned"] > 0, "the other groups are still pruned"
    with caplog.at_level(logging.DEBUG, logger="onnxsparse"):
        code, out, err = cli("prune", KERAS, "-o", tmp_path / "dbg.onnx", "--channels", "0.3", "--force", "--debug")
    assert code == 0, err
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


def test_rewrite_that_raises_skips_its_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _prepared(KERAS)
    target = next(n.name for n in model.graph if n.op_type == "Conv" and "block2_conv1" in n.name)
    original = ConvRule.rewrite

    def rewrite(self, node, ctx):
        if node.name == target:
            raise ValueError("boom")
        return original(self, node, ctx)

    monkeypatch.setattr(ConvRule, "rewrite", rewrite)
    dg = build_groups(model)
    before = len(dg.prunable)
    plan, _ = plan_pruning(dg, 0.3, round_to=1)
    skipped = [g for g in dg.skipped if any("internal error in rule ConvRule: ValueError: boom" in r for r in g.reasons)]
    assert len(skipped) == 2  # the conv's input channels and its output channels
    assert all(target in g.nodes for g in skipped)
    assert len(dg.prunable) == before - 2 == len(plan.removed)
    check_oracle(model, plan, batch=BATCH)  # the rest pruned exactly


def test_prune_reports_rewrite_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ConvRule, "rewrite", _boom)
    result = prune(KERAS, 0.3, round_to=1)
    reasons = [s.reason for s in result.report.skipped]
    assert sum("internal error in rule ConvRule: ValueError: boom" in r for r in reasons) >= 6
    dense = [g for g in result.report.groups if "fc" in g.root]
    assert dense and all(g.kept < g.total for g in dense), "groups without a conv are still pruned"


def test_bad_coupling_is_skipped_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule that couples positions outside a slot (what a -1 dim used to cause) blocks, never crashes."""
    from onnxsparse.graph.rules.elementwise import RULES as ELEMENTWISE

    relu = next(r for r in ELEMENTWISE if "Relu" in r.op_types)
    original = type(relu).couple
    target = "functional_1/fc1_1/Relu"

    def couple(self, node, ctx):
        reason = original(self, node, ctx)
        if node.name == target:
            ctx.couple(node.inputs[0], 1, node.outputs[0], 1, Offset(-2))
        return reason

    monkeypatch.setattr(type(relu), "couple", couple)
    result = prune(KERAS, 0.3, round_to=1)
    reasons = [r for s in result.report.skipped for r in s.reasons]
    assert any(r.startswith("internal error in coupling") and "outside" in r for r in reasons), reasons
    assert result.report.pruned_groups


def test_criterion_that_raises_skips_its_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxsparse.criteria import base

    class Flaky(type(get_criterion("l2"))):  # type: ignore[misc]
        name = "test_flaky"

        def score(self, group, ctx):
            if group.size == 64:
                raise ValueError("boom")
            return super().score(group, ctx)

    monkeypatch.setitem(base._REGISTRY, "test_flaky", Flaky)

    result = prune(KERAS, 0.3, criterion="test_flaky", round_to=1)
    reasons = [s.reason for s in result.report.skipped]
    assert sum(r == "internal error in criterion test_flaky: ValueError: boom" for r in reasons) == 2
    assert len(result.report.pruned_groups) == 7
    assert np.isfinite(result.report.params_after)
