"""Latency of several sessions measured interleaved, so they share the machine's state.

Timing two models one after the other lets thermal throttling, frequency
scaling or a noisy neighbour favour one of them.  Here every round runs each
session once, rotating which goes first, after a common warm-up; each run is
timed on its own with ``perf_counter_ns`` and the garbage collector paused.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LatencyStats", "latency_stats", "measure_interleaved"]


@dataclass
class LatencyStats:
    """Per-run latency in milliseconds; throughput in samples per second."""

    runs: int
    batch: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    throughput: float
    samples_ms: list[float] = field(default_factory=list, repr=False)


def latency_stats(samples_ms: Sequence[float], batch: int) -> LatencyStats:
    """Summarise run times (ms) of runs over ``batch`` samples each."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    total_s = float(arr.sum()) / 1e3
    return LatencyStats(
        runs=int(arr.size),
        batch=int(batch),
        mean_ms=float(arr.mean()),
        std_ms=float(arr.std()),
        min_ms=float(arr.min()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        max_ms=float(arr.max()),
        throughput=batch * arr.size / total_s if total_s > 0 else float("inf"),
        samples_ms=[float(v) for v in arr],
    )


def measure_interleaved(
    sessions: Sequence,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    batches: Sequence[int],
    warmup: int,
    runs: int,
    tick: Callable[[int], None] | None = None,
) -> list[LatencyStats]:
    """Time ``sessions[i].run(None, feeds[i])`` ``runs`` times each, interleaved.

    ``batches[i]`` is the number of samples in ``feeds[i]`` (for throughput).
    ``tick(n)`` is called after every ``n`` runs (for progress bars).
    """
    if runs < 1:
        raise ValueError("runs must be >= 1")
    count = len(sessions)
    for _ in range(max(0, warmup)):
        for session, feed in zip(sessions, feeds):
            session.run(None, feed)
        if tick:
            tick(count)
    times: list[list[float]] = [[] for _ in range(count)]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_index in range(runs):
            shift = round_index % count
            for i in [(shift + k) % count for k in range(count)]:
                session, feed = sessions[i], feeds[i]
                start = time.perf_counter_ns()
                session.run(None, feed)
                times[i].append((time.perf_counter_ns() - start) / 1e6)
            if tick:
                tick(count)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [latency_stats(t, b) for t, b in zip(times, batches)]
