"""Command-line interface: one argparse parser, one module per subcommand.

Each command module exposes ``register(subparsers, common)`` which adds its
parser and sets ``func`` to a function ``run(args) -> int``.  This module holds
no graph logic: it parses, calls the library, prints, and turns user errors
into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import guard
from .._signals import Terminated, signals_as_exceptions, stopped
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


class _Parser(argparse.ArgumentParser):
    """A bad option is one line naming it and the problem, not argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"onnxsparse: error: {message} (see {self.prog} --help)\n")


#: OSError numbers that are the machine's or the user's doing (no room, no permission, a bad name),
#: reported in one line with exit 2 wherever they surface.
_USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                          errno.ENAMETOOLONG, errno.EFBIG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR})


def _common_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
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
    parser = _Parser(
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


def _command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The subcommand's parser (``parser`` itself when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; SIGINT/SIGTERM at any point exit 130/143 with one line (see :mod:`.._signals`)."""
    with signals_as_exceptions():
        try:
            with guard.command():  # the files this command reads are protected from its writes
                return _main(argv)
        except (KeyboardInterrupt, Terminated) as exc:
            return stopped(exc)


def _main(argv: Sequence[str] | None) -> int:
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
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the command in the "see --help" hint, as its own errors do
        _command_parser(parser, getattr(args, "command", None)).error(f"unrecognized arguments: {' '.join(extra)}")
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
    except OSError as exc:
        if debug or exc.errno not in _USER_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"onnxsparse: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        if debug:
            raise
        print(
            f"onnxsparse: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
