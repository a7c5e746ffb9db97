"""Sensitivity analysis (``onnxsparse sensitivity``, :mod:`onnxsparse.passes.sensitivity`).

The error of a group at a ratio must be the error of really pruning that group (PrunePlan +
apply_plan), the MACs saved must be what the pruned model loses, errors grow with the ratio,
and nothing is skipped silently.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, cli, sample, session

from onnxsparse.errors import UsageError
from onnxsparse.graph import PrunePlan, apply_plan
from onnxsparse.passes.sensitivity import (
    output_errors,
    parse_ratios,
    prepare,
    sensitivity,
)

CNN = sample("digits_cnn")
CNN_DATA = DATA / "digits_calib.npz"
BERT = sample("hf_bert_sdpa_dynamo")
BERT_SHAPES = {"input_ids": (1, 16), "attention_mask": (1, 16)}
BERT_SHAPE_ARGS = ("--shape", "input_ids=1x16", "--shape", "attention_mask=1x16")


@pytest.fixture(scope="module")
def cnn_report():
    return sensitivity(CNN, CNN_DATA, ratios=(0.1, 0.25, 0.5), samples=32)


@pytest.fixture(scope="module")
def bert_report():
    return sensitivity(BERT, "random", ratios=(0.1, 0.25, 0.5), samples=16, shapes=BERT_SHAPES)


def _feeds(source, n):
    return {k: v[:n] for k, v in source.items()}


def _pruned_error(path, group_id: int, removed, feeds) -> tuple[float, float, int | None, int | None]:
    """(rel_mse, cosine) of really pruning ``removed`` units of one group, and MACs before/after."""
    from onnxsparse.analysis import count_macs

    model, dg = prepare(path)
    names = [o.name for o in model.graph.outputs]
    reference = session(model).run(names, feeds)
    shapes = {k: (1, *v.shape[1:]) for k, v in feeds.items()}
    before = count_macs(model, shapes)
    plan = PrunePlan.create(dg, {group_id: list(removed)})
    assert group_id in plan.removed
    apply_plan(plan)
    got = session(model).run(names, feeds)
    rel, cos, _ = output_errors(reference, got, names)
    return rel, cos, before, count_macs(model, shapes)


def test_cnn_errors_grow_with_the_ratio(cnn_report) -> None:
    assert {g.id for g in cnn_report.groups} == {0, 2, 3}
    assert all(g.kind == "channel" for g in cnn_report.groups)
    low, high = [], []
    for g in cnn_report.groups:
        errs = [r.rel_mse for r in g.results]
        assert all(e is not None and e > 0 for e in errs), g
        # nested selections (the lowest 10% are among the lowest 50%): monotone within a small tolerance
        assert all(b >= 0.9 * a for a, b in itertools.pairwise(errs)), (g.id, errs)
        cos = [r.cosine for r in g.results]
        assert all(-1.0 <= c <= 1.0 for c in cos) and cos[-1] <= cos[0] + 1e-6, (g.id, cos)
        low.append(errs[0])
        high.append(errs[-1])
    assert np.mean(high) > np.mean(low)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_cnn_error_equals_real_pruning_and_macs_saved_are_exact(cnn_report, ratio) -> None:
    feeds = _feeds(dict(np.load(CNN_DATA)), 32)
    for g in cnn_report.groups:
        r = g.at(ratio)
        assert r is not None and r.units_removed == len(r.removed) == int(np.floor(ratio * g.units))
        rel, cos, before, after = _pruned_error(CNN, g.id, r.removed, feeds)
        assert rel == pytest.approx(r.rel_mse, rel=1e-3, abs=1e-7), (g.id, ratio)
        assert cos == pytest.approx(r.cosine, abs=1e-5)
        assert cnn_report.macs_total == before
        assert r.macs_saved == before - after, (g.id, ratio)


def test_bert_heads_and_neurons(bert_report) -> None:
    kinds = {g.kind for g in bert_report.groups}
    assert kinds == {"head", "neuron"}
    heads = [g for g in bert_report.groups if g.kind == "head"]
    assert len(heads) == 2 and all(g.units == 4 for g in heads)
    for g in heads:
        # 0.1 of 4 heads is 0 heads: reported as such, with no error and no session
        r = g.at(0.1)
        assert r.units_removed == 0 and r.rel_mse is None and r.note == "rounds to 0 units"
        assert g.at(0.25).units_removed == 1 and g.at(0.5).units_removed == 2
        assert g.at(0.5).rel_mse >= g.at(0.25).rel_mse * 0.9
    assert bert_report.sessions == sum(1 for g in bert_report.groups for r in g.results if r.units_removed) + len(
        bert_report.blocks)
    # the residual stream's channel groups are skipped with their reason
    skipped = [s for s in bert_report.skipped if s.kind == "channel"]
    assert len(skipped) == 4 and all("LayerNormalization" in s.reason for s in skipped)


def test_bert_head_error_equals_real_pruning(bert_report) -> None:
    from onnxsparse.calibration.data import load_data

    model, _ = prepare(BERT)
    feeds = load_data("random", model, shapes=BERT_SHAPES, samples=16, seed=0).arrays
    for g in bert_report.groups:
        r = g.at(0.5)
        rel, _, before, after = _pruned_error(BERT, g.id, r.removed, feeds)
        assert rel == pytest.approx(r.rel_mse, rel=1e-2, abs=1e-9), (g.id, g.kind)
        assert r.macs_saved == before - after, (g.id, g.kind)


def test_kinds_filter_lists_the_others_as_skipped() -> None:
    report = sensitivity(BERT, "random", ratios=(0.5,), samples=4, shapes=BERT_SHAPES, kinds=("head", "kv_group"))
    assert {g.kind for g in report.groups} == {"head"}
    neurons = [s for s in report.skipped if s.kind == "neuron"]
    assert len(neurons) == 2 and all("not asked for" in s.reason for s in neurons)


def test_every_group_is_measured_or_skipped_with_a_reason(cnn_report, bert_report) -> None:
    from onnxsparse.passes.sensitivity import prepare as _prepare

    for path, report in ((CNN, cnn_report), (BERT, bert_report)):
        _, dg = _prepare(path)
        ids = {g.id for g in report.groups} | {s.id for s in report.skipped if s.id is not None}
        assert ids == {g.id for g in dg.groups}
        assert all(s.reason for s in report.skipped)


def test_parse_ratios() -> None:
    assert parse_ratios("0.5, 0.1,0.25") == (0.1, 0.25, 0.5)
    for bad in ("", "0.1,,0.2", "x", "0", "1", "1.5", "-0.1", "nan"):
        with pytest.raises(UsageError):
            parse_ratios(bad)


def test_cli_table_json_and_report(tmp_path: Path) -> None:
    code, out, err = cli("sensitivity", CNN, "--calib", CNN_DATA, "--calib-samples", "16", "-q")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split()[:5] == ["group", "kind", "nodes", "units", "err@0.1"]
    assert "skipped because" in out and "graph input" in out
    report = tmp_path / "sens.md"
    code, out, err = cli("sensitivity", CNN, "--calib", CNN_DATA, "--calib-samples", "16", "--ratios", "0.5",
                         "--json", "--report", report)
    assert code == 0, err
    data = json.loads(out)
    assert data["ratios"] == [0.5] and data["samples"] == 16
    assert [g["id"] for g in data["groups"]] and all(g["results"][0]["rel_mse"] > 0 for g in data["groups"])
    assert all(s["reason"] for s in data["skipped"])
    assert report.read_text().startswith("# onnxsparse sensitivity")


def test_cli_heads_on_the_transformer() -> None:
    code, out, err = cli("sensitivity", BERT, "--calib", "random", "--calib-samples", "4", "--heads",
                         "--ratios", "0.25,0.5", *BERT_SHAPE_ARGS, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {g["kind"] for g in data["groups"]} == {"head"}


@pytest.mark.parametrize("ratios", ["0.1,x", "1.5", "0", ",", "0.2,-1"])
def test_cli_bad_ratios_exit_2_with_one_line(ratios: str) -> None:
    code, out, err = cli("sensitivity", CNN, "--calib", CNN_DATA, "--ratios", ratios)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxsparse: error: --ratios: bad --ratios"), err


@pytest.mark.parametrize("argv, message", [
    (("--calib", "no/such.npz"), "data not found"),
    (("--calib", "random", "--report", "r.txt"), "unknown report format"),
    (("--calib", "random", "--heads"), "no attention head group"),
])
def test_cli_errors_are_one_line(argv, message, tmp_path: Path) -> None:
    code, _, err = cli("sensitivity", CNN, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err


def test_cli_bad_model_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    for model in (bad, tmp_path / "missing.onnx"):
        code, _, err = cli("sensitivity", model, "--calib", "random")
        assert code == 2 and len(err.strip().splitlines()) == 1, err


def _hostile_cases():
    from test_cli_errors import INPUT_CASES

    return INPUT_CASES


@pytest.mark.parametrize("case", _hostile_cases())
def test_cli_hostile_inputs_are_one_line_and_write_nothing(case: str, tmp_path: Path) -> None:
    """The cases tests/test_cli_errors.py runs for every command, for this one."""
    from test_cli_errors import _assert_one_line_error, _make_input, _snapshot

    folder = tmp_path / "work"
    folder.mkdir()
    model = _make_input(case, folder)
    before = _snapshot(tmp_path)
    code, out, err = cli("sensitivity", model, "--calib", "random")
    _assert_one_line_error(code, out, err)
    assert _snapshot(tmp_path) == before


def test_kv_groups_of_grouped_query_attention_equal_real_pruning() -> None:
    from onnxsparse.calibration.data import load_data

    path = sample("hf_llama_sdpa_dynamo")
    shapes = {"input_ids": (1, 16), "attention_mask": (1, 16)}
    report = sensitivity(path, "random", ratios=(0.25, 0.5), samples=8, shapes=shapes)
    kv = [g for g in report.groups if g.kind == "kv_group"]
    assert len(kv) == 2 and all(g.units == 2 for g in kv)
    assert all(g.at(0.25).units_removed == 0 and g.at(0.5).units_removed == 1 for g in kv)
    model, _ = prepare(path)
    feeds = load_data("random", model, shapes=shapes, samples=8, seed=0).arrays
    for g in kv:
        r = g.at(0.5)
        rel, _, before, after = _pruned_error(path, g.id, r.removed, feeds)
        assert rel == pytest.approx(r.rel_mse, rel=1e-2), g.id
        assert r.macs_saved == before - after, g.id


def test_fixed_batch_model_runs_at_its_batch_size(tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(CNN)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].ClearField("dim_param")
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, fixed)
    report = sensitivity(fixed, CNN_DATA, ratios=(0.5,), samples=5)
    dynamic = sensitivity(CNN, CNN_DATA, ratios=(0.5,), samples=5)
    assert report.samples == 5
    for a, b in zip(report.groups, dynamic.groups, strict=True):
        assert a.id == b.id and a.at(0.5).rel_mse == pytest.approx(b.at(0.5).rel_mse, rel=1e-4)


def test_data_driven_criterion() -> None:
    report = sensitivity(CNN, CNN_DATA, ratios=(0.25,), samples=16, criterion="wanda")
    assert report.criterion == "wanda" and len(report.groups) == 3
    assert all(g.criterion == "wanda" and g.at(0.25).rel_mse > 0 for g in report.groups)


def test_block_errors_equal_real_removal_and_macs_are_the_branch() -> None:
    """Each block's error is the error of ``remove_blocks`` on the analysed model; its MACs saved are the
    MACs the removal takes out of the model; the CLI lists blocks in the table and the JSON."""
    from onnxsparse.analysis import count_macs
    from onnxsparse.calibration.data import load_data
    from onnxsparse.passes.blocks import remove_blocks

    report = sensitivity(BERT, "random", ratios=(0.5,), samples=8, shapes=BERT_SHAPES)
    assert [b.id for b in sorted(report.blocks, key=lambda b: b.id)] == [0, 1, 2, 3] and not report.skipped_blocks
    model, _ = prepare(BERT)
    feeds = load_data("random", model, shapes=BERT_SHAPES, samples=8, seed=0).arrays
    names = [o.name for o in model.graph.outputs]
    reference = session(model).run(names, feeds)
    before = count_macs(model, BERT_SHAPES)
    for b in report.blocks:
        removed, _ = prepare(BERT)
        remove_blocks(removed, [b.id])
        rel, cos, _ = output_errors(reference, session(removed).run(names, feeds), names)
        assert rel == pytest.approx(b.rel_mse, rel=1e-3) and cos == pytest.approx(b.cosine, abs=1e-6), b.id
        assert b.rel_mse > 0 and b.kind == "block"
        assert b.macs_saved == before - count_macs(removed, BERT_SHAPES), b.id
    assert report.sessions == 4 + 4  # 2 head + 2 neuron groups at 0.5, 4 blocks
    data = report.to_dict()
    assert [b["rel_mse"] for b in data["blocks"]] == sorted(b["rel_mse"] for b in data["blocks"])
    code, out, err = cli("sensitivity", BERT, "--calib", "random", "--calib-samples", "4", "--ratios", "0.5",
                         *BERT_SHAPE_ARGS, "--workers", "1")
    assert code == 0, err
    assert "residual blocks removed whole" in out and out.count(" block ") == 4
    code, out, err = cli("sensitivity", BERT, "--calib", "random", "--calib-samples", "4", "--ratios", "0.5",
                         *BERT_SHAPE_ARGS, "--workers", "1", "--no-blocks", "--json")
    assert code == 0 and json.loads(out)["blocks"] == []


def test_declined_blocks_are_listed_with_their_reason() -> None:
    path = sample("real_torch_resnet18_dynamo")
    report = sensitivity(path, "random", ratios=(0.5,), samples=2, kinds=("block",))
    assert not report.groups and len(report.blocks) == 5 and len(report.skipped_blocks) == 3
    assert all(s.reason.endswith("not asked for (kinds: block)") for s in report.skipped if s.id is not None
               and "graph" not in s.reason)
    assert all("projection/downsample" in b.reason for b in report.skipped_blocks)
    assert "not removable because" in report.table()


def test_repaired_table_predicts_the_repaired_model():
    """With ``repair="lstsq"`` each (group, ratio) is measured after the consumers are re-fitted, as prune
    repairs them: on the trained CNN the error falls well below the masked error at every entry, and the
    repaired candidate computes what the same plan gives through reconstruct (one-shot) + apply_plan."""
    from onnxsparse.calibration.data import load_data
    from onnxsparse.graph import PrunePlan, apply_plan
    from onnxsparse.passes.reconstruct import reconstruct
    from onnxsparse.passes.sensitivity import _Evaluator, prepare

    calib = DATA / "digits_calib.npz"
    plain = sensitivity(sample("digits_cnn"), calib, ratios=(0.25, 0.5), samples=64, blocks=False)
    fixed = sensitivity(sample("digits_cnn"), calib, ratios=(0.25, 0.5), samples=64, blocks=False, repair="lstsq")
    pairs = [(a, b) for ga, gb in zip(plain.groups, fixed.groups) for a, b in zip(ga.results, gb.results)]
    assert pairs and all(b.removed == a.removed for a, b in pairs)
    assert all(b.rel_mse < 0.5 * a.rel_mse for a, b in pairs), [(a.rel_mse, b.rel_mse) for a, b in pairs]

    model, dg = prepare(sample("digits_cnn"))
    source = load_data(calib, model).take(64)
    group = fixed.groups[0]
    plan = PrunePlan.create(dg, {group.id: list(group.results[-1].removed)})
    state = _Evaluator.from_prepared(model, dg, source, 32, 64, ["logits"], [], repair="lstsq", damp=0.01)
    candidate = state.repaired(plan)  # masked + repaired, no rewrite
    rec = reconstruct(dg, plan, source, mode="lstsq", sequential=False, damp=0.01, batch_size=32, measure=False)
    rec.write_weights(model)
    masks = plan.masks()
    apply_plan(plan)
    rec.write_biases(model, masks)
    x = {"input": source.arrays["input"]}
    np.testing.assert_allclose(session(candidate).run(None, x)[0], session(model).run(None, x)[0],
                               rtol=1e-4, atol=1e-5)
