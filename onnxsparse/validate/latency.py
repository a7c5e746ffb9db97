"""Latency of several sessions measured interleaved, so they share the machine's state.

Timing two models one after the other lets thermal throttling, frequency
scaling or a noisy neighbour favour one of them.  Here every round runs each
session once, rotating which goes first, after a common warm-up; each run is
timed on its own with ``perf_counter_ns`` and the garbage collector paused.

How many rounds: a fixed count (``runs``), or, by default, a time budget
(:class:`LatencyPlan`): rounds continue until at least ``min_runs`` rounds are
done *and* the timed loop has taken ``budget`` seconds per model, and stop at
``max_runs`` rounds whatever the time.  A model that takes 15 us per run then
gets tens of thousands of runs instead of 1.5 ms of measurement, and one that
takes a second gets ``min_runs``.

Throughput is ``batch / p50``: the same statistic as the latency columns, so a
single stalled run cannot make a faster p50 look like a lower throughput.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = [
    "LatencyStats",
    "LatencyPlan",
    "latency_plan",
    "latency_stats",
    "measure_interleaved",
    "measure_alternating",
    "phase_plans",
    "DEFAULT_BUDGET",
    "DEFAULT_MIN_RUNS",
    "DEFAULT_MAX_RUNS",
    "BUDGET_PROGRESS_UNITS",
    "ALTERNATING_PHASES",
]

#: Seconds of timed runs per model when no fixed ``runs`` is given.
DEFAULT_BUDGET = 1.0
#: Rounds made at least, however long they take (a model slower than budget / min_runs gets these).
DEFAULT_MIN_RUNS = 10
#: Rounds made at most, however fast the models are (bounds memory, reports and time for us-scale models).
DEFAULT_MAX_RUNS = 100_000
#: Progress-bar units one model's budget-timed loop is worth (the round count is not known in advance).
BUDGET_PROGRESS_UNITS = 100

#: Phases per model when the sessions cannot be alive together (:func:`measure_alternating`).
ALTERNATING_PHASES = 3

#: Why the timed loop stopped (``LatencyStats.stopped_by``).
STOP_REASONS = ("runs", "budget", "min_runs", "max_runs")


@dataclass
class LatencyStats:
    """Per-run latency in milliseconds; throughput in samples per second (``batch / p50``).

    ``runs`` is the number of timed runs actually made; ``stopped_by`` says why the loop
    ended (``runs``: the fixed count, ``budget``: the time budget after ``min_runs``,
    ``min_runs``: the minimum count after the budget, ``max_runs``: the cap);
    ``budget_seconds`` is the budget per model (None with a fixed count); ``loop_seconds``
    the wall time of the whole interleaved loop (every model's runs).
    """

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
    stopped_by: str | None = None
    budget_seconds: float | None = None
    loop_seconds: float | None = None
    samples_ms: list[float] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class LatencyPlan:
    """How many timed rounds: exactly ``runs``, or by ``budget`` seconds per model within
    ``[min_runs, max_runs]`` rounds (when ``runs`` is None)."""

    runs: int | None = None
    budget: float = DEFAULT_BUDGET
    min_runs: int = DEFAULT_MIN_RUNS
    max_runs: int = DEFAULT_MAX_RUNS

    @property
    def fixed(self) -> bool:
        return self.runs is not None

    @property
    def probe_runs(self) -> int:
        """Runs of the memory probe (a few are enough to reach the steady-state peak)."""
        return min(self.runs if self.runs is not None else self.min_runs, 5)

    def progress_units(self) -> int:
        """Progress-bar units of one model's timed loop (see :func:`measure_interleaved`)."""
        return self.runs if self.runs is not None else BUDGET_PROGRESS_UNITS

    def settings(self) -> dict[str, Any]:
        """The ``settings`` keys of the JSON reports."""
        if self.fixed:
            return {"runs": self.runs, "budget_seconds": None, "min_runs": None, "max_runs": None}
        return {"runs": None, "budget_seconds": self.budget, "min_runs": self.min_runs, "max_runs": self.max_runs}


def latency_plan(
    runs: int | None = None,
    budget: float | None = None,
    min_runs: int | None = None,
    max_runs: int | None = None,
) -> LatencyPlan:
    """A checked :class:`LatencyPlan`; ``None`` means the default.

    ``runs`` fixes the count, so it cannot be combined with the budget options
    (a usage error names the flags).
    """
    if runs is not None:
        if budget is not None or min_runs is not None or max_runs is not None:
            raise UsageError("--runs fixes the number of timed runs; --budget, --min-runs and --max-runs "
                             "only apply without it")
        if isinstance(runs, bool) or int(runs) != runs or runs < 1:
            raise UsageError(f"--runs must be >= 1, got {runs}")
        return LatencyPlan(runs=int(runs))
    plan = LatencyPlan(
        budget=DEFAULT_BUDGET if budget is None else budget,
        min_runs=DEFAULT_MIN_RUNS if min_runs is None else min_runs,
        max_runs=DEFAULT_MAX_RUNS if max_runs is None else max_runs,
    )
    if not (isinstance(plan.budget, (int, float)) and math.isfinite(plan.budget) and plan.budget >= 0):
        raise UsageError(f"--budget must be a number of seconds >= 0, got {plan.budget}")
    if isinstance(plan.min_runs, bool) or int(plan.min_runs) != plan.min_runs or plan.min_runs < 1:
        raise UsageError(f"--min-runs must be >= 1, got {plan.min_runs}")
    if isinstance(plan.max_runs, bool) or int(plan.max_runs) != plan.max_runs or plan.max_runs < plan.min_runs:
        raise UsageError(f"--max-runs must be >= --min-runs ({plan.min_runs}), got {plan.max_runs}")
    return LatencyPlan(budget=float(plan.budget), min_runs=int(plan.min_runs), max_runs=int(plan.max_runs))


def latency_stats(
    samples_ms: Sequence[float],
    batch: int,
    *,
    stopped_by: str | None = None,
    budget_seconds: float | None = None,
    loop_seconds: float | None = None,
) -> LatencyStats:
    """Summarise run times (ms) of runs over ``batch`` samples each; throughput = ``batch / p50``."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
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
        throughput=batch * 1e3 / float(p50) if p50 > 0 else float("inf"),
        stopped_by=stopped_by,
        budget_seconds=budget_seconds,
        loop_seconds=loop_seconds,
        samples_ms=[float(v) for v in arr],
    )


def measure_interleaved(
    sessions: Sequence,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    batches: Sequence[int],
    warmup: int,
    runs: int | None = None,
    budget: float | None = None,
    min_runs: int | None = None,
    max_runs: int | None = None,
    plan: LatencyPlan | None = None,
    tick: Callable[[int], None] | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[LatencyStats]:
    """Time ``sessions[i].run(None, feeds[i])`` in interleaved rounds.

    The rounds are ``runs`` (a fixed count) or, by default, as many as the time
    budget asks: at least ``min_runs``, until the loop has taken ``budget``
    seconds per session, at most ``max_runs`` (see :func:`latency_plan`; or pass
    a ready ``plan``).  ``batches[i]`` is the number of samples in ``feeds[i]``
    (for throughput).  ``tick(n)`` reports progress: ``len(sessions)`` per warm-up
    round, then ``len(sessions)`` per timed round with a fixed count, or
    ``len(sessions) * BUDGET_PROGRESS_UNITS`` spread over a budget-timed loop.
    ``clock`` returns nanoseconds (``perf_counter_ns``; tests pass a fake one).
    """
    if plan is None:
        try:
            plan = latency_plan(runs, budget, min_runs, max_runs)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
    count = len(sessions)
    for _ in range(max(0, warmup)):
        for session, feed in zip(sessions, feeds):
            session.run(None, feed)
        if tick:
            tick(count)
    times: list[list[float]] = [[] for _ in range(count)]
    budget_ns = plan.budget * 1e9 * count
    cap = plan.runs if plan.runs is not None else plan.max_runs
    units, sent = count * plan.progress_units(), 0
    stopped_by = "runs" if plan.fixed else "max_runs"
    gc_was_enabled = gc.isenabled()
    gc.disable()
    loop_start = clock()
    elapsed = 0
    budget_round: int | None = None  # the round after which the budget was used up
    try:
        for round_index in range(cap):
            shift = round_index % count
            for i in [(shift + k) % count for k in range(count)]:
                session, feed = sessions[i], feeds[i]
                start = clock()
                session.run(None, feed)
                times[i].append((clock() - start) / 1e6)
            done = round_index + 1
            if plan.fixed:
                if tick:
                    tick(count)
                continue
            elapsed = clock() - loop_start
            if elapsed >= budget_ns and budget_round is None:
                budget_round = done
            if done >= plan.min_runs and budget_round is not None:
                stopped_by = "min_runs" if budget_round < done else "budget"  # what was awaited last
                break
            if tick:  # progress towards whichever stop comes first: (min runs and budget) or the cap
                fraction = max(done / cap, min(done / plan.min_runs, elapsed / budget_ns if budget_ns else 1.0))
                due = min(units, int(fraction * units))
                if due > sent:
                    tick(due - sent)
                    sent = due
        else:
            elapsed = clock() - loop_start
    finally:
        if gc_was_enabled:
            gc.enable()
    if tick and not plan.fixed and units > sent:
        tick(units - sent)
    budget_seconds = None if plan.fixed else plan.budget
    return [latency_stats(t, b, stopped_by=stopped_by, budget_seconds=budget_seconds, loop_seconds=elapsed / 1e9)
            for t, b in zip(times, batches)]


def phase_plans(plan: LatencyPlan, phases: int) -> list[LatencyPlan]:
    """``plan`` split into at most ``phases`` plans whose run counts (or budget, min and max runs) add up to it."""
    if plan.runs is not None:
        count = max(1, min(phases, plan.runs))
        return [LatencyPlan(runs=plan.runs // count + (1 if k < plan.runs % count else 0)) for k in range(count)]
    count = max(1, min(phases, plan.min_runs))
    return [LatencyPlan(budget=plan.budget / count, min_runs=math.ceil(plan.min_runs / count),
                        max_runs=math.ceil(plan.max_runs / count)) for _ in range(count)]


def measure_alternating(
    open_session: Callable[[int], Any],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    batches: Sequence[int],
    warmup: int,
    plan: LatencyPlan,
    phases: int = ALTERNATING_PHASES,
    tick: Callable[[int], None] | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[LatencyStats]:
    """Time ``len(feeds)`` models with one session alive at a time, in alternating phases.

    For models whose sessions do not fit in memory together: ``plan``'s rounds are split into
    ``phases`` parts (:func:`phase_plans`); in every phase each model in turn (rotating which goes
    first) gets a fresh session from ``open_session(i)``, ``warmup`` runs and its part of the timed
    runs, and the session is released before the next model's is opened.  So machine drift is shared
    phase by phase instead of run by run; the run counts are those of the interleaved measurement.
    ``tick`` gets the same total as :func:`measure_interleaved` would send.
    """
    count = len(feeds)
    parts = phase_plans(plan, phases)
    samples: list[list[float]] = [[] for _ in range(count)]
    loop_ns = [0.0] * count
    stopped: list[str | None] = [None] * count
    units = warmup + plan.progress_units()
    for index, part in enumerate(parts):
        for i in [(index + k) % count for k in range(count)]:
            session = open_session(i)
            (stats,) = measure_interleaved([session], [feeds[i]], batches=[batches[i]], warmup=warmup, plan=part,
                                           clock=clock)
            del session
            samples[i] += stats.samples_ms
            loop_ns[i] += (stats.loop_seconds or 0.0) * 1e9
            stopped[i] = stats.stopped_by
            if tick:
                tick(units // len(parts) + (units % len(parts) if index == len(parts) - 1 else 0))
    budget_seconds = None if plan.fixed else plan.budget
    return [latency_stats(samples[i], batches[i], stopped_by="runs" if plan.fixed else stopped[i],
                          budget_seconds=budget_seconds, loop_seconds=loop_ns[i] / 1e9) for i in range(count)]
