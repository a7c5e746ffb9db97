"""What ``validate`` found, as plain dataclasses with a stable JSON layout.

The layout of :meth:`ValidationResult.to_dict` is documented key by key in
``docs/validate.md``; ``schema`` changes whenever a key is renamed or removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..report import to_jsonable
from .latency import LatencyStats
from .memory import MemoryStats
from .metrics import OutputFidelity
from .noise import NoiseResult

__all__ = [
    "SCHEMA",
    "ModelInfo",
    "SessionResult",
    "MetricResult",
    "ProviderResult",
    "ThresholdCheck",
    "ValidationResult",
]

SCHEMA = "onnxsparse.validate/1"


@dataclass
class ModelInfo:
    """One model: where it is, how big it is on disk, its signature and size in parameters."""

    role: str
    path: str
    file_bytes: int
    size_note: str | None
    params: int | None
    macs: int | None
    zero_fraction: float | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    stats_note: str | None = None


@dataclass
class SessionResult:
    """One model on one provider: session creation (fastest of repeats), latency, peak host memory."""

    session_seconds: float | None
    latency: LatencyStats | None
    memory: MemoryStats | None = None
    memory_note: str | None = None
    session_samples_s: list[float] = field(default_factory=list)


@dataclass
class MetricResult:
    """A task metric for reference and candidate on one provider."""

    name: str
    output: str
    reference: float
    candidate: float
    drop: float
    higher_is_better: bool = True


@dataclass
class ProviderResult:
    """Everything measured on one execution provider (or why nothing was)."""

    provider: str
    ep: str
    device: str
    available: bool
    reason: str | None = None
    #: Which model could not open a session here: "reference", "candidate", "both" (None: both ran).
    failed_model: str | None = None
    active_providers: list[str] = field(default_factory=list)
    samples: int = 0
    reference: SessionResult | None = None
    candidate: SessionResult | None = None
    latency_ratio: float | None = None
    fidelity: list[OutputFidelity] = field(default_factory=list)
    metrics: list[MetricResult] = field(default_factory=list)
    #: both models on perturbed inputs (``validate --noise``)
    noise: NoiseResult | None = None
    #: "interleaved" (both sessions alive, run by run) or "alternating" (one session at a time, in phases:
    #: the two did not fit the memory budget together)
    latency_mode: str = "interleaved"

    @property
    def speedup(self) -> float | None:
        return 1.0 / self.latency_ratio if self.latency_ratio else None


@dataclass
class ThresholdCheck:
    """One gate: the limit, the worst value observed and where, and whether it held."""

    name: str
    limit: float | None
    observed: float | None
    where: str | None
    passed: bool
    reason: str | None = None


@dataclass
class ValidationResult:
    """Result of :func:`onnxsparse.validate.validate`; ``passed`` is what the exit code reports."""

    reference: ModelInfo
    candidate: ModelInfo
    providers: list[ProviderResult]
    checks: list[ThresholdCheck]
    settings: dict[str, Any]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    #: ops onnxruntime's CPU optimiser fused in each model (:mod:`onnxsparse.validate.fusions`)
    fusions: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def size_ratio(self) -> float | None:
        if not self.reference.file_bytes:
            return None
        return self.candidate.file_bytes / self.reference.file_bytes

    @property
    def available_providers(self) -> list[ProviderResult]:
        return [p for p in self.providers if p.available]

    @property
    def primary(self) -> ProviderResult | None:
        """The first provider that ran: the one summaries quote."""
        available = self.available_providers
        return available[0] if available else None

    def to_dict(self) -> dict[str, Any]:
        providers = []
        for p in self.providers:
            entry = to_jsonable(p)
            entry["speedup"] = p.speedup
            providers.append(entry)
        return to_jsonable(
            {
                "schema": SCHEMA,
                "passed": self.passed,
                "reference": self.reference,
                "candidate": self.candidate,
                "size_ratio": self.size_ratio,
                "providers": providers,
                "checks": self.checks,
                "settings": self.settings,
                "environment": self.environment,
                "notes": self.notes,
                "fusions": self.fusions,
            }
        )
