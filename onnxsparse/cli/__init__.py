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
from .. import limits
from ..errors import OnnxSparseError

__all__ = ["main", "build_parser", "COMMANDS", "SUMMARIES"]

#: Subcommands in the order ``--help`` lists them (module names in this package).
COMMANDS: tuple[str, ...] = (
    "inspect",
    "prune",
    "sensitivity",
    "sparsify",
    "densify",
    "quantize",
    "validate",
    "bench",
    "run",
)


#: One line per subcommand for the command list; kept here so ``--help`` and the commands not being
#: run need no imports of their modules (some pull in onnx_ir or onnxruntime.quantization).
SUMMARIES: dict[str, str] = {
    "inspect": "show params, MACs, size, ops and sparsity of a model",
    "prune": "remove channels/filters: a smaller dense model that is faster on any runtime",
    "sensitivity": "per-group output error and MACs saved when each group alone is pruned at a few ratios",
    "sparsify": "zero weights (unstructured, N:M, block) and store them as CSR/BSR/bitmask/delta/COO",
    "densify": "turn sparse-stored tensors (onnxsparse formats, ONNX COO) back into a plain dense model",
    "quantize": "quantize weights (and activations) with onnxruntime, keeping pruned zeros exact",
    "validate": "compare a candidate with its reference: fidelity, accuracy, latency",
    "bench": "latency/throughput/memory of models across providers, threads, batches",
    "run": "run a recipe: prune -> quantize -> sparsify -> validate in one pipeline",
}


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--max-memory", metavar="SIZE", default=argparse.SUPPRESS,
                        help="largest tensor or data array to allocate, e.g. 4G (default: half the available RAM)")
    return common


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser.  ``only``: build just that command's options and list the others by
    summary (what :func:`main` does, for a fast start); ``None`` builds every command."""
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="onnxsparse",
        description="Make exported ONNX models smaller and faster: inspect, prune, sparsify, quantize, validate.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"onnxsparse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            if name in SUMMARIES:
                sub.add_parser(name, help=SUMMARIES[name], add_help=False)
            continue
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
    command = next((a for a in argv if not a.startswith("-")), None)  # top-level options take no values
    parser = build_parser(only=command if command in COMMANDS else "")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with limits.max_memory(getattr(args, "max_memory", None)):
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
