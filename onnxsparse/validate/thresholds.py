"""Gates a candidate must pass, registered by name; CLI flags are generated from them.

Each threshold observes values in a :class:`ValidationResult` (one per
provider/output/metric) and compares the worst against the limit.  A gate that
finds nothing to observe fails with the reason: a pipeline that asked for it
must not pass by accident.  Two checks always run: ``outputs_comparable`` (a
candidate whose outputs have another shape, or hold NaN/inf, never passes) and
``candidate_runs`` (a provider that runs the reference but not the candidate is
a regression, not a missing provider).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import UsageError
from .result import ThresholdCheck, ValidationResult

__all__ = ["Threshold", "THRESHOLDS", "DEFAULT_THRESHOLDS", "register_threshold", "evaluate_thresholds",
           "check_threshold_inputs"]

Observations = list[tuple[str, float | None]]


@dataclass(frozen=True)
class Threshold:
    """``bound="max"``: observed values must be <= limit; ``"min"``: >= limit."""

    name: str
    bound: str
    help: str
    observe: Callable[[ValidationResult], Observations]
    requires: str | None = None  # "labels" or "memory": settings the gate cannot work without

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


THRESHOLDS: dict[str, Threshold] = {}


def register_threshold(name: str, bound: str, help: str, requires: str | None = None):
    """Decorator: ``observe(result) -> [(where, value)]`` becomes gate ``name`` (flag ``--name``)."""
    if bound not in ("max", "min"):
        raise ValueError(f"bound must be 'max' or 'min', got {bound!r}")

    def wrap(observe: Callable[[ValidationResult], Observations]) -> Callable[[ValidationResult], Observations]:
        THRESHOLDS[name] = Threshold(name, bound, help, observe, requires)
        return observe

    return wrap


def _fidelity(result: ValidationResult, attr: str, classifier_only: bool = False) -> Observations:
    out: Observations = []
    for p in result.available_providers:
        for f in p.fidelity:
            if classifier_only and not f.classifier and not f.error:
                continue
            value = None if f.error else getattr(f, attr)
            if value is None and not f.error:
                continue  # metric not defined for this output (e.g. cosine of an int output)
            out.append((f"{p.provider}/{f.name}", value))
    return out


@register_threshold("max_accuracy_drop", "max", "fail if any task metric drops by more than this (absolute, "
                    "e.g. 0.01 = one point of top-1)", requires="labels")
def _accuracy_drop(result: ValidationResult) -> Observations:
    return [(f"{p.provider}/{m.name}", m.drop) for p in result.available_providers for m in p.metrics]


@register_threshold("min_accuracy", "min", "fail if the candidate's task metric (higher-is-better ones) "
                    "is below this", requires="labels")
def _accuracy(result: ValidationResult) -> Observations:
    return [(f"{p.provider}/{m.name}", m.candidate) for p in result.available_providers for m in p.metrics
            if m.higher_is_better]


@register_threshold("min_cosine", "min", "fail if the mean per-sample cosine similarity of any output is below this")
def _cosine(result: ValidationResult) -> Observations:
    return _fidelity(result, "cosine")


@register_threshold("max_abs_error", "max", "fail if the max absolute error of any output exceeds this")
def _abs_error(result: ValidationResult) -> Observations:
    return _fidelity(result, "max_abs_error")


@register_threshold("max_rel_error", "max", "fail if the relative L2 error ||c-r||/||r|| of any output exceeds this")
def _rel_error(result: ValidationResult) -> Observations:
    return _fidelity(result, "rel_error")


@register_threshold("min_top1_agreement", "min", "fail if top-1 agreement of any classifier-like output is below this")
def _top1(result: ValidationResult) -> Observations:
    return _fidelity(result, "top1_agreement", classifier_only=True)


@register_threshold("min_top5_overlap", "min", "fail if top-5 overlap of any classifier-like output is below this")
def _top5(result: ValidationResult) -> Observations:
    return _fidelity(result, "top5_overlap", classifier_only=True)


@register_threshold("max_latency_ratio", "max", "fail if candidate p50 / reference p50 latency exceeds this "
                    "on any provider that ran (e.g. 0.8 = at least 20%% faster)")
def _latency_ratio(result: ValidationResult) -> Observations:
    return [(p.provider, p.latency_ratio) for p in result.available_providers]


@register_threshold("max_size_ratio", "max", "fail if candidate / reference bytes on disk exceeds this")
def _size_ratio(result: ValidationResult) -> Observations:
    return [("disk", result.size_ratio)]


@register_threshold("max_memory_ratio", "max", "fail if the candidate session's peak host memory / the "
                    "reference's exceeds this", requires="memory")
def _memory_ratio(result: ValidationResult) -> Observations:
    out: Observations = []
    for p in result.available_providers:
        ref = p.reference.memory if p.reference else None
        cand = p.candidate.memory if p.candidate else None
        value = cand.session_bytes / ref.session_bytes if ref and cand and ref.session_bytes else None
        out.append((p.provider, value))
    return out


#: Every gate, in the order reports list them.
DEFAULT_THRESHOLDS: tuple[str, ...] = tuple(THRESHOLDS)


def check_threshold_inputs(limits: Mapping[str, float], *, labels: bool, memory: bool) -> dict[str, float]:
    """Reject unknown gates and gates whose inputs were not given (before anything runs)."""
    clean: dict[str, float] = {}
    for name, limit in limits.items():
        if limit is None:
            continue
        if name not in THRESHOLDS:
            raise UsageError(f"unknown threshold {name!r}; known: {', '.join(THRESHOLDS)}")
        threshold = THRESHOLDS[name]
        if threshold.requires == "labels" and not labels:
            raise UsageError(f"{threshold.flag} needs --labels")
        if threshold.requires == "memory" and not memory:
            raise UsageError(f"{threshold.flag} needs memory measurement (drop --no-memory)")
        value = float(limit)
        if not math.isfinite(value):
            raise UsageError(f"{threshold.flag} must be a finite number, got {limit!r}")
        clean[name] = value
    return clean


def _is_bad(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


def _comparable(result: ValidationResult) -> ThresholdCheck:
    problems = []
    for p in result.available_providers:
        for f in p.fidelity:
            if f.error:
                problems.append(f"{p.provider}/{f.name}: {f.error}")
            elif f.nonfinite:
                problems.append(f"{p.provider}/{f.name}: candidate produced {f.nonfinite} NaN/inf values")
    return ThresholdCheck("outputs_comparable", None, None, problems[0].split(":")[0] if problems else None,
                          not problems, "; ".join(problems) or None)


def _candidate_runs(result: ValidationResult) -> ThresholdCheck:
    broken = [p for p in result.providers if p.failed_model == "candidate"]
    return ThresholdCheck("candidate_runs", None, None, ",".join(p.provider for p in broken) or None, not broken,
                          "; ".join(p.reason or "" for p in broken) or None)


def evaluate_thresholds(
    result: ValidationResult, limits: Mapping[str, float], *, require_providers: bool = False
) -> list[ThresholdCheck]:
    """Evaluate the built-in check plus every gate in ``limits``."""
    checks = [_comparable(result), _candidate_runs(result)]
    if require_providers:
        missing = [p.provider for p in result.providers if not p.available]
        checks.append(ThresholdCheck(
            "providers_available", None, None, ",".join(missing) or None, not missing,
            f"unavailable: {', '.join(missing)}" if missing else None,
        ))
    for name in THRESHOLDS:
        if name not in limits:
            continue
        threshold, limit = THRESHOLDS[name], limits[name]
        observations = threshold.observe(result)
        if not observations:
            checks.append(ThresholdCheck(name, limit, None, None, False,
                                         "nothing to evaluate (no provider ran, or no output it applies to)"))
            continue
        bad = [(where, value) for where, value in observations if _is_bad(value)]
        if bad:
            checks.append(ThresholdCheck(name, limit, None, bad[0][0], False, "value could not be computed "
                                         "(output not comparable or not finite)"))
            continue
        pick = max if threshold.bound == "max" else min
        known = [(where, value) for where, value in observations if value is not None]  # all: none is bad
        where, worst = pick(known, key=lambda item: item[1])
        ok = worst <= limit if threshold.bound == "max" else worst >= limit
        checks.append(ThresholdCheck(name, limit, worst, where, ok))
    return checks
