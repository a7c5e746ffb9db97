"""How a run (or a dry-run plan) looks: terminal table, JSON, Markdown, HTML.

The validate step's section reuses ``onnxsparse.validate``'s own renderers (its Markdown, and
its HTML page with the latency and accuracy-vs-size charts), so a recipe report shows the same
thing ``onnxsparse validate --report`` would.
"""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path
from typing import Any

from ..report import format_table, human_bytes, human_count, markdown_table, to_jsonable
from .config import Recipe
from .runner import RecipeResult, Stats

__all__ = ["render_text", "render_plan", "render_markdown", "render_html", "write_run_report",
           "summary_rows", "SUMMARY_HEADERS"]

SUMMARY_HEADERS = ("step", "params", "MACs", "bytes", "time", "notes")


def _rel(path: str | os.PathLike | None) -> str:
    if path is None:
        return "-"
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("../../") else str(path)


def _value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _stat_cells(stats: Stats) -> list[str]:
    return [human_count(stats.params), human_count(stats.macs), human_bytes(stats.bytes)]


def summary_rows(result: RecipeResult) -> list[list[str]]:
    """One row for the input, then one per step that ran: step, params, MACs, bytes, time, notes."""
    rows = [["input", *_stat_cells(result.input_stats), "-", _rel(result.input)]]
    for step in result.steps:
        cells = _stat_cells(step.stats) if result.recipe.steps[step.index].transforms else ["-", "-", "-"]
        rows.append([f"{step.index} {step.kind}", *cells, f"{step.seconds:.2f}s", "; ".join(step.notes) or "-"])
    if result.failed_step is not None and result.failed_step >= len(result.steps):
        kind = result.recipe.steps[result.failed_step].kind
        rows.append([f"{result.failed_step} {kind}", "-", "-", "-", "-", "FAILED"])
    return rows


def _ratio_line(result: RecipeResult) -> str:
    ratios = result.ratios()
    parts = [f"{k} {v:.3f}x" for k, v in ratios.items() if v is not None]
    return f"input -> final: {', '.join(parts) or 'no sizes'} in {result.seconds:.1f} s"


def _verdict(result: RecipeResult) -> str:
    if result.passed:
        return f"PASSED: wrote {_rel(result.output)}" if result.output else "PASSED (no output requested)"
    return f"FAILED at {result.error}; no output written"


def render_text(result: RecipeResult) -> str:
    recipe = result.recipe
    title = f"onnxsparse run {recipe.name} ({_rel(recipe.source) if not recipe.source.startswith(('preset:', '<')) else recipe.source})"
    blocks = [format_table(list(SUMMARY_HEADERS), summary_rows(result), title=title), _ratio_line(result)]
    if result.mac_dims:
        blocks[-1] += "  (MACs with " + ", ".join(f"{k}={v}" for k, v in result.mac_dims.items()) + ")"
    if result.notes:
        blocks.append("\n".join(f"note: {n}" for n in result.notes))
    blocks.append(_verdict(result))
    return "\n".join(blocks)


# ------------------------------------------------------------------------------------------ plan


def render_plan(plan: dict[str, Any], recipe: Recipe) -> str:
    lines = [f"recipe  {plan['recipe']} ({plan['source']})"]
    if plan["description"]:
        lines.append(f"        {plan['description']}")
    stats = plan["input_stats"]
    size = (f" ({human_count(stats['params'])} params, {human_count(stats['macs'])} MACs, "
            f"{human_bytes(stats['bytes'])})" if stats else "")
    lines.append(f"model   {_rel(plan['model'])}{size}")
    lines.append(f"calib   {_rel(plan['calib']) if plan['calib'] else '-'}")
    lines.append("shape   " + (", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in plan["shape"].items()) or "-"))
    rows = []
    for entry, step in zip(plan["steps"], recipe.steps):
        detail = step.describe()
        if "resolved" in entry:
            detail += "  -> " + ", ".join(f"{k} {_value(v)}" for k, v in entry["resolved"].items())
        rows.append([str(entry["index"]), step.kind, detail])
    lines.append("")
    lines.append(format_table(["#", "step", "options (non-default)"], rows, title="Plan"))
    for note in plan["notes"]:
        lines.append(f"note: {note}")
    lines.append("dry run: the recipe is valid; nothing was run or written")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ reports


def _validation_index(result: RecipeResult) -> int | None:
    found = [s.index for s in result.steps if s.validation is not None]
    return found[-1] if found else None


def render_markdown(result: RecipeResult) -> str:
    from ..validate import render_markdown as validate_markdown

    recipe = result.recipe
    status = "PASSED" if result.passed else "FAILED"
    lines = [f"# onnxsparse run {recipe.name}: {status}", ""]
    if recipe.description:
        lines += [recipe.description, ""]
    lines += [f"Input: `{result.input}`  ", f"Output: `{result.output or '-'}`  ", f"Recipe: `{recipe.source}`", "",
              _ratio_line(result), "", markdown_table(list(SUMMARY_HEADERS), summary_rows(result)), "",
              _verdict(result), ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    lines += ["## Recipe", "", "```json", json.dumps(to_jsonable(recipe.to_dict()), indent=2), "```", ""]
    index = _validation_index(result)
    for step in result.steps:
        lines += [f"## Step {step.index}: {step.kind}", ""]
        if step.index == index:
            body = validate_markdown(step.validation)
            lines += ["#" + line if line.startswith("#") else line for line in body.splitlines()] + [""]
        else:
            lines += ["```json", json.dumps(to_jsonable(step.report), indent=2), "```", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;
color:#111827;padding:0 16px}table{border-collapse:collapse;font-size:13px}th,td{border-bottom:1px solid #e5e7eb;
padding:4px 10px;text-align:left}th{background:#f9fafb}details pre{background:#f9fafb;padding:8px;overflow:auto;
font-size:12px}.pass{color:#166534;font-weight:600}.fail{color:#991b1b;font-weight:600}"""


def _html_table(headers: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(result: RecipeResult) -> str:
    """A self-contained page: the run table, then the validate step's own page (charts included)."""
    from ..validate.render_html import validation_html

    recipe = result.recipe
    status = "PASSED" if result.passed else "FAILED"
    css, validate_body = _CSS, ""
    index = _validation_index(result)
    if index is not None:
        page = validation_html(result.steps[index].validation, title=f"Step {index}: validate")
        css = page.partition("<style>")[2].partition("</style>")[0] or _CSS
        validate_body = page.partition("<body>")[2].rpartition("</body>")[0]
    sections = [
        f"<h1>onnxsparse run {escape(recipe.name)} <span class='{status.lower()}'>{status}</span></h1>",
        f"<p>{escape(recipe.description)}</p>" if recipe.description else "",
        f"<p class='muted'>{escape(result.input)} &rarr; {escape(str(result.output or '-'))} "
        f"(recipe {escape(recipe.source)})</p>",
        f"<p>{escape(_ratio_line(result))}</p>",
        _html_table(SUMMARY_HEADERS, summary_rows(result)),
        f"<p>{escape(_verdict(result))}</p>",
    ]
    if result.notes:
        sections.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in result.notes) + "</ul>")
    sections.append(f"<details><summary>Recipe</summary><pre>{escape(json.dumps(to_jsonable(recipe.to_dict()), indent=2))}</pre></details>")
    for step in result.steps:
        if step.index != index:
            sections.append(f"<details><summary>Step {step.index}: {escape(step.kind)} report</summary><pre>"
                            f"{escape(json.dumps(to_jsonable(step.report), indent=2))}</pre></details>")
    if validate_body:
        sections.append(validate_body)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>onnxsparse run {escape(recipe.name)}</title><style>{css}</style></head><body>\n"
        + "\n".join(s for s in sections if s) + "\n</body></html>\n"
    )


def write_run_report(path: str | os.PathLike, result: RecipeResult, *, force: bool = False) -> Path:
    """``.json`` (stable keys, ``schema`` ``onnxsparse.run/1``), ``.md`` or ``.html``, written atomically."""
    from ..validate.reports import write_rendered

    return write_rendered(path, result, render_markdown, render_html, force=force)
