"""Recipes without running them: parsing, one-line validation errors, --set, presets, --dry-run."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_asserts import one_line_error
from helpers import DATA, ROOT, cli, sample
from onnx import TensorProto, helper, numpy_helper

from onnxsparse.recipe import (
    PRESETS,
    STEP_TYPES,
    DensifyStep,
    PruneStep,
    QuantizeStep,
    Recipe,
    RecipeError,
    SparsifyStep,
    ValidateStep,
    load_recipe,
    plan_recipe,
)

CALIB = DATA / "digits_calib.npz"
TEST = DATA / "digits_test.npz"
LABELS = DATA / "digits_test_labels.npy"
RECIPES = ROOT / "recipes"


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------- parsing


def test_yaml_recipe_parses_into_typed_frozen_steps(tmp_path):
    path = write(tmp_path, f"""
name: edge
description: test recipe
calib: {CALIB}
shape: {{input: [1, 1, 8, 8]}}
steps:
  - prune: {{channels: 0.3, criterion: l1, round_to: 8, global: true}}
  - quantize: {{mode: static, per_channel: false, exclude: fc}}
  - sparsify: {{pattern: 2:4, format: bitmask, block: 4x4}}
  - densify
  - validate: {{data: {TEST}, labels: {LABELS}, max_accuracy_drop: 0.02, min_cosine: 1e-3, providers: "cpu"}}
""")
    recipe = load_recipe(path)
    assert [type(s) for s in recipe.steps] == [PruneStep, QuantizeStep, SparsifyStep, DensifyStep, ValidateStep]
    prune, quant, sparse, _, val = recipe.steps
    assert (prune.channels, prune.criterion, prune.round_to, prune.global_ranking) == (0.3, "l1", 8, True)
    assert (quant.mode, quant.per_channel, quant.exclude) == ("static", False, ("fc",))
    assert (sparse.pattern, sparse.format, sparse.block) == ("2:4", "bitmask", (4, 4))  # "2:4" is not sexagesimal 124
    assert dict(val.gates) == {"max_accuracy_drop": 0.02, "min_cosine": 0.001}
    assert recipe.shapes == {"input": (1, 1, 8, 8)} and recipe.calib == str(CALIB)
    assert recipe.name == "edge" and recipe.source == str(path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prune.channels = 0.5  # type: ignore[misc]
    assert quant.symmetric is True and quant.mode == "static"  # the step is the quantize options
    assert sparse.resolved()[0].spec == "2:4"  # the step is the sparsify options


def test_quantize_step_defaults_mirror_quantize_config():
    """The step re-declares QuantizeConfig's fields (YAML key ``symmetric``): the defaults must not drift."""
    from onnxsparse.quantize import QuantizeConfig

    assert QuantizeStep() == QuantizeConfig()


def test_round_trip_and_json(tmp_path):
    recipe = load_recipe({
        "calib": str(CALIB),
        "steps": [{"prune": {"channels": 0.25, "exclude": ["a", "b*"]}},
                  {"quantize": {"mode": "int4", "block_size": 64}},
                  {"sparsify": {"sparsity": 0.5, "ratio": {"fc*": 0.9}, "decoder": {"bitmask": "gather"}}},
                  {"validate": {"min_cosine": 0.99, "memory": False}}],
    })
    for full in (False, True):
        again = load_recipe(recipe.to_dict(full=full))
        assert again.steps == recipe.steps and again.calib == recipe.calib
    path = write(tmp_path, json.dumps(recipe.to_dict()), "recipe.json")
    assert load_recipe(path).steps == recipe.steps
    assert recipe.steps[0].options() == {"channels": 0.25, "exclude": ["a", "b*"]}


def test_relative_paths_resolve_against_recipe_folder_then_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "calib.npz").write_bytes(CALIB.read_bytes())
    path = write(folder, "calib: calib.npz\nsteps: [{quantize: {mode: static}}]")
    monkeypatch.chdir(tmp_path)
    assert load_recipe(path).calib == str((folder / "calib.npz").resolve())
    (tmp_path / "cwd.npz").write_bytes(CALIB.read_bytes())
    path = write(folder, "calib: cwd.npz\nsteps: [{quantize: {mode: static}}]")
    assert load_recipe(path).calib == str((tmp_path / "cwd.npz").resolve())


# ----------------------------------------------------------------------------------- errors

ERRORS = [
    ("steps: [{prun: {channels: 0.3}}]", r"steps\.0\.prun: unknown step \(did you mean 'prune'\?\)"),
    ("steps: [{prune: {chanels: 0.3}}]", r"steps\.0\.prune\.chanels: unknown key \(did you mean 'channels'\?\)"),
    ("steps: [{prune: {channels: lots}}]", r"steps\.0\.prune\.channels: expected a fraction in \[0, 1\), got text 'lots'"),
    ("steps: [{prune: {channels: 1.5}}]", r"steps\.0\.prune\.channels: must be in \[0, 1\), got 1\.5"),
    ("steps: [{prune: {channels: 0.3, round_to: 2.5}}]", r"steps\.0\.prune\.round_to: expected an integer, got float 2\.5"),
    ("steps: [{prune: {channels: 0.3, global: 'yes please'}}]", r"steps\.0\.prune\.global: expected true or false"),
    ("steps: [{prune: {channels: 0.3, criterion: l3}}]", r"steps\.0\.prune\.criterion: unknown criterion 'l3' \(did you mean 'l[12]'\?\)"),
    ("steps: [{prune: {}}]", r"steps\.0\.prune: nothing to prune: set channels, heads or ffn"),
    ("steps: [{prune: {channels: 0.3}}, {quantize: {mode: statik}}]",
     r"steps\.1\.quantize\.mode: unknown quantization mode 'statik' \(did you mean 'static'\?\)"),
    ("steps: [{quantize: {mode: static}}]", r"steps\.0\.quantize\.calib: static quantization needs calibration data"),
    ("steps: [{quantize: {block_size: 48}}]", r"steps\.0\.quantize\.block_size: must be one of 16, 32, 64, 128, 256"),
    ("steps: [{quantize: {mode: dynamic, format: qdq}}]", r"steps\.0\.quantize: dynamic mode writes integer operators"),
    ("steps: [{sparsify: {format: csrr}}]", r"steps\.0\.sparsify\.format: unknown storage format 'csrr' \(did you mean 'csr'\?\)"),
    ("steps: [{sparsify: {sparsity: 0.8, pattern: '2:4'}}]", r"steps\.0\.sparsify: pattern 2:4 fixes the sparsity at 0\.5; drop sparsity"),
    ("steps: [{sparsify: {pattern: diagonal}}]", r"steps\.0\.sparsify\.pattern: unknown sparsity pattern 'diagonal'"),
    ("steps: [{quantize: {}}, {prune: {channels: 0.3}}]",
     r"steps\.1\.prune: cannot run after steps\.0\.quantize: pruning a quantized model is not supported"),
    ("steps: [{sparsify: {sparsity: 0.5}}, {prune: {channels: 0.3}}]",
     r"steps\.1\.prune: cannot run after steps\.0\.sparsify: pruning a sparse-stored model is not supported"),
    ("steps: [{prune: {channels: 0.3}}, {sparsify: {sparsity: 0.8}}, {quantize: {}}]",
     r"steps\.2\.quantize: cannot run after steps\.1\.sparsify: quantizing folds the sparse storage"),
    ("steps: [{quantize: {}}, {quantize: {mode: int4}}]", r"steps\.1\.quantize: cannot run after steps\.0\.quantize"),
    ("steps: [{validate: {min_cosine: 0.9}}, {prune: {channels: 0.3}}]", r"steps\.0\.validate: nothing to validate yet"),
    ("steps: [{prune: {channels: 0.3}}, {validate: {data: missing.npz}}]", r"steps\.1\.validate\.data: file not found: missing\.npz"),
    ("steps: [{prune: {channels: 0.3}}, {validate: {min_cosin: 0.9}}]",
     r"steps\.1\.validate\.min_cosin: unknown key \(did you mean 'min_cosine'\?\)"),
    ("steps: [{prune: {channels: 0.3}}, {validate: {max_accuracy_drop: 0.01}}]",
     r"steps\.1\.validate\.max_accuracy_drop: max_accuracy_drop needs labels"),
    ("steps: [{prune: {channels: 0.3}}, {validate: {providers: 'cpu,gpuu'}}]", r"steps\.1\.validate\.providers: unknown"),
    ("steps: [{prune: {channels: 0.3}}, {validate: {metric: top1}}]", r"steps\.1\.validate\.metric: metric needs labels"),  # the generated wording (--metric needs --labels)
    ("stepz: []", r"stepz: unknown key \(did you mean 'steps'\?\)"),
    ("steps: []", r"steps: a recipe needs a non-empty list of steps"),
    ("steps: [{prune: {channels: 0.3}, quantize: {}}]", r"steps\.0: a step is one mapping"),
    ("shape: {input: [1, 0, 8]}\nsteps: [{prune: {channels: 0.3}}]", r"shape: input: dims must be >= 1"),
    ("steps: [{prune: {channels: 0.3, channels: 0.5}}]", r"invalid YAML at line 1.*duplicate key 'channels'"),
    ("steps: [{prune: {channels: 0.3}", r"invalid YAML at line \d+, column \d+"),
]


@pytest.mark.parametrize("text,pattern", ERRORS, ids=[p.split(":")[0][:40] for _, p in ERRORS])
def test_validation_errors_are_one_line_exit_2(tmp_path, text, pattern):
    path = write(tmp_path, text)
    out = tmp_path / "out.onnx"
    line = one_line_error(*cli("run", path, sample("digits_cnn"), "-o", out))
    assert re.search(pattern, line), line
    assert str(path) in line or "--set" in line
    assert not out.exists()


def test_prune_calibration_keys_are_typed(tmp_path):
    """calib_samples is a declared prune key now (PruneOptions), checked like every other key."""
    line = one_line_error(*cli("run", write(tmp_path, "steps: [{prune: {channels: 0.3, calib_samples: many}}]"),
                               sample("digits_cnn"), "-o", tmp_path / "o.onnx"))
    assert "steps.0.prune.calib_samples: expected an integer" in line
    recipe = load_recipe({"calib": str(CALIB), "steps": [{"prune": {"channels": 0.3, "calib_samples": 16}}]})
    assert recipe.steps[0].calib_samples == 16 and recipe.steps[0].extra_kwargs() == {}


def test_data_that_does_not_fit_the_model_fails_before_work(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 1, 8, 8), np.float32))
    path = write(tmp_path, f"steps: [{{prune: {{channels: 0.3}}}}, {{validate: {{data: {bad}}}}}]")
    line = one_line_error(*cli("run", path, sample("digits_cnn"), "-o", tmp_path / "o.onnx"))
    assert "steps.1.validate.data:" in line and "no data for model input(s) ['input']" in line
    # random data for a model with a dynamic sequence axis needs a shape
    path = write(tmp_path, "steps: [{prune: {heads: 0.25}}, {validate: {min_cosine: 0.9}}]")
    line = one_line_error(*cli("run", path, sample("transformer_encoder"), "-o", tmp_path / "o.onnx"))
    assert "steps.1.validate.data:" in line and "set shape in the recipe ({input: NxNx64}) or --set shape.input=NxNx64" in line


def test_output_is_checked_before_work(tmp_path):
    recipe = write(tmp_path, "steps: [{prune: {channels: 0.3}}]")
    model = tmp_path / "model.onnx"
    model.write_bytes(sample("digits_cnn").read_bytes())
    line = one_line_error(*cli("run", recipe, model, "-o", model, "--force"))
    assert "refusing to overwrite the input model" in line
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"keep")
    line = one_line_error(*cli("run", recipe, model, "-o", existing))
    assert "already exists (use --force to overwrite)" in line and existing.read_bytes() == b"keep"
    assert "-o/--output is required" in one_line_error(*cli("run", recipe, model))
    assert "unknown report format" in one_line_error(*cli("run", recipe, model, "-o", tmp_path / "o.onnx",
                                                          "--report", tmp_path / "r.txt"))
    assert model.read_bytes() == sample("digits_cnn").read_bytes()


def _quantized_model(path: Path) -> Path:
    w = numpy_helper.from_array(np.arange(12, dtype=np.int8).reshape(4, 3), "w_q")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_q", "scale"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["y"])],
        "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w, scale])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_input_model_state_is_checked_against_the_steps(tmp_path):
    model = _quantized_model(tmp_path / "q.onnx")
    line = one_line_error(*cli("run", write(tmp_path, "steps: [{prune: {channels: 0.3}}]"), model, "--dry-run"))
    assert "steps.0.prune: pruning a quantized model is not supported, and the input model is quantized" in line
    line = one_line_error(*cli("run", write(tmp_path, "steps: [{quantize: {}}]"), model, "--dry-run"))
    assert "the model is already quantized" in line
    code, out, err = cli("run", write(tmp_path, "steps: [{sparsify: {}}]"), model, "--dry-run")
    assert code == 0, err


# ----------------------------------------------------------------------------------- overrides


def _plan(tmp_path: Path, text: str, *sets: str, model: str = "digits_cnn") -> dict:
    args = [a for s in sets for a in ("--set", s)]
    code, out, err = cli("run", write(tmp_path, text), sample(model), "--dry-run", "--json", *args)
    assert code == 0, err
    return json.loads(out)


BASE = f"""calib: {CALIB}
steps:
  - prune: {{channels: 0.3}}
  - quantize: {{mode: static}}
  - validate: {{min_cosine: 0.9}}
"""


def test_set_overrides_full_and_short_forms(tmp_path):
    plan = _plan(tmp_path, BASE, "steps.0.prune.channels=0.5", "quantize.calibrate=entropy",
                 "validate.min_cosine=null", "validate.max_size_ratio=0.4", "prune.exclude=[a, b]")
    prune, quant, val = (s["options"] for s in plan["steps"])
    assert prune["channels"] == 0.5 and prune["exclude"] == ["a", "b"]
    assert quant["calibrate"] == "entropy"
    assert val["max_size_ratio"] == 0.4 and "min_cosine" not in val
    plan = _plan(tmp_path, BASE, "shape.input=1x1x8x8", "name=renamed")
    assert plan["shape"] == {"input": [1, 1, 8, 8]} and plan["recipe"] == "renamed"


def test_set_paths_are_relative_to_cwd(tmp_path, monkeypatch):
    (tmp_path / "mine.npz").write_bytes(CALIB.read_bytes())
    sub = tmp_path / "recipes"
    sub.mkdir()
    recipe = write(sub, BASE)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("run", recipe, sample("digits_cnn"), "--dry-run", "--json", "--set", "calib=mine.npz")
    assert code == 0, err
    assert json.loads(out)["calib"] == str((tmp_path / "mine.npz").resolve())


@pytest.mark.parametrize("item,pattern", [
    ("prune.chanels=0.5", r"--set prune\.chanels=0\.5: prune has no key 'chanels' \(did you mean 'channels'\?\)"),
    ("steps.1.prune.channels=0.5", r"steps\.1 is a quantize step, not prune"),
    ("steps.7.prune.channels=0.5", r"no step 7 \(the recipe has 3, counted from 0\)"),
    ("sparsify.sparsity=0.5", r"the recipe has no sparsify step"),
    ("prun.channels=0.5", r"unknown key 'prun\.channels' \(did you mean 'prune'\?\)"),
    ("prune.channels", r"expected KEY=VALUE"),
    ("prune.channels=2", r"steps\.0\.prune\.channels: must be in \[0, 1\), got 2"),
])
def test_set_errors(tmp_path, item, pattern):
    line = one_line_error(*cli("run", write(tmp_path, BASE), sample("digits_cnn"), "--dry-run", "--set", item))
    assert re.search(pattern, line), line


def test_set_short_form_refuses_ambiguity(tmp_path):
    text = "steps: [{prune: {heads: 0.25}}, {prune: {channels: 0.3}}]"
    line = one_line_error(*cli("run", write(tmp_path, text), sample("digits_cnn"), "--dry-run",
                               "--set", "prune.channels=0.5"))
    assert "2 prune steps (steps.0, steps.1)" in line and "steps.0.prune.channels=" in line
    plan = _plan(tmp_path, text, "steps.1.prune.channels=0.5")
    assert plan["steps"][1]["options"]["channels"] == 0.5


# ----------------------------------------------------------------------------------- dry run


def test_dry_run_prints_the_validated_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "out.onnx"
    code, text, err = cli("run", write(tmp_path, BASE), sample("digits_cnn"), "-o", out, "--dry-run")
    assert code == 0, err
    assert "Plan" in text and "0  prune     channels=0.3" in text and "1  quantize  mode=static" in text
    assert "dry run: the recipe is valid; nothing was run or written" in text
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
    plan = _plan(tmp_path, BASE)
    assert plan["schema"] == "onnxsparse.run.plan/1"
    assert [s["step"] for s in plan["steps"]] == ["prune", "quantize", "validate"]
    assert plan["steps"][0]["options"]["criterion"] is None  # full options, defaults included (None: l2, wanda with data)
    assert plan["steps"][1]["resolved"]["format"] == "qdq"  # what this CPU gets
    assert plan["input_stats"]["params"] == 14378 and plan["mac_dims"] == {"batch": 1}


def test_notes_for_orders_that_work_but_gain_little(tmp_path):
    plan = _plan(tmp_path, "steps: [{prune: {channels: 0.3}}, {quantize: {mode: int4}}, {sparsify: {sparsity: 0.5}}]")
    notes = " ".join(plan["notes"])
    assert "int4 weights are packed nibbles" in notes and "no validate step" in notes
    plan = _plan(tmp_path, "steps: [{prune: {ffn: 0.25}}, {prune: {channels: 0.3}}, {validate: {min_cosine: 0.5}}]")
    assert plan["notes"] == ["steps.1.prune: FFN neurons follow channels unless ffn is set, so this step prunes the "
                             "FFNs an earlier ffn step already pruned; set ffn: 0 to leave them"]


# ----------------------------------------------------------------------------------- presets


def test_presets_resolve_to_the_same_dataclasses(tmp_path):
    for name, preset in PRESETS.items():
        overrides = [f"calib={CALIB}"] if name == "cnn-edge" else []
        recipe = load_recipe(f"preset:{name}", overrides=overrides)
        assert isinstance(recipe, Recipe) and recipe.name == name and recipe.source == f"preset:{name}"
        assert all(type(s) in STEP_TYPES.values() for s in recipe.steps)
        assert recipe.steps == load_recipe(preset.data(), overrides=overrides).steps
        assert isinstance(recipe.steps[-1], ValidateStep) and recipe.steps[-1].gates
    with pytest.raises(RecipeError, match=r"static quantization needs calibration data"):
        load_recipe("preset:cnn-edge")
    with pytest.raises(RecipeError, match=r"unknown preset 'cnn-egde' \(did you mean 'cnn-edge'\?\)"):
        load_recipe("preset:cnn-egde")
    with pytest.raises(RecipeError, match=r"recipe not found: cnn-edge \(did you mean preset:cnn-edge\?\)"):
        load_recipe("cnn-edge")


def test_help_lists_presets_and_step_keys_from_the_registries():
    code, out, _ = cli("run", "--help")
    assert code == 0
    for name, preset in PRESETS.items():
        assert f"  {name}\n" in out
    flat = " ".join(out.split())
    for kind, cls in STEP_TYPES.items():
        assert f"{kind}: {cls.help}" in flat
        for key in cls.keys():
            assert key in flat


def test_example_recipes_load_and_match_their_presets(tmp_path):
    files = sorted(RECIPES.glob("*.yaml"))
    assert {f.stem for f in files} >= set(PRESETS)
    for path in files:
        recipe = load_recipe(path)
        assert recipe.name == path.stem and recipe.description
        assert isinstance(recipe.steps[-1], ValidateStep) and recipe.steps[-1].gates
        if path.stem in PRESETS:
            preset = load_recipe(f"preset:{path.stem}", overrides=[f"calib={CALIB}"] if path.stem == "cnn-edge" else [])
            assert [s.kind for s in recipe.steps] == [s.kind for s in preset.steps]
            for mine, theirs in zip(recipe.steps, preset.steps):
                if isinstance(mine, (QuantizeStep, SparsifyStep)):
                    assert (mine.kind, getattr(mine, "mode", None)) == (theirs.kind, getattr(theirs, "mode", None))


def test_docs_mention_every_key_and_preset():
    docs = (ROOT / "docs" / "recipes.md").read_text()
    for kind, cls in STEP_TYPES.items():
        assert f"`{kind}`" in docs
        for spec in cls.field_specs():
            assert f"`{spec.key}`" in docs, f"docs/recipes.md does not document {kind}.{spec.key}"
    for name in PRESETS:
        assert f"preset:{name}" in docs


def test_plan_recipe_api_accepts_in_memory_models():
    plan = plan_recipe({"steps": [{"prune": {"channels": 0.3}}]}, onnx.load(sample("digits_cnn")))
    assert plan["model"] == "<in-memory model>" and plan["steps"][0]["options"]["channels"] == 0.3
