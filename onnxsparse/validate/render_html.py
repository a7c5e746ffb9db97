"""Self-contained HTML reports: inline CSS and SVG, no scripts, opens offline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from .svg import PALETTE, Point, Series, box_plot, bytes_unit, scatter
from ._tables import Table, bench_tables, summary_line, validation_tables, verdict
from .bench import BenchResult
from .result import ValidationResult

__all__ = ["validation_html", "bench_html"]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#111827;
padding:0 16px;line-height:1.45}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.badge{display:inline-block;padding:3px 10px;border-radius:12px;font-weight:600;font-size:13px;margin-left:8px;
vertical-align:middle}
.pass{background:#dcfce7;color:#166534}.fail{background:#fee2e2;color:#991b1b}
.summary{color:#374151;margin:6px 0 0}.muted{color:#6b7280;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 4px}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 10px;text-align:left;white-space:nowrap}
th{background:#f9fafb;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.FAIL,td.UNAVAILABLE{color:#991b1b;font-weight:600}td.PASS{color:#166534;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.chart{border:1px solid #e5e7eb;border-radius:6px;max-width:100%;height:auto}
ul.notes li{margin:2px 0}details pre{background:#f9fafb;padding:8px;overflow:auto;font-size:12px}
"""


def _cell(value: Any) -> str:
    if value is None:
        return "<td>-</td>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"<td class='num'>{value:.4g}</td>" if isinstance(value, float) else f"<td class='num'>{value}</td>"
    text = str(value)
    css = f" class='{text}'" if text in ("PASS", "FAIL", "UNAVAILABLE") else ""
    return f"<td{css}>{escape(text)}</td>"


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
    return f"<h2>{escape(table.title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, header: str, sections: Sequence[str]) -> str:
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n{header}\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{escape(n)}</li>" for n in notes)
    return f"<h2>Notes</h2><ul class='notes'>{items}</ul>"


def _details(title: str, data: Any) -> str:
    return f"<details><summary>{escape(title)}</summary><pre>{escape(json.dumps(data, indent=2))}</pre></details>"


def _quality_point(result: ValidationResult) -> tuple[str, float, float] | None:
    """(axis label, reference value, candidate value) for the accuracy-vs-size chart."""
    primary = result.primary
    if primary is None:
        return None
    if primary.metrics:
        m = primary.metrics[0]
        return f"{m.name} ({primary.provider})", m.reference, m.candidate
    agreements = [f.top1_agreement for f in primary.fidelity if f.top1_agreement is not None]
    if agreements:
        return f"top-1 agreement with reference ({primary.provider})", 1.0, min(agreements)
    cosines = [f.cosine for f in primary.fidelity if f.cosine is not None]
    if cosines:
        return f"cosine similarity to reference ({primary.provider})", 1.0, min(cosines)
    return None


def validation_html(result: ValidationResult, title: str = "onnxsparse validate") -> str:
    passed = result.passed
    header = (
        f"<h1>{escape(title)}<span class='badge {'pass' if passed else 'fail'}'>"
        f"{'PASSED' if passed else 'FAILED'}</span></h1>"
        f"<p class='summary'>{escape(summary_line(result))}</p>"
        f"<p class='muted'>{escape(result.reference.path)} &rarr; {escape(result.candidate.path)}</p>"
    )
    if not passed:
        header += f"<p class='summary'>{escape(verdict(result))}</p>"
    charts = []
    series = []
    for p in result.available_providers:
        for role, session, color in (("reference", p.reference, PALETTE[0]), ("candidate", p.candidate, PALETTE[1])):
            if session and session.latency:
                series.append(Series(f"{p.provider} · {role}", session.latency.samples_ms, color))
    if series:
        charts.append(box_plot(series, title=f"Latency per run (batch {result.settings['batch']})"))
    quality = _quality_point(result)
    if quality is not None:
        label, ref_value, cand_value = quality
        charts.append(scatter(
            [Point("reference", result.reference.file_bytes, ref_value, PALETTE[0]),
             Point("candidate", result.candidate.file_bytes, cand_value, PALETTE[1])],
            title="Accuracy vs size on disk", xlabel="size on disk", ylabel=label,
            xunit=bytes_unit([result.reference.file_bytes, result.candidate.file_bytes]),
            ymax=1.0 if max(ref_value, cand_value) <= 1.0 else None,
        ))
    sections = []
    if charts:
        sections.append("<h2>Charts</h2><div class='charts'>" + "".join(charts) + "</div>")
    else:
        sections.append("<h2>Charts</h2><p class='muted'>no provider ran, nothing to chart</p>")
    sections += [_table(t) for t in validation_tables(result)]
    sections.append(_notes(result.notes))
    sections.append(_details("Settings", result.settings))
    sections.append(_details("Environment", result.environment))
    return _page(title, header, sections)


def bench_html(result: BenchResult, title: str = "onnxsparse bench") -> str:
    colors = {info.path: PALETTE[i % len(PALETTE)] for i, info in enumerate(result.models)}
    series = [
        Series(f"{_short(row.model)} · {row.provider} t{row.threads or 'auto'} b{row.batch}",
               row.latency.samples_ms, colors.get(row.model, PALETTE[-1]))
        for row in result.rows if row.latency is not None
    ]
    charts = []
    if series:
        charts.append(box_plot(series, title="Latency per run"))
    first = [row for row in result.rows if row.latency is not None]
    if first:
        config = (first[0].provider, first[0].threads, first[0].batch)
        sizes = {info.path: info.file_bytes for info in result.models}
        points = [Point(_short(row.model), sizes[row.model], row.latency.p50_ms, colors[row.model])
                  for row in first if row.latency is not None and (row.provider, row.threads, row.batch) == config]
        charts.append(scatter(points, title=f"p50 latency vs size ({config[0]}, threads {config[1] or 'auto'}, "
                                            f"batch {config[2]})", xlabel="size on disk", ylabel="p50 ms",
                              xunit=bytes_unit([p.x for p in points])))
    header = f"<h1>{escape(title)}</h1><p class='summary'>{len(result.models)} model(s), {len(result.rows)} row(s)</p>"
    sections = ["<h2>Charts</h2><div class='charts'>" + "".join(charts) + "</div>" if charts else
                "<h2>Charts</h2><p class='muted'>nothing was measured</p>"]
    sections += [_table(t) for t in bench_tables(result)]
    sections.append(_notes(result.notes))
    sections.append(_details("Settings", result.settings))
    sections.append(_details("Environment", result.environment))
    return _page(title, header, sections)


def _short(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]
