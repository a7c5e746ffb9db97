"""bench: the command's flags and the Python API read one options dataclass, sharing validate's run options."""

from __future__ import annotations

import argparse

import pytest
from helpers import cli, sample

from onnxsparse.errors import UsageError
from onnxsparse.options.bench import BenchOptions
from onnxsparse.options.cli import add_arguments, from_args, to_argv
from onnxsparse.options.run import RunOptions
from onnxsparse.options.validate import ValidateOptions
from onnxsparse.validate import bench

API = {"threads": "1,2", "batches": [1, 3], "runs": 2, "warmup": 0, "memory": False, "session_repeats": 1,
       "providers": "cpu", "samples": 4, "seed": 3, "shapes": {"x": (1, 8)}}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser, BenchOptions)
    return parser


def _flag(spec) -> str:
    return ("--no-" + spec.flag[2:]) if spec.default is True else spec.flag


def test_every_field_is_a_flag_in_help_and_cli_and_api_agree() -> None:
    flags = {a.option_strings[-1] for a in _parser()._actions if a.option_strings}
    specs = BenchOptions.field_specs()
    assert {s.key for s in specs} == {s.key for s in RunOptions.field_specs()} | {"threads", "batch"}
    for spec in specs:
        assert _flag(spec) in flags, spec.key
    code, out, _ = cli("bench", "--help")
    assert code == 0 and all(_flag(s) in out for s in specs)
    from_api = BenchOptions.from_kwargs(API, "bench()")
    assert from_api.threads == (1, 2) and from_api.batches == (1, 3) and from_api.shape_map() == {"x": (1, 8)}
    from_cli = from_args(BenchOptions, _parser().parse_args(to_argv(from_api)))
    assert from_cli == from_api
    typed = ["--threads", "1,2", "--batch", "1", "--batch", "3", "--runs", "2", "--warmup", "0", "--no-memory",
             "--session-repeats", "1", "--samples", "4", "--seed", "3", "--shape", "x=1x8"]
    assert from_args(BenchOptions, _parser().parse_args(typed)) == from_api
    assert BenchOptions() == from_args(BenchOptions, _parser().parse_args([]))
    assert BenchOptions().thread_list() == [None] and BenchOptions().batch_list() == [None]


def test_run_options_are_shared_with_validate_not_copied() -> None:
    validate = {s.key: s for s in ValidateOptions.field_specs()}
    for spec in RunOptions.field_specs():
        assert validate[spec.key] == spec  # the same declaration: help, parser, default, flag
        assert next(s for s in BenchOptions.field_specs() if s.key == spec.key) == spec


def test_the_api_takes_the_command_keywords_and_checks_them_the_same_way() -> None:
    result = bench([sample("digits_cnn")], threads="1", batches="1,2", runs=2, warmup=0, memory=False,
                   session_repeats=1)
    assert result.settings["threads"] == [1] and result.settings["batches"] == [1, 2]
    assert [(r.threads, r.batch) for r in result.rows] == [(1, 1), (1, 2)]
    again = bench([sample("digits_cnn")], BenchOptions(threads=(1,), batches=(1, 2), runs=2, warmup=0,
                                                       memory=False, session_repeats=1))
    assert again.settings == result.settings
    with pytest.raises(UsageError, match=r"^bench\(\)\.threads: values must be >= 1, got 0$"):
        bench([sample("digits_cnn")], threads=0)
    with pytest.raises(UsageError, match=r"^bench\(\)\.batch: expected integers like 1,2,4, got 'x'$"):
        bench([sample("digits_cnn")], batches="1,x")
    with pytest.raises(UsageError, match=r"bench\(\)\.thread: unknown key \(did you mean 'threads'\?\)"):
        bench([sample("digits_cnn")], thread=2)
    with pytest.raises(TypeError, match="not both"):
        bench([sample("digits_cnn")], BenchOptions(), runs=2)
