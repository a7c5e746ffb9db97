"""sparsify and densify through the command line, the API, the pass and a recipe: one options dataclass, one file."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from helpers import cli, sample

import onnxsparse
from onnxsparse.formats import save_model
from onnxsparse.io import load_model
from onnxsparse.options.cli import add_arguments, from_args, to_argv
from onnxsparse.options.sparsify import SparsifyOptions
from onnxsparse.options.densify import DensifyOptions
from onnxsparse.passes.densify import DensifyPass, densify
from onnxsparse.passes.sparsify import SparsifyConfig, SparsifyPass, SparsifyResult
from onnxsparse.recipe import run_recipe
from onnxsparse.recipe.config import STEP_TYPES, SparsifyStep

MODEL = sample("digits_transformer")
OPTIONS = {"sparsity": 0.5, "min_size": 1024, "exclude": ["*embed*"]}


def _pass_manager(path: Path, options: SparsifyOptions) -> bytes:
    model = load_model(MODEL)
    result = ir.passes.PassManager([SparsifyPass(options)])(model)
    assert result.modified
    save_model(result.model, path, source=MODEL)
    return path.read_bytes()


def test_cli_api_pass_and_recipe_write_the_same_bytes(tmp_path: Path) -> None:
    options = SparsifyOptions.from_kwargs(OPTIONS, "test")
    argv = to_argv(options)
    assert argv == ["--sparsity", "0.5", "--exclude", "*embed*", "--min-size", "1024"]
    code, _, err = cli("sparsify", str(MODEL), "-o", str(tmp_path / "cli.onnx"), "-q", *argv)
    assert code == 0, err

    model = load_model(MODEL)
    report = onnxsparse.sparsify(model, **OPTIONS)
    save_model(model, tmp_path / "api.onnx", source=MODEL)

    run_recipe({"steps": [{"sparsify": OPTIONS}]}, MODEL, tmp_path / "recipe.onnx")

    by_pass = _pass_manager(tmp_path / "pass.onnx", options)
    assert report.totals["pruned"] > 0 and abs(report.totals["sparsity"] - 0.5) < 0.01
    for name in ("cli", "api", "recipe"):
        assert (tmp_path / f"{name}.onnx").read_bytes() == by_pass, name


def test_the_pass_can_run_again_on_its_output() -> None:
    """PassManager(steps=3) finds its own zeros: the weights of one step (50% zero), not 0.5**3 kept."""
    options = SparsifyOptions(sparsity=0.5, min_size=1024)
    once, thrice = load_model(MODEL), load_model(MODEL)
    SparsifyPass(options)(once)
    last = SparsifyPass(options)
    ir.passes.PassManager([SparsifyPass(options), SparsifyPass(options), last])(thrice)
    assert last.report is not None and last.report.reencoded  # the third run re-encoded the second's storage
    assert abs(last.report.totals["sparsity"] - 0.5) < 0.01
    densify(once)
    densify(thrice)
    for name, value in once.graph.initializers.items():
        assert value.const_value is not None
        other = thrice.graph.initializers[name].const_value
        assert other is not None and np.array_equal(value.const_value.numpy(), other.numpy()), name


def test_the_pass_returns_its_report_and_refuses_bad_options() -> None:
    model = load_model(MODEL)
    result = SparsifyPass(SparsifyOptions(sparsity=0.5, min_size=1024))(model)
    assert isinstance(result, SparsifyResult) and result.report.totals["pruned"] > 0
    with pytest.raises(ir.passes.PreconditionError, match="fixes the sparsity"):
        SparsifyPass(SparsifyOptions(sparsity=0.3, pattern="2:4"))(load_model(MODEL))


def test_one_class_is_the_config_the_step_and_the_flags() -> None:
    assert SparsifyConfig is SparsifyOptions is SparsifyStep is STEP_TYPES["sparsify"]
    parser = argparse.ArgumentParser()
    add_arguments(parser, SparsifyOptions)
    flags = {a.option_strings[-1] for a in parser._actions if a.option_strings}
    for spec in SparsifyOptions.field_specs():
        expected = ("--no-" + spec.flag[2:]) if spec.default is True else spec.flag
        assert expected in flags, spec.key
        assert spec.flag == "--" + spec.key.replace("_", "-")  # recipe key = flag without dashes
    code, out, _ = cli("sparsify", "--help")
    assert code == 0
    for spec in SparsifyOptions.field_specs():
        assert (("--no-" + spec.flag[2:]) if spec.default is True else spec.flag) in out


def test_api_takes_the_recipe_keys_and_the_older_names() -> None:
    by_key = SparsifyOptions.from_kwargs({"global": True, "sparsity": 0.4, "ratio": {"fc*": 0.2},
                                          "decoder": {"bitmask": "gather"}, "target": None}, "sparsify()")
    by_attr = SparsifyOptions.from_kwargs({"global_scope": True, "sparsity": 0.4, "ratios": [("fc*", 0.2)],
                                           "decoders": {"bitmask": "gather"}}, "sparsify()")
    assert by_key == by_attr and by_key.ratios == (("fc*", 0.2),)
    parser = argparse.ArgumentParser()
    add_arguments(parser, SparsifyOptions)
    from_cli = from_args(SparsifyOptions, parser.parse_args(
        ["--global", "--sparsity", "0.4", "--ratio", "fc*=0.2", "--decoder", "bitmask=gather"]))
    assert from_cli == by_key
    assert SparsifyOptions.from_kwargs({"target_size": 0.3}, "x").target_size == 0.3
    assert SparsifyOptions.from_kwargs({"target": "size=0.3"}, "x").target_size == 0.3


@pytest.mark.parametrize("kwargs,message", [
    ({"sparsity": 1.5}, r"sparsify\(\)\.sparsity: must be in \[0, 1\), got 1.5"),
    ({"sparsty": 0.5}, r"sparsty: unknown key \(did you mean 'sparsity'\?\)"),
    ({"target": "bytes=0.3"}, r"target: expected size=R"),
    ({"global": True}, r"global needs sparsity"),
])
def test_api_errors_name_the_keyword(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(onnxsparse.errors.UsageError, match=message):
        onnxsparse.sparsify(load_model(MODEL), **kwargs)


def test_densify_through_every_front_end_writes_the_same_bytes(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.onnx"
    model = load_model(MODEL)
    onnxsparse.sparsify(model, **OPTIONS)
    save_model(model, sparse, source=MODEL)
    code, _, err = cli("densify", str(sparse), "-o", str(tmp_path / "cli.onnx"))
    assert code == 0, err
    model = load_model(sparse)
    assert len(onnxsparse.densify(model)) > 0
    save_model(model, tmp_path / "api.onnx", source=sparse)
    model = load_model(sparse)
    result = ir.passes.PassManager([DensifyPass(DensifyOptions())], steps=2)(model)  # the second run finds nothing
    assert isinstance(result.model, ir.Model)
    save_model(result.model, tmp_path / "pass.onnx", source=sparse)
    run_recipe({"steps": ["densify"]}, sparse, tmp_path / "recipe.onnx")
    expected = (tmp_path / "pass.onnx").read_bytes()
    for name in ("cli", "api", "recipe"):
        assert (tmp_path / f"{name}.onnx").read_bytes() == expected, name
    assert DensifyOptions.keys() == () and STEP_TYPES["densify"] is DensifyOptions
