"""Render validation/bench results for the terminal, and write them as JSON, Markdown or HTML."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..report import (
    REPORT_SUFFIXES,
    atomic_write_text,
    check_report_paths,
    dump_json,
    format_table,
    markdown_table,
)
from ._tables import Table, bench_tables, summary_line, validation_tables, verdict
from .bench import BenchResult
from .render_html import bench_html, validation_html
from .result import ValidationResult

__all__ = ["render_text", "render_markdown", "save_report", "write_rendered", "check_report_paths", "REPORT_SUFFIXES"]


def _tables(result: ValidationResult | BenchResult) -> list[Table]:
    return validation_tables(result) if isinstance(result, ValidationResult) else bench_tables(result)


def render_text(result: ValidationResult | BenchResult) -> str:
    """The terminal summary: tables, notes, and for validation the verdict line."""
    blocks = [format_table(t.headers, t.rows, title=t.title) for t in _tables(result)]
    if result.notes:
        blocks.append("Notes\n" + "\n".join(f"- {n}" for n in result.notes))
    if isinstance(result, ValidationResult):
        blocks.append(summary_line(result))
        blocks.append(verdict(result))
    return "\n\n".join(blocks)


def render_markdown(result: ValidationResult | BenchResult) -> str:
    if isinstance(result, ValidationResult):
        lines = [f"# onnxsparse validate: {'PASSED' if result.passed else 'FAILED'}", "",
                 summary_line(result), ""]
        if not result.passed:
            lines += [verdict(result), ""]
        lines += [f"Reference: `{result.reference.path}`  ", f"Candidate: `{result.candidate.path}`", ""]
    else:
        lines = ["# onnxsparse bench", ""]
    for table in _tables(result):
        lines += [f"## {table.title}", "", markdown_table(table.headers, table.rows), ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    env = result.environment
    lines += ["## Environment", "",
              f"onnxruntime {env['onnxruntime']} ({', '.join(env['available_providers'])}), "
              f"{env['cpu']} x{env['cpu_count']}, Python {env['python']}, {env['platform']}", ""]
    return "\n".join(lines)


def save_report(path: str | os.PathLike, result: ValidationResult | BenchResult, *, force: bool = False) -> Path:
    """Write ``result`` as .json (stable keys, see docs/validate.md), .md, or .html (with charts)."""
    html: Callable[[Any], str] = bench_html
    if isinstance(result, ValidationResult):
        html = validation_html
    return write_rendered(path, result, render_markdown, html, force=force)


def write_rendered(path: str | os.PathLike, result: Any, markdown: Callable[[Any], str],
                   html: Callable[[Any], str], *, force: bool = False) -> Path:
    """Write ``result`` by ``path``'s extension, atomically: .json is ``result.to_dict()`` (stable keys),
    .md/.markdown is ``markdown(result)``, anything else ``html(result)``; the path is checked first
    (an existing file is replaced only with ``force``)."""
    check_report_paths([path], force=force)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = dump_json(result.to_dict()) + "\n"
    elif suffix in (".md", ".markdown"):
        text = markdown(result)
    else:
        text = html(result)
    atomic_write_text(path, text, force=force)
    return path
