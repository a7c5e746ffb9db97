"""validate: the command's flags, the recipe step's keys and the pass read one options dataclass."""

from __future__ import annotations

import argparse
import json

import onnx_ir as ir
from helpers import cli, sample

from onnxsparse.io import load_model
from onnxsparse.options import ParseContext
from onnxsparse.options.cli import add_arguments, from_args, to_argv
from onnxsparse.options.validate import ValidateOptions
from onnxsparse.recipe.config import STEP_TYPES, ValidateStep
from onnxsparse.validate import THRESHOLDS, ValidatePass, ValidateResult

MODEL = sample("digits_cnn")
RECIPE = {"runs": 2, "warmup": 0, "memory": False, "session_repeats": 1, "providers": ["cpu"], "samples": 4,
          "min_cosine": 0.999, "max_size_ratio": 1.01, "output_map": {}}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser, ValidateOptions)
    return parser


def test_every_key_and_gate_is_a_flag_and_the_front_ends_agree() -> None:
    assert ValidateStep is ValidateOptions is STEP_TYPES["validate"]
    keys = {s.key for s in ValidateOptions.field_specs()}
    assert set(THRESHOLDS) <= keys  # a registered gate is a key and a flag
    flags = {a.option_strings[-1] for a in _parser()._actions if a.option_strings}
    for spec in ValidateOptions.field_specs():
        assert spec.flag == "--" + spec.key.replace("_", "-")
        assert (("--no-" + spec.flag[2:]) if spec.default is True else spec.flag) in flags, spec.key
    from_recipe = ValidateOptions.from_mapping(RECIPE, ParseContext(), "r")
    argv = to_argv(from_recipe)
    from_cli = from_args(ValidateOptions, _parser().parse_args(argv + ["--min-cosine", "0.999",
                                                                       "--max-size-ratio", "1.01"]))
    assert from_cli == from_recipe == ValidateOptions.from_kwargs(RECIPE, "validate()")
    assert dict(from_cli.gates) == {"min_cosine": 0.999, "max_size_ratio": 1.01}
    code, out, _ = cli("validate", "--help")
    assert code == 0 and all(
        (("--no-" + s.flag[2:]) if s.default is True else s.flag) in out for s in ValidateOptions.field_specs())


def test_the_pass_and_the_command_give_the_same_verdict() -> None:
    options = ValidateOptions.from_mapping(RECIPE, ParseContext(), "r")
    model = load_model(MODEL)
    before = ir.to_proto(model).SerializeToString()
    result = ir.passes.PassManager([ValidatePass(str(MODEL), options)])(model)
    assert not result.modified and ir.to_proto(result.model).SerializeToString() == before
    validation = ValidatePass(str(MODEL), options)(model)
    assert isinstance(validation, ValidateResult) and validation.validation.passed
    code, out, err = cli("validate", str(MODEL), str(MODEL), "--json", *to_argv(options),
                         "--min-cosine", "0.999", "--max-size-ratio", "1.01")
    assert code == 0, err
    data = json.loads(out)
    assert data["passed"] is True
    gates = {c["name"] for c in data["checks"]}
    assert gates == {c.name for c in validation.validation.checks} and {"min_cosine", "max_size_ratio"} <= gates
