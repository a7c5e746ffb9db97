"""Helpers the command modules share: progress on/off, and printing a result as JSON or text."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..report import dump_json

__all__ = ["progress_enabled", "print_result"]


def progress_enabled(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr: only when not ``--quiet`` and stderr is a terminal."""
    return not args.quiet and sys.stderr.isatty()


def print_result(args: argparse.Namespace, result: Any, render_text: Callable[[Any], str],
                 reports: Sequence[str | os.PathLike] = ()) -> None:
    """``result.to_dict()`` as JSON with ``--json``; else ``render_text(result)`` and, on stderr, the reports written."""
    if args.json:
        print(dump_json(result.to_dict()))
        return
    print(render_text(result))
    for path in reports:
        print(f"report written to {path}", file=sys.stderr)
