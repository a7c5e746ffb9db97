"""Helpers the command modules share: progress on/off, and printing a result as JSON or text."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..report import dump_json

__all__ = ["progress_enabled", "print_result", "emit", "inputs", "add_report_force", "add_report_options"]

#: argparse destinations that name files a command reads: nothing it writes may land on them.
_INPUT_DESTS = ("model", "models", "reference", "candidate", "recipe", "calib", "data", "labels")


def progress_enabled(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr: only when not ``--quiet`` and stderr is a terminal."""
    return not args.quiet and sys.stderr.isatty()


def inputs(args: argparse.Namespace) -> tuple[str, ...]:
    """The paths on the command line that the command reads (see :mod:`onnxsparse.guard`)."""
    found: list[str] = []
    for dest in _INPUT_DESTS:
        value = getattr(args, dest, None)
        if isinstance(value, (list, tuple)):
            found += [str(v) for v in value]
        elif isinstance(value, str):
            found.append(value)
    return tuple(found)


def add_report_force(p: argparse.ArgumentParser) -> None:
    """``--force`` for commands whose only output is ``--report``."""
    p.add_argument("--force", action="store_true", help="overwrite --report files that exist")


def add_report_options(p: argparse.ArgumentParser) -> None:
    """``--report`` (repeatable, .json/.md/.html) and ``--force``: what validate and bench write."""
    p.add_argument("--report", action="append", default=[], metavar="FILE",
                   help="write a report: .json (stable keys), .md, or .html (charts); repeatable")
    add_report_force(p)


def print_result(args: argparse.Namespace, result: Any, render_text: Callable[[Any], str],
                 reports: Sequence[str | os.PathLike] = ()) -> None:
    """``result.to_dict()`` as JSON with ``--json``; else ``render_text(result)`` and, on stderr, the reports written."""
    if args.json:
        print(dump_json(result.to_dict()))
        return
    print(render_text(result))
    for path in reports:
        print(f"report written to {path}", file=sys.stderr)


def emit(args: argparse.Namespace, data: dict[str, Any], title: str, show_text: Callable[[], None]) -> None:
    """Write ``--report`` (obeying ``--force``), then print ``data`` as JSON with ``--json``, else ``show_text()``."""
    if args.report:
        from ..report import write_report

        write_report(args.report, data, title=title, force=args.force)
    if args.json:
        print(dump_json(data))
    else:
        show_text()
