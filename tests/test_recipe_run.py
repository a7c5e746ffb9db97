"""Recipes end to end: digits CNN and transformer encoder, gate failures, failing steps, cleanup.

Gates are set from measurements (onnxruntime 1.31 CPU; see docs/recipes.md) with a margin:
digits CNN, 30% of channels repaired on digits_calib.npz + static int8: top-1 0.9917 -> 0.981,
cosine 0.97, size 0.33x.  The same pruning *without* data (no shared calib) gives top-1 ~0.2,
which is the gate-failure case below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import DATA, ROOT, cli, run, sample, session

from onnxsparse.recipe import EXECUTORS, RecipeError, StepError, load_recipe, run_recipe

CALIB = DATA / "digits_calib.npz"
TEST = DATA / "digits_test.npz"
LABELS = DATA / "digits_test_labels.npy"

#: keep validate quick: no memory probe, few timed runs
FAST = "memory: false, runs: 5, warmup: 1, session_repeats: 1"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def top1(model: Path) -> float:
    x = np.load(TEST)["input"]
    logits = run(session(model), {"input": x})[0]
    return float(np.mean(logits.argmax(axis=1) == np.load(LABELS)))


def ops(model: Path) -> set[str]:
    return {n.op_type for n in onnx.load(model).graph.node}


def test_digits_cnn_prune_quantize_validate(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "digits_edge.onnx"
    recipe = write(tmp_path, f"""
name: digits-edge
calib: {CALIB}
steps:
  - prune: {{channels: 0.3}}
  - quantize: {{mode: static}}
  - validate: {{data: {TEST}, labels: {LABELS}, max_accuracy_drop: 0.05, min_cosine: 0.9,
                max_size_ratio: 0.45, {FAST}}}
""")
    reports = [out_dir / "run.json", out_dir / "run.md", out_dir / "run.html"]
    code, text, err = cli("run", recipe, sample("digits_cnn"), "-o", out, *[a for r in reports for a in ("--report", r)])
    assert code == 0, err + text
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([out.name] + [r.name for r in reports])  # no leftovers

    lines = text.splitlines()
    assert lines[1].split() == ["step", "params", "MACs", "bytes", "time", "notes"]
    assert [line.split()[:2] for line in lines[3:6]] == [["input", "14.38K"], ["0", "prune"], ["1", "quantize"]]
    assert lines[-1] == f"PASSED: wrote {out}" or lines[-1].startswith("PASSED: wrote ")

    data = json.loads(reports[0].read_text())
    assert data["schema"] == "onnxsparse.run/1" and data["passed"] is True and data["output"] == str(out)
    prune, quant, val = data["steps"]
    assert [s["step"] for s in data["steps"]] == ["prune", "quantize", "validate"]
    # prune used the shared calib: scored and repaired on data
    assert prune["report"]["channels"]["groups_pruned"] >= 2
    assert prune["params"] < data["input_stats"]["params"] == 14378 and prune["macs"] < data["input_stats"]["macs"]
    assert quant["report"]["mode"] == "static" and quant["report"]["zeros"]["exact"] is True
    assert quant["params"] == prune["params"] and quant["bytes"] < prune["bytes"] < data["input_stats"]["bytes"]
    assert val["passed"] is True and data["validation"]["passed"] is True
    assert data["final_stats"]["bytes"] == out.stat().st_size  # the written file is the one measured last
    assert data["ratios"]["bytes"] == pytest.approx(out.stat().st_size / sample("digits_cnn").stat().st_size)

    # the written model is the validated one: same accuracy as the validate step measured
    metric = data["validation"]["providers"][0]["metrics"][0]
    assert metric["candidate"] == pytest.approx(top1(out), abs=1e-9)
    assert metric["reference"] - metric["candidate"] <= 0.05
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops(out)
    conv_out = [i.dims[0] for i in onnx.load(out).graph.initializer if len(i.dims) == 4]
    assert conv_out and max(conv_out) < 32  # channels really removed (original widths 16/32/32)

    md = reports[1].read_text()
    assert md.startswith("# onnxsparse run digits-edge: PASSED") and "## Step 2: validate" in md and "### " in md
    html = reports[2].read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html and "Step 2: validate" in html


def test_transformer_heads_ffn_dynamic(tmp_path):
    out = tmp_path / "encoder.onnx"
    recipe = write(tmp_path, f"""
shape: {{input: [1, 16, 64]}}
steps:
  - prune: {{heads: 0.25, ffn: 0.25}}
  - quantize: {{mode: dynamic}}
  - validate: {{min_cosine: 0.85, max_size_ratio: 0.35, {FAST}}}
""")
    code, text, err = cli("run", recipe, sample("transformer_encoder"), "-o", out, "--json")
    assert code == 0, err
    data = json.loads(text)
    heads = data["steps"][0]["report"]["heads"]
    assert [(b["heads_kept"], b["heads_total"]) for b in heads["attention"]] == [(3, 4), (3, 4)]
    assert [(b["kept"], b["total"]) for b in heads["ffn"]] == [(96, 128), (96, 128)]
    settings = data["steps"][0]["report"]["channels"]["settings"]  # one prune: channels 0, heads, ffn
    assert (settings["channels"], settings["heads"], settings["ffn"]) == (0.0, 0.25, 0.25)
    assert data["mac_dims"] == {}  # the shape fixed every dim
    assert data["steps"][0]["macs"] < data["input_stats"]["macs"]
    assert data["steps"][1]["report"]["mode"] == "dynamic"
    assert "MatMulInteger" in ops(out)
    fidelity = data["validation"]["providers"][0]["fidelity"][0]
    assert 0.85 <= fidelity["cosine"] < 0.999  # measured 0.91: heads and neurons really went
    x = np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32)
    assert run(session(out), {"input": x})[0].shape == (2, 5, 64)  # dynamic axes still work


def test_gate_failure_exits_1_and_writes_nothing(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "pruned.onnx"
    report = out_dir / "failed.json"
    # no shared calib: pruning is data-free, and top-1 collapses (measured 0.99 -> ~0.2)
    recipe = write(tmp_path, f"""
steps:
  - prune: {{channels: 0.3}}
  - validate: {{data: {TEST}, labels: {LABELS}, max_accuracy_drop: 0.05, {FAST}}}
""")
    code, text, err = cli("run", recipe, sample("digits_cnn"), "-o", out, "--report", report)
    assert code == 1, err
    assert not out.exists()
    assert sorted(p.name for p in out_dir.iterdir()) == [report.name]
    assert text.splitlines()[-1].startswith("FAILED at steps.1.validate: max_accuracy_drop ")
    assert text.splitlines()[-1].endswith("no output written")
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["failed_step"] == 1 and data["output"] is None
    check = next(c for c in data["validation"]["checks"] if c["name"] == "max_accuracy_drop")
    assert check["passed"] is False and check["observed"] > 0.3


def test_a_failing_step_names_it_and_leaves_nothing(tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.onnx"
    seen: list[list[str]] = []
    real_quantize = EXECUTORS["quantize"]

    def broken(step, ctx, index):
        seen.append(sorted(p.name for p in ctx.workdir.iterdir() if p.name != ".owner"))
        raise RuntimeError("boom")

    monkeypatch.setitem(EXECUTORS, "quantize", broken)
    recipe = write(tmp_path, "steps: [{prune: {channels: 0.3}}, {quantize: {mode: dynamic}}]")
    code, text, err = cli("run", recipe, sample("digits_cnn"), "-o", out)
    assert code == 1 and text == ""
    assert err.strip() == (f"onnxsparse: error: {recipe}: steps.1.quantize failed: RuntimeError: boom "
                           "(run with --debug for the traceback)")
    assert seen == [["00-prune.onnx"]]  # the intermediate existed while the run went on ...
    assert list(out_dir.iterdir()) == []  # ... and is gone, with no output

    with pytest.raises(StepError) as info:
        run_recipe(load_recipe(recipe), sample("digits_cnn"), out)
    assert (info.value.index, info.value.kind, info.value.exit_code) == (1, "quantize", 1)
    assert [s.kind for s in info.value.result.steps] == ["prune"] and info.value.result.failed_step == 1
    monkeypatch.setitem(EXECUTORS, "quantize", real_quantize)


def test_a_user_error_inside_a_step_exits_2(tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(5, np.int64))  # 5 labels for 360 samples: validate finds out when it runs
    out = tmp_path / "x.onnx"
    recipe = write(tmp_path, f"steps: [{{prune: {{channels: 0.1}}}}, {{validate: {{data: {TEST}, labels: {labels}, {FAST}}}}}]")
    code, text, err = cli("run", recipe, sample("digits_cnn"), "-o", out)
    assert code == 2 and not out.exists()
    assert err.startswith(f"onnxsparse: error: {recipe}: steps.1.validate failed: ") and len(err.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnxsparse")] == []


def test_sparsify_densify_and_in_memory_models(tmp_path):
    """Python API: sparse storage as a step, a sparse input that needs densify before pruning."""
    model = onnx.load(sample("digits_cnn"))
    sparse = run_recipe(
        {"steps": [{"sparsify": {"sparsity": 0.8, "min_size": 512}}, {"validate": {"max_size_ratio": 0.8,
                                                                                  "memory": False, "runs": 3}}]},
        model, tmp_path / "sparse.onnx")
    assert sparse.passed and sparse.input == "<in-memory model>"
    step = sparse.steps[0]
    assert step.report["totals"]["pruned"] >= 1 and step.stats.bytes < sparse.input_stats.bytes
    assert sparse.steps[1].validation.size_ratio < 0.8

    with pytest.raises(RecipeError, match=r"input model stores weights sparse .*; add a densify step before it"):
        run_recipe({"steps": [{"prune": {"channels": 0.3}}]}, tmp_path / "sparse.onnx", tmp_path / "p.onnx")
    result = run_recipe({"steps": [{"densify": {}}, {"prune": {"channels": 0.3}}]}, tmp_path / "sparse.onnx")
    assert result.passed and result.output is None and result.model is not None
    assert result.steps[0].notes[0].endswith("tensor(s) decoded to dense")
    assert result.steps[1].stats.params < result.steps[0].stats.params
    assert not (tmp_path / "p.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse.onnx"]


def test_wanda_sparsify_step_reads_the_recipes_calib(tmp_path):
    recipe = {"calib": str(DATA / "digits_calib_tokens.npz"),
              "steps": [{"sparsify": {"sparsity": 0.6, "criterion": "wanda", "min_size": 256}}]}
    result = run_recipe(recipe, sample("digits_transformer"), tmp_path / "w.onnx")
    assert result.passed
    report = result.steps[0].report
    assert report["config"]["criterion"] == "wanda" and report["totals"]["pruned"] >= 4
    assert any("activation statistics from 128 calibration samples" in n for n in report["notes"])
    with pytest.raises(RecipeError, match="criterion wanda needs calibration data"):
        run_recipe({"steps": [{"sparsify": {"sparsity": 0.6, "criterion": "wanda"}}]},
                   sample("digits_transformer"), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_sparse_2of4_example_recipe(tmp_path):
    """SparseGPT 2:4 on the trained transformer passes its own size and accuracy gates."""
    result = run_recipe(load_recipe(ROOT / "recipes" / "sparse-2of4.yaml"), sample("digits_transformer"),
                        tmp_path / "t24.onnx")
    assert result.passed and (tmp_path / "t24.onnx").exists()
    validation = result.steps[-1].validation
    assert validation.size_ratio < 0.75
    assert result.steps[0].report["totals"]["formats"] and result.steps[0].report["config"]["pattern"] == "2:4"


def test_each_step_runs_as_a_pass_with_its_refusals_as_preconditions(tmp_path):
    """A recipe is a sequence of StepPass (onnx_ir passes): in place except quantize, and a step refuses at
    run time the model states it refuses in the plan (here: prune on a sparse-stored model)."""
    import onnx_ir as ir

    from onnxsparse.io import load_model
    from onnxsparse.passes.sparsify import sparsify
    from onnxsparse.recipe.runner import RunContext, StepPass, StepRefused

    recipe = load_recipe(write(tmp_path, "steps: [{prune: {channels: 0.3}}, {quantize: {mode: dynamic}}]"))
    model = load_model(sample("digits_cnn"))
    ctx = RunContext(recipe, model, sample("digits_cnn"), sample("digits_cnn"), tmp_path, {}, False)
    prune_pass = StepPass(recipe.steps[0], ctx, 0)
    result = prune_pass(model)
    assert result.model is model and prune_pass.in_place and result.outcome.notes
    quantize_pass = StepPass(recipe.steps[1], ctx, 1)
    quantized = quantize_pass(model)
    assert quantized.model is not model and not quantize_pass.in_place  # onnxruntime writes a new model

    stored = load_model(sample("digits_cnn"))
    sparsify(stored, sparsity=0.5)
    with pytest.raises(StepRefused, match="sparse") as info:
        StepPass(recipe.steps[0], ctx, 0)(stored)
    assert isinstance(info.value, RecipeError) and isinstance(info.value, ir.passes.PreconditionError)
