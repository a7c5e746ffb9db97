"""The training hand-off: ``inspect --groups`` JSON (schema-valid on every sample), the group-lasso
example's penalty and proximal step over exactly those groups, and ``prune --threshold`` removing
exactly the units the proximal step zeroed, with outputs unchanged."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import onnx
import pytest
from helpers import ROOT, SAMPLES, cli, random_feeds, run
from onnx import TensorProto, helper, numpy_helper

from onnxsparse.cli.inspect_cmd import analyse_groups
from onnxsparse.graph.export_groups import groups_document
from onnxsparse.schemas import check, load_schema

sys.path.insert(0, str(ROOT / "examples"))
import group_lasso  # noqa: E402  (examples/group_lasso.py: must import without torch)

SCHEMA = load_schema("groups")


def _tiny_net(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->10, no bias) -> BN -> Relu -> Conv(10->12) -> Relu -> GAP -> Flatten -> Gemm(12->7) -> Relu
    -> Gemm(7->4): three prunable groups (10 channels, 12 channels, 7 neurons)."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int, scale: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("c1.w", 10, 3, 3, 3), init("bn.scale", 10), init("bn.bias", 10), init("bn.mean", 10, scale=0.1),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 10).astype(np.float32), "bn.var"),
        init("c2.w", 12, 10, 3, 3), init("c2.b", 12), init("fc1.w", 7, 12), init("fc1.b", 7),
        init("fc2.w", 4, 7), init("fc2.b", 4),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"], name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc1.w", "fc1.b"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "fc2.w", "fc2.b"], ["y"], transB=1, name="fc2"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _document(path) -> dict:
    analysis = analyse_groups(path)
    return groups_document(analysis.graph, model=str(path), in_file=set(analysis.in_file))


# ----------------------------------------------------------------------------- schema


def test_the_checker_reports_what_the_schema_forbids() -> None:
    good = {"format": "onnxsparse-groups", "version": 1, "model": "m.onnx", "groups": []}
    assert check(good, SCHEMA) == []
    bad = {**good, "version": 2, "extra": 1, "groups": [{"id": -1}]}
    errors = check(bad, SCHEMA)
    assert "$.version: expected 1, got 2" in errors
    assert "$: unexpected key 'extra'" in errors
    assert "$.groups[0]: missing 'kind'" in errors
    assert "$.groups[0].id: -1 is below the minimum 0" in errors
    with pytest.raises(ValueError, match="not supported"):
        check(1, {"type": "integer", "maximum": 3})


FAST_SAMPLES = sorted(p.stem for p in SAMPLES.glob("*.onnx") if p.stat().st_size < 3_000_000)


def test_groups_document_validates_on_every_sample_model() -> None:
    kinds: set[str] = set()
    maps: set[str] = set()
    analysed = 0
    for name in FAST_SAMPLES:
        path = SAMPLES / f"{name}.onnx"
        try:
            doc = _document(path)
        except Exception as exc:  # noqa: BLE001 - inspect reports such models as "not available"
            pytest.fail(f"{name}: analysis failed: {exc}")
        assert check(doc, SCHEMA) == [], name
        analysed += 1
        for g in doc["groups"]:
            kinds.add(g["kind"])
            for m in g["members"]:
                maps.add(m["map"]["type"])
                rows = np.asarray(m["indices"])
                assert rows.shape[0] == g["units"], (name, g["id"], m["initializer"])
                assert rows.size == 0 or rows.max() < m["shape"][m["axis"]]
    assert analysed == len(FAST_SAMPLES) >= 30
    # heads, KV groups and neurons are in the samples, and grouped-conv / flatten maps with them
    assert {"channel", "head", "kv_group", "neuron"} <= kinds
    assert {"identity", "block", "stride"} <= maps


def test_head_groups_cover_q_k_v_rows_and_o_columns() -> None:
    doc = _document(SAMPLES / "attn_bert_torchscript.onnx")
    heads = [g for g in doc["groups"] if g["kind"] == "head" and g["prunable"]]
    assert heads
    for g in heads:
        produce = [m for m in g["members"] if "produce" in m["roles"] and len(m["shape"]) == 2]
        consume = [m for m in g["members"] if "consume" in m["roles"] and len(m["shape"]) == 2]
        assert len(produce) >= 3 and consume  # Q, K, V weights and the output projection
        for m in produce + consume:
            assert m["map"]["type"] == "block"  # head h owns rows/columns h*D .. h*D+D-1
            assert len(m["indices"][0]) * g["units"] == m["shape"][m["axis"]]


def test_inspect_cli_writes_the_document_and_the_histogram(tmp_path) -> None:
    out = tmp_path / "groups.json"
    html = tmp_path / "report.html"
    code, text, err = cli("inspect", SAMPLES / "digits_cnn_bn.onnx", "--groups", out, "--report", html)
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert check(doc, SCHEMA) == [] and doc["format"] == "onnxsparse-groups"
    assert "l2 scores of 80 units" in text  # 16 + 32 + 32 channels of the prunable groups
    assert html.read_text().count("class='bar'") >= 1
    code, _, err = cli("inspect", SAMPLES / "digits_cnn_bn.onnx", "--groups", tmp_path / "g.txt")
    assert code == 2 and ".json" in err


# ----------------------------------------------------------------------------- group lasso (numpy)


def _direct_penalty(doc: dict, weights: dict[str, np.ndarray], lam: float) -> float:
    """The penalty written out unit by unit, slice by slice."""
    total = 0.0
    for g in doc["groups"]:
        if not g["prunable"]:
            continue
        for u in range(g["units"]):
            pieces = [np.take(weights[m["initializer"]], m["indices"][u], axis=m["axis"]).ravel()
                      for m in g["members"] if m["trainable"]]
            flat = np.concatenate(pieces).astype(np.float64)
            assert flat.size == g["weights_per_unit"]
            total += math.sqrt(flat.size) * float(np.linalg.norm(flat))
    return lam * total


def test_group_lasso_penalty_matches_a_direct_computation(tmp_path) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(_tiny_net(), path)
    (tmp_path / "groups.json").write_text(json.dumps(_document(path)))
    groups = group_lasso.load_groups(tmp_path / "groups.json")
    doc = json.loads((tmp_path / "groups.json").read_text())
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    assert [g["units"] for g in groups] == [10, 12, 7]
    # conv1's unit: its filter (27) + BN scale and shift (2) + conv2's input column (12 * 9); stats excluded
    assert groups[0]["weights_per_unit"] == 27 + 2 + 108
    got = group_lasso.penalty(groups, weights, 1e-3)
    assert got == pytest.approx(_direct_penalty(doc, weights, 1e-3), rel=1e-12) and got > 0
    # state-dict names differing from the ONNX names are matched by shape, in order
    renamed = {f"model.{k}": v for k, v in weights.items()}
    names = group_lasso.match_names(groups, renamed)
    assert names["c1.w"] == "model.c1.w" and names["fc1.w"] == "model.fc1.w"
    assert group_lasso.penalty(groups, renamed, 1e-3, names) == pytest.approx(got, rel=1e-12)


# ----------------------------------------------------------------------------- the way back


def test_prox_zeroed_units_are_exactly_what_prune_threshold_removes(tmp_path) -> None:
    """numpy 'training': units driven small, then one proximal step of the penalty zeroes exactly them
    (every trained member: filter, BN scale/shift, next layer's columns, biases). ``prune --threshold
    1e-8`` removes those units and no other, and the outputs do not change."""
    path = tmp_path / "tiny.onnx"
    model = _tiny_net(seed=1)
    onnx.save(model, path)
    groups_file = tmp_path / "groups.json"
    code, _, err = cli("inspect", path, "--groups", groups_file)
    assert code == 0, err
    groups = group_lasso.load_groups(groups_file)
    weights = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    dead = {0: [2, 5], 1: [0, 7, 11], 2: [3]}  # by group position: conv1 channels, conv2 channels, fc1 neurons
    for gi, units in dead.items():
        g = groups[gi]
        for m in (m for m in g["members"] if m["trainable"]):
            w = np.moveaxis(weights[m["initializer"]], m["axis"], 0)
            for u in units:
                w[m["indices"][u]] *= 1e-3
    norms = [group_lasso.unit_norms(g, weights) for g in groups]
    lam = max(float(n[dead[i]].max()) / math.sqrt(g["weights_per_unit"]) for i, (g, n) in enumerate(zip(groups, norms)))
    lam *= 1.01  # a cut just above every shrunken unit, far below the live ones
    group_lasso.prox(groups, weights, step=1.0, lam=lam)
    after = [group_lasso.unit_norms(g, weights) for g in groups]
    for i, n in enumerate(after):
        assert sorted(np.nonzero(n == 0)[0].tolist()) == dead[i]
        assert (np.delete(n, dead[i]) > 0.1).all()
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(weights[t.name], t.name))
    trained = tmp_path / "trained.onnx"
    onnx.save(model, trained)

    pruned = tmp_path / "pruned.onnx"
    code, out, err = cli("prune", trained, "-o", pruned, "--threshold", "1e-8", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["threshold"] == 1e-8
    kept = {g["root"]: (g["total"], g["kept"]) for g in report["groups"]}
    assert sorted(kept.values()) == sorted((g["units"], g["units"] - len(dead[i])) for i, g in enumerate(groups))
    shapes = {t.name: tuple(t.dims) for t in onnx.load(pruned).graph.initializer}
    assert shapes["c1.w"] == (8, 3, 3, 3) and shapes["c2.w"] == (9, 8, 3, 3)
    assert shapes["fc1.w"] == (6, 9) and shapes["fc2.w"] == (4, 6)
    feeds = random_feeds(trained, seed=3)
    (expected,), (got,) = run(trained, feeds), run(pruned, feeds)
    peak = float(np.abs(expected).max())
    assert peak > 0 and float(np.abs(got - expected).max()) <= 1e-5 * peak
