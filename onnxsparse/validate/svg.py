"""Hand-written SVG charts for self-contained HTML reports (no JS, no CDN).

Every data point is an element with a ``data-value`` attribute and a
``<title>`` tooltip, so the page works offline and tests can count points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

__all__ = ["Series", "Point", "nice_ticks", "log_ticks", "box_plot", "scatter", "bar_chart", "bytes_unit",
           "PALETTE"]

PALETTE = ("#3b6fd4", "#e8891c", "#2a9d6f", "#c43c5a", "#7b5cc4", "#8a6d3b", "#1b9aaa", "#6b7280")
_FONT = "font-family='system-ui,-apple-system,Segoe UI,sans-serif' font-size='12'"


@dataclass(frozen=True)
class Series:
    """A labelled distribution (e.g. per-run latencies of one model on one provider)."""

    label: str
    values: Sequence[float]
    color: str


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    color: str
    note: str = ""


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


#: Dots drawn per box-plot series at most; longer series (time-budgeted latency of a fast
#: model: tens of thousands of runs) draw this many evenly spaced quantiles, min and max included.
MAX_DOTS = 1000


def _dots(vals: np.ndarray) -> np.ndarray:
    """Every value, in order, or ``MAX_DOTS`` evenly spaced quantiles of a longer series."""
    if vals.size <= MAX_DOTS:
        return vals
    return np.sort(vals)[np.linspace(0, vals.size - 1, MAX_DOTS).round().astype(np.int64)]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (about ``count`` of them)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= step * mult:
            step *= mult
            break
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def _jitter(i: int) -> float:
    """Deterministic spread in [-0.5, 0.5) (golden-ratio sequence)."""
    return ((i * 0.6180339887498949) % 1.0) - 0.5


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis: 1-2-5 steps per decade (only 1s over many decades)."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1,) if last - first > 4 else (1, 2, 5)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in steps]
    below = [t for t in ticks if t <= lo]
    above = [t for t in ticks if t >= hi]
    start = below[-1] if below else ticks[0]
    stop = above[0] if above else ticks[-1]
    return [t for t in ticks if start <= t <= stop]


def box_plot(series: Sequence[Series], *, title: str, unit: str = "ms", width: int = 760) -> str:
    """Horizontal box plots (quartiles, whiskers at 1.5 IQR, p99 tick) with every value as a dot
    (up to ``MAX_DOTS`` per series; beyond, that many evenly spaced quantiles).

    The axis turns logarithmic when the values span more than 30x (models of
    very different cost side by side); a series' rare stalls beyond 1.5x its
    p99 are drawn at the right edge and counted instead of squashing the boxes.
    """
    row_h, left, right, top, bottom = 46, 230, 30, 34, 44
    height = top + bottom + row_h * max(1, len(series))
    arrays = [np.asarray(s.values, float) for s in series]
    values_all = np.concatenate([a for a in arrays if a.size] or [np.ones(1)])
    lo = float(values_all.min())
    hi_all = float(values_all.max())
    robust = [min(float(a.max()), 1.5 * float(np.percentile(a, 99))) for a in arrays if a.size]
    hi = max(robust) if robust else hi_all
    log = lo > 0 and hi / lo > 30
    if log:
        ticks = log_ticks(lo, hi)
        f = math.log10
    else:
        ticks = nice_ticks(max(0.0, lo - 0.05 * (hi - lo)), hi)
        f = float
    x0, x1 = f(ticks[0]), f(ticks[-1])
    plot_w = width - left - right

    def sx(v: float) -> float:
        return left + (f(min(max(v, ticks[0]), ticks[-1])) - x0) / (x1 - x0 or 1) * plot_w

    parts = [_open(width, height, title, "box-plot")]
    parts.append(f"<text x='{left}' y='20' {_FONT} font-weight='600'>{escape(title)}</text>")
    for t in ticks:
        x = sx(t)
        parts.append(f"<line x1='{x:.1f}' y1='{top}' x2='{x:.1f}' y2='{height - bottom}' stroke='#e5e7eb'/>")
        parts.append(f"<text x='{x:.1f}' y='{height - bottom + 16}' {_FONT} text-anchor='middle' "
                     f"fill='#4b5563'>{_fmt(t)}</text>")
    parts.append(f"<text x='{left + plot_w / 2:.1f}' y='{height - 8}' {_FONT} text-anchor='middle' "
                 f"fill='#374151'>{escape(unit)} per run{' (log scale)' if log else ''}</text>")
    for row, s in enumerate(series):
        cy = top + row_h * row + row_h / 2
        parts.append(f"<text x='{left - 10}' y='{cy + 4:.1f}' {_FONT} text-anchor='end'>{escape(s.label)}</text>")
        vals = np.asarray(s.values, float)
        if vals.size == 0:
            parts.append(f"<text x='{left + 6}' y='{cy + 4:.1f}' {_FONT} fill='#9ca3af'>not measured</text>")
            continue
        q1, med, q3, p90, p99 = np.percentile(vals, [25, 50, 75, 90, 99])
        iqr = q3 - q1
        w_lo = float(vals[vals >= q1 - 1.5 * iqr].min())
        w_hi = float(vals[vals <= q3 + 1.5 * iqr].max())
        thinned = f"; {MAX_DOTS} evenly spaced quantiles drawn" if vals.size > MAX_DOTS else ""
        tip = (f"{s.label}: p50 {_fmt(med)} {unit}, p90 {_fmt(p90)}, p99 {_fmt(p99)}, "
               f"min {_fmt(vals.min())}, max {_fmt(vals.max())} ({vals.size} runs{thinned})")
        parts.append(f"<g class='series' data-label='{escape(s.label, quote=True)}' data-count='{vals.size}'>")
        parts.append(f"<title>{escape(tip)}</title>")
        parts.append(f"<line x1='{sx(w_lo):.1f}' y1='{cy:.1f}' x2='{sx(w_hi):.1f}' y2='{cy:.1f}' "
                     f"stroke='{s.color}' stroke-width='1.5'/>")
        for w in (w_lo, w_hi):
            parts.append(f"<line x1='{sx(w):.1f}' y1='{cy - 7:.1f}' x2='{sx(w):.1f}' y2='{cy + 7:.1f}' "
                         f"stroke='{s.color}' stroke-width='1.5'/>")
        parts.append(f"<rect class='box' x='{sx(q1):.1f}' y='{cy - 12:.1f}' width='{max(1.0, sx(q3) - sx(q1)):.1f}' "
                     f"height='24' fill='{s.color}' fill-opacity='0.18' stroke='{s.color}' stroke-width='1.5'/>")
        parts.append(f"<line class='median' x1='{sx(med):.1f}' y1='{cy - 12:.1f}' x2='{sx(med):.1f}' "
                     f"y2='{cy + 12:.1f}' stroke='{s.color}' stroke-width='3' data-value='{med:.6g}'/>")
        parts.append(f"<path class='p99' d='M{sx(p99):.1f},{cy - 16:.1f} l-4,-6 h8 z' fill='{s.color}'>"
                     f"<title>p99 {_fmt(p99)} {escape(unit)}</title></path>")
        for i, v in enumerate(_dots(vals)):
            off = v > ticks[-1]
            parts.append(f"<circle class='pt{' off' if off else ''}' cx='{sx(v):.1f}' cy='{cy + _jitter(i) * 18:.1f}' "
                         f"r='{3 if off else 2}' fill='{s.color}' fill-opacity='{0.9 if off else 0.45}' "
                         f"data-value='{v:.6g}'/>")
        parts.append("</g>")
    if hi_all > ticks[-1]:
        off = int((values_all > ticks[-1]).sum())
        parts.append(f"<text x='{width - right}' y='20' {_FONT} text-anchor='end' fill='#6b7280'>"
                     f"{off} slower run(s) off-scale, max {_fmt(hi_all)} {escape(unit)}</text>")
    parts.append("</svg>")
    return "\n".join(parts)


def scatter(
    points: Sequence[Point],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xunit: tuple[str, float] = ("", 1.0),
    ymax: float | None = None,
    width: int = 560,
    height: int = 340,
) -> str:
    """A labelled scatter plot (e.g. accuracy vs bytes on disk).

    ``xunit=("KB", 1024)`` places ticks at round numbers of that unit;
    ``ymax`` caps the axis (1.0 for accuracies).
    """
    left, right, top, bottom = 70, 30, 34, 48
    unit, div = xunit
    xs = [p.x / div for p in points] or [0.0]
    ys = [p.y for p in points] or [0.0]
    xpad = (max(xs) - min(xs)) * 0.12 or abs(max(xs)) * 0.1 or 1.0
    ypad = (max(ys) - min(ys)) * 0.15 or abs(max(ys)) * 0.02 or 0.1
    xt = nice_ticks(max(0.0, min(xs) - xpad), max(xs) + xpad)
    yhi = max(ys) + ypad if ymax is None else min(ymax, max(ys) + ypad)
    ylo = min(ys) - ypad
    if min(ys) >= 0:  # latencies, accuracies: no negative axis
        ylo = max(0.0, ylo)
    yt = nice_ticks(ylo, yhi)
    if ymax is not None:
        yt = [t for t in yt if t <= ymax + 1e-12] or yt

    def xfmt(v: float) -> str:
        return f"{_fmt(v)} {unit}".strip()
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - xt[0]) / (xt[-1] - xt[0] or 1) * plot_w

    def sy(v: float) -> float:
        return top + plot_h - (v - yt[0]) / (yt[-1] - yt[0] or 1) * plot_h

    parts = [_open(width, height, title, "scatter")]
    parts.append(f"<text x='{left}' y='20' {_FONT} font-weight='600'>{escape(title)}</text>")
    for t in xt:
        parts.append(f"<line x1='{sx(t):.1f}' y1='{top}' x2='{sx(t):.1f}' y2='{top + plot_h}' stroke='#e5e7eb'/>")
        parts.append(f"<text x='{sx(t):.1f}' y='{top + plot_h + 16}' {_FONT} text-anchor='middle' "
                     f"fill='#4b5563'>{escape(xfmt(t))}</text>")
    for t in yt:
        parts.append(f"<line x1='{left}' y1='{sy(t):.1f}' x2='{left + plot_w}' y2='{sy(t):.1f}' stroke='#e5e7eb'/>")
        parts.append(f"<text x='{left - 8}' y='{sy(t) + 4:.1f}' {_FONT} text-anchor='end' "
                     f"fill='#4b5563'>{_fmt(t)}</text>")
    parts.append(f"<text x='{left + plot_w / 2:.1f}' y='{height - 8}' {_FONT} text-anchor='middle' "
                 f"fill='#374151'>{escape(xlabel)}</text>")
    parts.append(f"<text transform='translate(16,{top + plot_h / 2:.1f}) rotate(-90)' {_FONT} "
                 f"text-anchor='middle' fill='#374151'>{escape(ylabel)}</text>")
    placed: list[tuple[float, float, float]] = []  # label boxes (x_start, x_end, baseline y)
    for p in points:
        x = p.x / div
        tip = f"{p.label}: {xlabel} {xfmt(x)}, {ylabel} {_fmt(p.y)}" + (f" ({p.note})" if p.note else "")
        anchor = "end" if sx(x) > left + plot_w * 0.7 else "start"
        dx = -10 if anchor == "end" else 10
        label_w = 7 * len(p.label)
        lx = sx(x) + dx
        x_start, x_end = (lx - label_w, lx) if anchor == "end" else (lx, lx + label_w)
        ly = sy(p.y) - 10
        for attempt in range(8):  # move the label down until it overlaps no earlier label
            candidate = sy(p.y) - 10 + 16 * ((attempt + 1) // 2) * (1 if attempt % 2 else -1) * -1
            if not any(a < x_end and x_start < b and abs(candidate - y) < 14 for a, b, y in placed):
                ly = candidate
                break
        placed.append((x_start, x_end, ly))
        parts.append(f"<g class='point' data-label='{escape(p.label, quote=True)}'><title>{escape(tip)}</title>"
                     f"<circle class='pt' cx='{sx(x):.1f}' cy='{sy(p.y):.1f}' r='7' fill='{p.color}' "
                     f"stroke='white' stroke-width='1.5' data-x='{p.x:.6g}' data-value='{p.y:.6g}'/>"
                     f"<text x='{lx:.1f}' y='{ly:.1f}' {_FONT} text-anchor='{anchor}'>"
                     f"{escape(p.label)}</text></g>")
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(labels: Sequence[str], counts: Sequence[int], *, title: str, xlabel: str, width: int = 760) -> str:
    """Vertical bars, one per (label, count): a histogram whose buckets are already counted."""
    left, right, top, bottom = 50, 20, 34, 52
    height = 260
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([int(c) for c in counts] or [0]) or 1
    ticks = nice_ticks(0, peak)
    scale = plot_h / (ticks[-1] or 1)
    step = plot_w / max(len(counts), 1)
    parts = [_open(width, height, title, "histogram")]
    parts.append(f"<text x='{left}' y='20' {_FONT} font-weight='600'>{escape(title)}</text>")
    for t in ticks:
        y = top + plot_h - t * scale
        parts.append(f"<line x1='{left}' y1='{y:.1f}' x2='{width - right}' y2='{y:.1f}' stroke='#e5e7eb'/>")
        parts.append(f"<text x='{left - 6}' y='{y + 4:.1f}' {_FONT} text-anchor='end' fill='#4b5563'>{_fmt(t)}</text>")
    for i, (label, count) in enumerate(zip(labels, counts)):
        x, h = left + i * step, int(count) * scale
        parts.append(f"<rect class='bar' x='{x + 2:.1f}' y='{top + plot_h - h:.1f}' width='{max(1.0, step - 4):.1f}' "
                     f"height='{h:.1f}' fill='{PALETTE[0]}' data-value='{int(count)}'>"
                     f"<title>{escape(label)}: {int(count)}</title></rect>")
        parts.append(f"<text x='{x + step / 2:.1f}' y='{top + plot_h + 16}' {_FONT} text-anchor='middle' "
                     f"fill='#4b5563'>{escape(label)}</text>")
    parts.append(f"<text x='{left + plot_w / 2:.1f}' y='{height - 8}' {_FONT} text-anchor='middle' "
                 f"fill='#374151'>{escape(xlabel)}</text>")
    parts.append("</svg>")
    return "\n".join(parts)


def bytes_unit(values: Sequence[float]) -> tuple[str, float]:
    """The unit (B, KB, MB, GB) that suits the largest of ``values``."""
    top = max(values, default=0)
    for unit, div in (("GB", 1024.0**3), ("MB", 1024.0**2), ("KB", 1024.0)):
        if top >= div:
            return unit, div
    return "B", 1.0


def _open(width: int, height: int, title: str, kind: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' class='chart {kind}' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img' aria-label='{escape(title, quote=True)}'>"
            f"<rect width='{width}' height='{height}' fill='white'/>")
