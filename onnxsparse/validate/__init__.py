"""Validation and benchmarking on onnxruntime execution providers.

``onnxsparse.validate(reference, candidate, ...)`` (this package is callable:
it forwards to :func:`validate`) checks that a transformed model still does its
job and is really smaller/faster where it runs; :func:`bench` measures one or
several models across providers, thread counts and batch sizes.
"""

from __future__ import annotations

import sys
import types

from .bench import BenchResult, BenchRow, bench
from .compat import ModelMismatchError
from .latency import LatencyStats
from .memory import MemoryStats
from .metrics import METRICS, Metric, OutputFidelity, fidelity, register_metric
from .providers import PROVIDERS, ProviderSpec, register_provider, resolve_providers
from ._tables import summary_line, verdict
from .reports import render_markdown, render_text, save_report
from .result import (
    SCHEMA,
    MetricResult,
    ModelInfo,
    ProviderResult,
    SessionResult,
    ThresholdCheck,
    ValidationResult,
)
from .runner import load_labels, validate
from .check_pass import ValidatePass, ValidateResult
from .thresholds import THRESHOLDS, register_threshold

__all__ = [
    "validate",
    "ValidatePass",
    "ValidateResult",
    "bench",
    "ValidationResult",
    "BenchResult",
    "BenchRow",
    "ModelInfo",
    "ProviderResult",
    "SessionResult",
    "MetricResult",
    "ThresholdCheck",
    "OutputFidelity",
    "LatencyStats",
    "MemoryStats",
    "ModelMismatchError",
    "Metric",
    "METRICS",
    "register_metric",
    "THRESHOLDS",
    "register_threshold",
    "PROVIDERS",
    "ProviderSpec",
    "register_provider",
    "resolve_providers",
    "fidelity",
    "load_labels",
    "render_text",
    "render_markdown",
    "save_report",
    "summary_line",
    "verdict",
    "SCHEMA",
]


class _CallablePackage(types.ModuleType):
    """Lets ``onnxsparse.validate(ref, cand)`` call :func:`validate` while submodules stay importable."""

    def __call__(self, *args, **kwargs) -> ValidationResult:
        return validate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
