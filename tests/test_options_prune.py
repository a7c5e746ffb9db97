"""Prune through the CLI, the API, a pass pipeline and a recipe: one PruneOptions, the same bytes (issue 14)."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

import onnx_ir as ir
import pytest
from helpers import DATA, sample
from helpers import cli as _cli
from helpers import cli_json as _cli_json

from onnxsparse.analysis import count_params
from onnxsparse.cli import prune_cmd
from onnxsparse.errors import UsageError
from onnxsparse.io import load_model, save_model
from onnxsparse.options.cli import add_arguments, from_args, to_argv
from onnxsparse.options.prune import PruneOptions
from onnxsparse.passes.prune import PrunePass, prune, run_prune
from onnxsparse.recipe.config import STEP_TYPES, PruneStep

TOKENS = DATA / "digits_calib_tokens.npz"
MODEL = sample("digits_transformer")
HEADS = ("--heads", "0.25", "--ffn", "0.25")


def cli(*argv: object) -> tuple[int, str, str]:
    return _cli(*map(str, argv))


def cli_json(*argv: object) -> dict[str, Any]:
    return _cli_json(*map(str, argv))


def _recipe(tmp_path: Path, step: str, calib: Path | None = None) -> Path:
    path = tmp_path / "recipe.yaml"
    top = f"calib: {calib}\n" if calib is not None else ""
    path.write_text(f"{top}steps:\n  - prune: {step}\n")
    return path


def _run_recipe(tmp_path: Path, step: str, calib: Path | None = None) -> bytes:
    out = tmp_path / "recipe.onnx"
    code, _, err = cli("run", _recipe(tmp_path, step, calib), MODEL, "-o", out, "-q")
    assert code == 0, err
    return out.read_bytes()


def test_heads_ffn_calib_byte_identical_through_cli_api_pass_and_recipe(tmp_path: Path) -> None:
    """``prune("m.onnx", heads=0.25, ffn=0.25, calib=...)`` == ``onnxsparse prune m.onnx --heads 0.25 --ffn 0.25
    --calib ...`` == PrunePass in a PassManager == a one-step recipe (criterion wanda, the default with data)."""
    cli_out = tmp_path / "cli.onnx"
    code, _, err = cli("prune", MODEL, "-o", cli_out, *HEADS, "--calib", TOKENS, "-q")
    assert code == 0, err

    api = prune(str(MODEL), heads=0.25, ffn=0.25, calib=str(TOKENS))
    assert api.modified and api.report.criterion == "wanda" and api.heads is not None
    api_out = save_model(api.model, tmp_path / "api.onnx", source=str(MODEL))

    model = load_model(MODEL)
    passed = ir.passes.PassManager([PrunePass(PruneOptions(heads=0.25, ffn=0.25, calib=str(TOKENS)))])(model)
    pass_out = save_model(passed.model, tmp_path / "pass.onnx", source=str(MODEL))

    # issue 14: this recipe failed with "give --calib DATA" while the command succeeded
    recipe = _run_recipe(tmp_path, "{heads: 0.25, ffn: 0.25, criterion: wanda}", calib=TOKENS)

    expected = cli_out.read_bytes()
    assert Path(api_out).read_bytes() == expected
    assert Path(pass_out).read_bytes() == expected
    assert recipe == expected
    assert expected != MODEL.read_bytes()


def test_with_calibration_data_every_front_end_defaults_to_the_same_criterion(tmp_path: Path) -> None:
    """issue 14: the CLI defaulted to wanda with data, prune() and the recipe step to l2."""
    calib = DATA / "digits_calib.npz"
    cli_out = tmp_path / "c.onnx"
    data = cli_json("prune", sample("digits_cnn"), "-o", cli_out, "--channels", "0.3", "--calib", calib, "-q")
    api = prune(str(sample("digits_cnn")), channels=0.3, calib=str(calib))
    assert PruneStep.from_kwargs({"channels": 0.3}, "recipe").criterion is None  # resolved once, in run_prune
    assert data["settings"]["criterion"] == api.report.criterion == "wanda"
    out = tmp_path / "recipe.onnx"
    code, _, err = cli("run", _recipe(tmp_path, "{channels: 0.3}", calib=calib), sample("digits_cnn"), "-o", out, "-q")
    assert code == 0, err
    assert out.read_bytes() == cli_out.read_bytes()
    assert prune(str(sample("digits_cnn")), channels=0.3).report.criterion == "l2"


def test_round_to_default_is_declared_once() -> None:
    """The flag, the recipe key and the keyword all read PruneOptions' field; nothing else declares it."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, PruneOptions)
    assert from_args(PruneOptions, parser.parse_args(["--channels", "0.3"])).round_to == "auto"
    assert PruneStep.from_kwargs({"channels": 0.3}, "r").round_to == "auto"
    for fn in (prune, run_prune, PrunePass.__init__):
        assert "round_to" not in inspect.signature(fn).parameters, fn
    source = inspect.getsource(prune_cmd)
    assert "--round-to" not in source and '"auto"' not in source


def test_pass_manager_steps_3_prunes_once() -> None:
    """A ratio is relative to the model it meets: three steps must not remove 0.3 three times."""
    once = prune(str(sample("digits_cnn")), channels=0.3, round_to=1).model
    model = load_model(sample("digits_cnn"))
    result = ir.passes.PassManager([PrunePass(channels=0.3, round_to=1)], steps=3)(model)
    assert result.modified
    assert count_params(result.model) == count_params(once) < count_params(load_model(sample("digits_cnn")))


def test_prune_pass_refuses_sparse_stored_models(tmp_path: Path) -> None:
    out = tmp_path / "sparse.onnx"
    code, _, err = cli("sparsify", sample("digits_cnn"), "-o", out, "--sparsity", "0.8", "-q")
    assert code == 0, err
    with pytest.raises(ir.passes.PreconditionError, match="sparse-stored model is not supported"):
        PrunePass(channels=0.3)(load_model(out))


def test_every_recipe_key_is_a_flag_and_help_lists_them() -> None:
    specs = PruneOptions.field_specs()
    assert all(s.cli is not None for s in specs)
    assert STEP_TYPES["prune"] is PruneOptions and PruneOptions.passthrough_keys() == ()
    code, out, _ = cli("prune", "--help")
    assert code == 0
    for spec in specs:
        assert spec.flag in out, spec.flag
    assert "--one-shot" in out


def test_api_keywords_are_the_options_and_checked_the_same() -> None:
    options = PruneOptions.from_kwargs({"channels": 0.3, "global_ranking": True, "round_to": 8,
                                        "exclude": ["a"], "sequential": False}, "prune()")
    parser = argparse.ArgumentParser()
    add_arguments(parser, PruneOptions)
    assert from_args(PruneOptions, parser.parse_args(to_argv(options))) == options
    assert "--one-shot" in to_argv(options)
    with pytest.raises(UsageError, match=r"prune\(\)\.channels: must be in \[0, 1\), got 1.5"):
        prune(str(sample("digits_cnn")), channels=1.5)
    with pytest.raises(UsageError, match=r"prune\(\)\.chanels: unknown key \(did you mean 'channels'\?\)"):
        prune(str(sample("digits_cnn")), chanels=0.3)
    with pytest.raises(UsageError, match="nothing to prune"):
        prune(str(sample("digits_cnn")))


def test_threshold_and_budget_cross_checks_name_the_flag(tmp_path: Path) -> None:
    code, _, err = cli("prune", sample("digits_cnn"), "-o", tmp_path / "x.onnx", "--channels", "0.3",
                       "--threshold", "0.1")
    assert code == 2 and "--threshold: --threshold replaces the ratios" in err
    code, _, err = cli("prune", sample("digits_cnn"), "-o", tmp_path / "x.onnx", "--max-accuracy-drop", "0.01")
    assert code == 2 and "needs labelled data: give --data DATA --labels LABELS" in err
    step = PruneStep.from_kwargs({"max_accuracy_drop": 0.01, "data": str(DATA / "digits_test.npz"),
                                  "labels": str(DATA / "digits_test_labels.npy")}, "r")
    with pytest.raises(UsageError, match=r"call onnxsparse\.passes\.budget\.run_budget"):
        run_prune(str(sample("digits_cnn")), step)
