"""The command-line frame: ``--help``/``--version``, every present subcommand documents itself."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from helpers import ROOT, cli, sample
from onnxsparse import __version__
from onnxsparse.cli import COMMANDS, build_parser


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onnxsparse", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def present(name: str) -> bool:
    return importlib.util.find_spec(f"onnxsparse.cli.{name}_cmd") is not None


PRESENT = [name for name in COMMANDS if present(name)]


def test_help_and_version_subprocess() -> None:
    res = run_module("--help")
    assert res.returncode == 0 and res.stderr == ""
    assert "usage: onnxsparse" in res.stdout
    for name in PRESENT:
        assert name in res.stdout
    res = run_module("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"onnxsparse {__version__}"


def test_no_command_prints_help_and_fails() -> None:
    code, out, _ = cli()
    assert code == 2 and "usage: onnxsparse" in out


def test_inspect_is_registered() -> None:
    assert "inspect" in PRESENT


@pytest.mark.parametrize("name", PRESENT)
def test_subcommand_help(name: str) -> None:
    code, out, err = cli(name, "--help")
    assert code == 0, err
    assert out.startswith(f"usage: onnxsparse {name}")
    # useful: a description sentence and the common options
    body = out.split("\n\n", 2)
    assert len(body) >= 2 and len(body[1].strip()) > 20, out
    for option in ("--json", "--debug", "--quiet"):
        assert option in out


def test_missing_command_modules_are_skipped(monkeypatch) -> None:
    """A command still being written (module absent) does not break the parser."""
    import onnxsparse.cli as cli_mod

    monkeypatch.setattr(cli_mod, "COMMANDS", cli_mod.COMMANDS + ("does_not_exist",))
    parser = cli_mod.build_parser()
    assert "inspect" in parser.format_help()


def test_inspect_subprocess_error_is_one_line() -> None:
    res = run_module("inspect", "no/such/model.onnx")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == ["onnxsparse: error: model file not found: no/such/model.onnx"]
    res = run_module("inspect", "no/such/model.onnx", "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_inspect_subprocess_runs() -> None:
    res = run_module("inspect", str(sample("resnet_mini")), "--dim", "batch=1")
    assert res.returncode == 0, res.stderr
    assert "params" in res.stdout and "MACs" in res.stdout


def test_build_parser_is_repeatable() -> None:
    assert build_parser().format_help() == build_parser().format_help()


def test_top_level_help_imports_no_command_module() -> None:
    """``onnxsparse --help`` lists the commands from their summaries: no onnx_ir, onnxruntime or scipy."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from onnxsparse.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('onnx_ir', 'onnxruntime', 'scipy', 'onnxsparse.cli.prune_cmd') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for name in COMMANDS:
        assert f"    {name}" in out
