"""quantize through the command line, the API, the pass and a recipe: one options dataclass, one file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import onnx_ir as ir
import pytest
from helpers import cli, sample


from onnxsparse.errors import UsageError
from onnxsparse.io import load_model, save_model
from onnxsparse.options import ParseContext
from onnxsparse.options.cli import add_arguments, from_args, to_argv
from onnxsparse.options.quantize import QuantizeOptions
from onnxsparse.quantize import QuantizeConfig, QuantizePass, QuantizeResult, quantize
from onnxsparse.recipe import run_recipe
from onnxsparse.recipe.config import STEP_TYPES, QuantizeStep

MODEL = sample("digits_transformer")
OPTIONS: dict[str, Any] = {"mode": "dynamic", "per_channel": False, "check": False}


def test_cli_api_pass_and_recipe_write_the_same_bytes(tmp_path: Path) -> None:
    options = QuantizeOptions.from_kwargs(OPTIONS, "test")
    argv = to_argv(options)
    assert argv == ["--no-per-channel", "--no-check"]
    code, _, err = cli("quantize", str(MODEL), "-o", str(tmp_path / "cli.onnx"), "-q", *argv)
    assert code == 0, err
    quantize(str(MODEL), tmp_path / "api.onnx", **OPTIONS)
    run_recipe({"steps": [{"quantize": OPTIONS}]}, MODEL, tmp_path / "recipe.onnx")
    result = ir.passes.PassManager([QuantizePass(options)])(load_model(MODEL))
    assert result.modified
    save_model(result.model, tmp_path / "pass.onnx", source=MODEL)
    expected = (tmp_path / "pass.onnx").read_bytes()
    assert b"MatMulInteger" in expected
    for name in ("cli", "api", "recipe"):
        assert (tmp_path / f"{name}.onnx").read_bytes() == expected, name


def test_the_pass_reports_and_refuses_a_quantized_model() -> None:
    by_pass = QuantizePass(QuantizeOptions.from_kwargs(OPTIONS, "test"))
    result = by_pass(load_model(MODEL))
    assert isinstance(result, QuantizeResult) and result.path is None
    assert result.report.zeros["exact"] and len(result.report.quantized) > 0
    with pytest.raises(ir.passes.PreconditionError, match="already quantized"):
        by_pass(result.model)  # PassManager(steps=2) stops here instead of quantizing twice


def test_one_name_everywhere() -> None:
    """The drift case of issue 14: ``symmetric`` is the recipe key, the API keyword and the flag."""
    assert QuantizeConfig is QuantizeOptions is QuantizeStep is STEP_TYPES["quantize"]
    parser = argparse.ArgumentParser()
    add_arguments(parser, QuantizeOptions)
    from_cli = from_args(QuantizeOptions, parser.parse_args(["--no-symmetric", "--mode", "int4", "--block-size", "64"]))
    by_api = QuantizeOptions.from_kwargs({"symmetric": False, "mode": "int4", "block_size": 64}, "quantize()")
    assert from_cli == by_api == QuantizeStep.from_mapping(
        {"symmetric": False, "mode": "int4", "block_size": 64}, ParseContext(), "r")
    flags = {a.option_strings[-1] for a in parser._actions if a.option_strings}
    for spec in QuantizeOptions.field_specs():
        assert spec.flag == "--" + spec.key.replace("_", "-")
        assert (("--no-" + spec.flag[2:]) if spec.default is True else spec.flag) in flags, spec.key
    with pytest.raises(UsageError, match="weight_symmetric: unknown key"):
        quantize(str(MODEL), weight_symmetric=False)
    code, out, _ = cli("quantize", "--help")
    assert code == 0 and all(
        (("--no-" + s.flag[2:]) if s.default is True else s.flag) in out for s in QuantizeOptions.field_specs())


def test_a_config_takes_only_the_data_keywords_beside_it() -> None:
    with pytest.raises(UsageError, match="either config"):
        quantize(str(MODEL), config=QuantizeConfig(), mode="int4")
    with pytest.raises(UsageError, match="max-node-error measures each node"):
        QuantizeConfig(max_node_error=0.1, check_fp32=False)
