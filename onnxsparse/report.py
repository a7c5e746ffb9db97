"""Small helpers every command uses to show results: tables, sizes, report files."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "format_table",
    "human_bytes",
    "human_count",
    "to_jsonable",
    "dump_json",
    "write_report",
    "atomic_write_text",
    "markdown_table",
    "REPORT_SUFFIXES",
    "check_report_paths",
]

#: File extensions every ``--report`` option accepts.
REPORT_SUFFIXES = (".json", ".md", ".markdown", ".html", ".htm")


def check_report_paths(paths: Sequence[str | os.PathLike] | None, *, force: bool = False,
                       protect: tuple[str | os.PathLike | None, ...] = ()) -> None:
    """Reject unknown report extensions, missing folders, existing files (without ``force``) and
    files the command reads (``protect`` and :mod:`onnxsparse.guard`'s) before a long run, not after it."""
    from .errors import UsageError

    for path in paths or []:
        suffix = Path(path).suffix.lower()
        if suffix not in REPORT_SUFFIXES:
            raise UsageError(f"unknown report format {suffix or '(none)'!r} for {path}: use .json, .md or .html")
        if not Path(path).resolve().parent.is_dir():
            raise UsageError(f"report folder does not exist: {Path(path).resolve().parent}")
        _check_writable(Path(path), force=force, protect=protect)


def _check_writable(path: Path, *, force: bool, protect: tuple[str | os.PathLike | None, ...] = ()) -> None:
    from . import guard
    from .errors import ModelSaveError

    try:
        guard.refuse_input(path, extra=guard.input_files(protect) if protect else (), role="report")
        if path.is_dir() or (path.exists() and not path.is_file()):
            raise ModelSaveError(f"report {path} exists and is not a regular file")
        if path.exists() and not force:
            raise ModelSaveError(f"report {path} already exists (use --force to overwrite)")
    except OSError as exc:
        raise ModelSaveError(f"cannot write {path}: {exc.strerror or exc}") from exc


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TB"  # pragma: no cover


def human_count(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A plain-text table with aligned columns (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = []
    if title:
        out.append(title)
    out.append(line(list(headers)))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in rows)
    return "\n".join(out)


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, dataclasses and paths into JSON types."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return str(obj)
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


def dump_json(data: Any) -> str:
    return json.dumps(to_jsonable(data), indent=2, sort_keys=False)


def atomic_write_text(path: str | os.PathLike, text: str, *, force: bool = False) -> None:
    """Write text through a temporary file and rename, so readers never see half a file.

    Never over a file the command reads (:mod:`onnxsparse.guard`); over an existing file only with
    ``force``.  An interrupted write leaves no temporary file.
    """
    from .errors import ModelSaveError, UsageError

    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    _check_writable(path, force=force)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # read-only folder, disk full, name too long
        raise ModelSaveError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _markdown_from_dict(title: str, data: Mapping[str, Any]) -> str:
    lines = [f"# {title}", ""]
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, (Mapping, list, tuple))]
    if scalars:
        lines.append(markdown_table(["key", "value"], scalars))
        lines.append("")
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            headers = list(dict.fromkeys(k for row in value for k in row))
            rows = [[_flat(row.get(h)) for h in headers] for row in value]
            lines += [f"## {key}", "", markdown_table(headers, rows), ""]
        elif isinstance(value, Mapping):
            lines += [f"## {key}", "", markdown_table(["key", "value"], [(k, _flat(v)) for k, v in value.items()]), ""]
        elif isinstance(value, (list, tuple)):
            lines += [f"## {key}", ""] + [f"- {_flat(v)}" for v in value] + [""]
    return "\n".join(lines)


def _flat(value: Any) -> str:
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(to_jsonable(value))
    return _cell(value)


def write_report(path: str | os.PathLike, data: Mapping[str, Any], title: str = "onnxsparse report", *,
                 force: bool = False, html_extra: str = "") -> Path:
    """Write ``data`` as JSON, Markdown or HTML, chosen by the file extension (over an existing file
    only with ``force``; ``html_extra``: markup, e.g. an SVG chart, placed before the text of an HTML report)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = dump_json(data) + "\n"
    elif suffix in (".md", ".markdown"):
        text = _markdown_from_dict(title, to_jsonable(data))
    elif suffix in (".html", ".htm"):
        body = _markdown_from_dict(title, to_jsonable(data))
        text = (
            "<!doctype html><html><head><meta charset='utf-8'><title>"
            + html.escape(title)
            + "</title></head><body>"
            + html_extra
            + "<pre>"
            + html.escape(body)
            + "</pre></body></html>\n"
        )
    else:
        from .errors import UsageError

        raise UsageError(f"unknown report format {path.suffix!r}: use .json, .md or .html")
    atomic_write_text(path, text, force=force)
    return path
