"""The tables every report shows, built once and rendered as text, Markdown or HTML."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..report import human_bytes, human_count
from .bench import BenchResult
from .result import ProviderResult, SessionResult, ValidationResult

__all__ = ["Table", "validation_tables", "bench_tables", "verdict", "summary_line"]


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: list[list[Any]]


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


def _rate(value: float | None) -> float | int | None:
    """Samples per second: whole numbers once they are large."""
    if value is None or not math.isfinite(value):  # inf: a p50 below the clock's resolution
        return None
    return round(value) if value >= 100 else _r(value, 3)


def _cos(value: float | None) -> str | None:
    """Cosines live just below 1: show enough digits to tell 0.999 from 0.999999."""
    return None if value is None else f"{value:.6f}"


def _ratio(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}x"


def _mem(session: SessionResult | None) -> str | None:
    if session is None or session.memory is None:
        return None
    return human_bytes(session.memory.session_bytes)


def _timing(settings: dict[str, Any]) -> str:
    """``100 interleaved runs`` or ``interleaved runs for 1 s per model (10-100000 runs)``."""
    if settings.get("runs") is not None or settings.get("budget_seconds") is None:
        return f"{settings.get('runs')} interleaved runs"
    return (f"interleaved runs for {settings['budget_seconds']:g} s per model "
            f"({settings['min_runs']}-{settings['max_runs']} runs)")


def _session_row(p: ProviderResult, role: str, session: SessionResult | None, ratio: str | None) -> list[Any]:
    lat = session.latency if session else None
    return [
        p.provider, role,
        _r(lat.p50_ms) if lat else None, _r(lat.p90_ms) if lat else None, _r(lat.p99_ms) if lat else None,
        _rate(lat.throughput) if lat else None,
        lat.runs if lat else None,
        _r(session.session_seconds, 3) if session else None,
        _mem(session),
        ratio,
    ]


def validation_tables(result: ValidationResult) -> list[Table]:
    models = Table(
        "Models",
        ("model", "path", "on disk", "params", "MACs/sample", "zeros"),
        [
            [info.role, info.path, human_bytes(info.file_bytes), human_count(info.params), human_count(info.macs),
             None if info.zero_fraction is None else f"{info.zero_fraction:.1%}"]
            for info in (result.reference, result.candidate)
        ],
    )
    latency_rows: list[list[Any]] = []
    for p in result.providers:
        if not p.available:
            latency_rows.append([p.provider, "UNAVAILABLE", None, None, None, None, None, None, None, None])
            continue
        latency_rows.append(_session_row(p, "reference", p.reference, None))
        latency_rows.append(_session_row(p, "candidate", p.candidate, _ratio(p.latency_ratio)))
    latency = Table(
        f"Latency (batch {result.settings['batch']}, threads {result.settings['threads'] or 'auto'}, "
        f"{_timing(result.settings)} after {result.settings['warmup']} warm-up; samples/s = batch / p50)",
        ("provider", "model", "p50 ms", "p90 ms", "p99 ms", "samples/s", "runs", "session s", "memory", "p50 ratio"),
        latency_rows,
    )
    tables = [models, latency]
    accuracy_rows = [
        [p.provider, m.name, m.output, _r(m.reference), _r(m.candidate), _r(m.drop)]
        for p in result.available_providers for m in p.metrics
    ]
    if accuracy_rows:
        tables.append(Table(
            f"Accuracy ({result.primary.samples if result.primary else 0} samples, labels {result.settings['labels']})",
            ("provider", "metric", "output", "reference", "candidate", "drop"), accuracy_rows,
        ))
    fidelity_rows = [
        [p.provider, f.name, _r(f.max_abs_error), _r(f.mean_abs_error), _r(f.rel_error), _cos(f.cosine),
         _cos(f.cosine_min), _r(f.top1_agreement), _r(f.top5_overlap), _r(f.exact_match), f.error]
        for p in result.available_providers for f in p.fidelity
    ]
    if fidelity_rows:
        tables.append(Table(
            "Fidelity (candidate vs reference outputs)",
            ("provider", "output", "max abs", "mean abs", "rel err", "cosine", "cos min", "top1 agree",
             "top5 overlap", "exact", "error"),
            fidelity_rows,
        ))
    tables += _noise_tables(result)
    tables.append(Table(
        "Checks",
        ("check", "limit", "observed", "where", "result", "reason"),
        [[c.name, c.limit, _r(c.observed), c.where, "PASS" if c.passed else "FAIL", c.reason]
         for c in result.checks],
    ))
    return tables


def _noise_tables(result: ValidationResult) -> list[Table]:
    """``validate --noise``: the perturbed numbers beside the clean ones (fidelity, then metrics)."""
    runs = [(p, p.noise) for p in result.available_providers if p.noise is not None]
    if not runs:
        return []
    sigma = runs[0][1].sigma
    fidelity = [
        [p.provider, f.name, _cos(clean.cosine), _cos(f.cosine), _r(clean.top1_agreement), _r(f.top1_agreement),
         _cos(rs.cosine), _cos(cs.cosine), f.error]
        for p, noise in runs
        for clean, f, rs, cs in zip(p.fidelity, noise.fidelity, noise.reference_shift, noise.candidate_shift)
    ]
    tables = [Table(
        f"Under noise (Gaussian, {sigma:g} x each input's std, seed {result.settings['seed']}; "
        "shift = a model's noisy vs its clean outputs)",
        ("provider", "output", "cosine clean", "cosine noisy", "top1 agree clean", "top1 agree noisy",
         "reference shift cos", "candidate shift cos", "error"),
        fidelity,
    )]
    clean = {(p.provider, m.name): m for p, _ in runs for m in p.metrics}
    metrics = [
        [p.provider, m["name"], _r(clean[(p.provider, m["name"])].reference), _r(m["reference"]),
         _r(clean[(p.provider, m["name"])].candidate), _r(m["candidate"]), _r(clean[(p.provider, m["name"])].drop),
         _r(m["drop"])]
        for p, noise in runs for m in noise.metrics
    ]
    if metrics:
        tables.append(Table(
            f"Accuracy under noise ({sigma:g} x std)",
            ("provider", "metric", "reference clean", "reference noisy", "candidate clean", "candidate noisy",
             "drop clean", "drop noisy"),
            metrics,
        ))
    return tables


def summary_line(result: ValidationResult) -> str:
    """One sentence: size, speed and accuracy of the candidate relative to the reference."""
    parts = []
    if result.size_ratio is not None:
        parts.append(f"size {result.size_ratio:.3f}x")
    for p in result.available_providers:
        if p.latency_ratio is not None:
            parts.append(f"p50 latency {p.latency_ratio:.3f}x on {p.provider}")
    primary = result.primary
    if primary:
        for m in primary.metrics:
            parts.append(f"{m.name} {m.reference:.4f} -> {m.candidate:.4f}")
    unavailable = [p.provider for p in result.providers if not p.available]
    if unavailable:
        parts.append(f"unavailable: {', '.join(unavailable)}")
    return "candidate vs reference: " + ", ".join(parts)


def verdict(result: ValidationResult) -> str:
    """``PASSED``, or ``FAILED: `` and each failed gate (observed vs limit at where, or its reason)."""
    if result.passed:
        return "PASSED"
    failed = [c for c in result.checks if not c.passed]
    details = []
    for c in failed:
        if c.observed is not None and c.limit is not None:
            details.append(f"{c.name} {c.observed:.4g} vs limit {c.limit:g} at {c.where}")
        else:
            details.append(f"{c.name}: {c.reason}")
    return "FAILED: " + "; ".join(details)


def bench_tables(result: BenchResult) -> list[Table]:
    models = Table(
        "Models",
        ("model", "on disk", "params", "MACs/sample"),
        [[info.path, human_bytes(info.file_bytes), human_count(info.params), human_count(info.macs)]
         for info in result.models],
    )
    rows = []
    for row in result.rows:
        lat = row.latency
        rows.append([
            row.model, row.provider, row.threads or "auto", row.batch, "ok" if row.available else "UNAVAILABLE",
            _r(lat.p50_ms) if lat else None,
            _r(lat.p90_ms) if lat else None, _r(lat.p99_ms) if lat else None,
            _rate(lat.throughput) if lat else None,
            lat.runs if lat else None,
            _r(row.session_seconds, 3), human_bytes(row.memory.session_bytes) if row.memory else None,
        ])
    table = Table(
        f"Latency ({_timing(result.settings)} after {result.settings['warmup']} warm-up; samples/s = batch / p50)",
        ("model", "provider", "threads", "batch", "status", "p50 ms", "p90 ms", "p99 ms", "samples/s", "runs",
         "session s", "memory"),
        rows,
    )
    return [models, table]
