"""The options framework: one dataclass gives the recipe keys, the command-line flags and the API keywords."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import pytest

from onnxsparse.errors import UsageError
from onnxsparse.options import Bad, Cli, Options, OptionsError, ParseContext, option
from onnxsparse.options import fields as F
from onnxsparse.options.cli import add_arguments, from_args, given, to_argv


@dataclass(frozen=True, kw_only=True)
class Toy(Options):
    kind: ClassVar[str] = "toy"

    fraction: float | None = option(None, parse=F.optional(F.ratio), help="fraction removed", kind="ratio")
    round_to: int | str = option("auto", parse=F.integer_or("auto", 1), help="multiple of N", kind="int")
    global_ranking: bool = option(False, key="global", parse=F.boolean, help="rank across groups", kind="bool")
    memory: bool = option(True, parse=F.boolean, help="measure memory", kind="bool")
    per_channel: bool | None = option(None, parse=F.optional(F.boolean), help="per channel", kind="bool")
    exclude: tuple[str, ...] = option((), parse=F.strings, help="names left alone", kind="list")
    ratios: tuple[tuple[str, float], ...] = option((), parse=F.ratio_map, help="per glob", kind="mapping",
                                                   cli=Cli(flag="--ratio", metavar="GLOB=R"))
    secret: int = option(3, parse=F.integer(0), help="API and recipe only", kind="int", cli=False)

    def check(self) -> None:
        if self.fraction is not None and self.global_ranking and self.fraction > 0.5:
            raise Bad("global ranking caps the fraction at 0.5", key="fraction")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]  # argparse exits; the test wants the message
        raise UsageError(message)


def _cli(argv: list[str]) -> Toy:
    parser = _Parser()
    add_arguments(parser, Toy)
    return from_args(Toy, parser.parse_args(argv))


def test_one_declaration_three_front_ends_agree() -> None:
    from_cli = _cli(["--exclude", "x", "y", "--global", "--no-memory",
                                                               "--round-to", "8", "--per-channel",
                                                               "--ratio", "a*=0.5", "--ratio", "b=0.25"])
    from_recipe = Toy.from_mapping({"exclude": ["x", "y"], "global": True, "memory": False, "round_to": 8,
                                    "per_channel": True, "ratios": {"a*": 0.5, "b": 0.25}}, ParseContext(), "r")
    from_api = Toy.from_kwargs({"exclude": ("x", "y"), "global_ranking": True, "memory": False, "round_to": 8,
                                "per_channel": True, "ratios": {"a*": 0.5, "b": 0.25}}, "toy()")
    assert from_cli == from_recipe == from_api
    assert from_cli.ratios == (("a*", 0.5), ("b", 0.25))
    assert _cli(to_argv(from_cli)) == from_cli


def test_defaults_live_in_the_dataclass_only() -> None:
    parser = _Parser()
    add_arguments(parser, Toy)
    args = parser.parse_args([])
    assert given(Toy, args) == set()
    assert from_args(Toy, args) == Toy()
    assert Toy().round_to == "auto" and Toy().memory is True


def test_cli_errors_name_the_flag_and_the_range() -> None:
    with pytest.raises(UsageError, match=r"--ratio.*must be in \[0, 1\), got 1.5"):
        _cli(["--ratio", "x=1.5"])
    with pytest.raises(UsageError, match=r"argument --round-to.*must be >= 1"):
        _cli(["--round-to", "0"])
    with pytest.raises(UsageError, match=r"--ratio.*expected KEY=VALUE"):
        _cli(["--ratio", "0.3"])


def test_cross_key_check_runs_for_every_front_end() -> None:
    parser = _Parser()
    add_arguments(parser, Toy)
    with pytest.raises(UsageError, match="--fraction: global ranking caps"):
        from_args(Toy, parser.parse_args(["--fraction", "0.7", "--global"]))
    with pytest.raises(OptionsError, match=r"toy\(\)\.fraction: global ranking caps"):
        Toy.from_kwargs({"fraction": 0.7, "global_ranking": True}, "toy()")


def test_recipe_only_fields_stay_off_the_command_line() -> None:
    parser = _Parser()
    add_arguments(parser, Toy)
    with pytest.raises(UsageError, match="unrecognized arguments"):
        parser.parse_args(["--secret", "4"])
    assert Toy.from_kwargs({"secret": 4}, "toy()").secret == 4
    with pytest.raises(OptionsError, match=r"toy\(\)\.secret: must be >= 0"):
        Toy.from_kwargs({"secret": -1}, "toy()")
    with pytest.raises(OptionsError, match="unknown key.*did you mean 'secret'"):
        Toy.from_kwargs({"secrets": 1}, "toy()")
