"""sensitivity through the CLI and run_sensitivity: one SensitivityOptions, the same table (issue 14)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from helpers import DATA, sample
from helpers import cli as _cli

from onnxsparse.options.cli import add_arguments, from_args, to_argv
from onnxsparse.options.sensitivity import SensitivityOptions
from onnxsparse.passes.sensitivity import DEFAULT_RATIOS, run_sensitivity

CNN = sample("digits_cnn")
CALIB = DATA / "digits_calib.npz"


def cli(*argv: object) -> tuple[int, str, str]:
    return _cli(*map(str, argv))


def _measured(report: dict[str, Any]) -> list[Any]:
    return [(g["id"], [(r["ratio"], r["rel_mse"]) for r in g["results"]]) for g in report["groups"]]


def test_cli_and_api_measure_the_same() -> None:
    code, out, err = cli("sensitivity", CNN, "--calib", CALIB, "--calib-samples", "8", "--ratios", "0.5",
                         "--no-blocks", "--no-cache", "--workers", "1", "--json", "-q")
    assert code == 0, err
    options = SensitivityOptions.from_kwargs({"calib": str(CALIB), "calib_samples": 8, "ratios": [0.5],
                                              "blocks": False, "use_cache": False, "workers": 1}, "sensitivity()")
    api = run_sensitivity(str(CNN), options).to_dict()
    assert _measured(json.loads(out)) == _measured(api) and api["groups"]


def test_flags_are_the_fields_and_round_trip() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, SensitivityOptions)
    options = from_args(SensitivityOptions, parser.parse_args(["--calib", "random", "--ratios", "0.2,0.4",
                                                               "--heads", "--no-blocks", "--no-cache"]))
    assert options.ratios == (0.2, 0.4) and options.heads and not options.blocks and not options.use_cache
    assert from_args(SensitivityOptions, parser.parse_args(["--calib", "random"])).ratios == DEFAULT_RATIOS
    assert from_args(SensitivityOptions, parser.parse_args(to_argv(options))) == options
    code, out, _ = cli("sensitivity", "--help")
    for spec in SensitivityOptions.field_specs():
        assert spec.cli is not None
        flag = (spec.cli.negative or "--no-" + spec.flag[2:]) if spec.default is True else spec.flag
        assert flag in out, spec.key


def test_missing_calib_and_contradictions_are_one_line() -> None:
    code, _, err = cli("sensitivity", CNN)
    assert code == 2 and "--calib: calibration data is required" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("sensitivity", CNN, "--calib", CALIB, "--no-cache", "--cache", "x")
    assert code == 2 and "--cache: --no-cache and --cache DIR contradict each other" in err
