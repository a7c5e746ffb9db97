"""Command-line interface: one argparse parser, one module per subcommand.

Each command module exposes ``register(subparsers, common)`` which adds its
parser and sets ``func`` to a function ``run(args) -> int``.  This module holds
no graph logic: it parses, calls the library, prints, and turns user errors
into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import OnnxSparseError

__all__ = ["main", "build_parser", "COMMANDS"]

#: Subcommands in the order ``--help`` lists them (module names in this package).
COMMANDS: tuple[str, ...] = (
    "inspect",
    "prune",
    "sparsify",
    "densify",
    "quantize",
    "validate",
    "bench",
    "run",
)


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="onnxsparse",
        description="Make exported ONNX models smaller and faster: inspect, prune, sparsify, quantize, validate.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"onnxsparse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"{__name__}.{name}_cmd"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a real missing dependency: let it surface
                raise
            continue
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not debug:
        import warnings

        warnings.filterwarnings("ignore")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OnnxSparseError as exc:
        if debug:
            raise
        print(f"onnxsparse: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("onnxsparse: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        if debug:
            raise
        print(
            f"onnxsparse: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
