"""The latency loop on a fake clock: throughput follows the median, and the time budget stops
the loop by time, by the minimum count, by the cap, or at a fixed count.  Nothing here depends
on how fast this machine is: every "run" advances a fake nanosecond clock by a scripted latency."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import sample
from onnxsparse.errors import UsageError
from onnxsparse.validate import svg as _svg
from onnxsparse.validate._tables import bench_tables, validation_tables
from onnxsparse.validate.bench import BenchResult, BenchRow
from onnxsparse.validate.latency import (
    BUDGET_PROGRESS_UNITS,
    DEFAULT_BUDGET,
    DEFAULT_MAX_RUNS,
    DEFAULT_MIN_RUNS,
    LatencyPlan,
    latency_plan,
    latency_stats,
    measure_interleaved,
)
from onnxsparse.validate.reports import render_markdown, render_text

MS = 1_000_000  # ns


class FakeClock:
    """Nanoseconds that only move when a fake session runs."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class FakeSession:
    """``run`` takes the next scripted latency (ns) of the fake clock; the last one repeats."""

    def __init__(self, clock: FakeClock, latencies_ns, name: str = "", log: list | None = None) -> None:
        self.clock, self.latencies, self.name, self.log = clock, list(latencies_ns), name, log
        self.calls = 0

    def run(self, names, feeds):
        self.clock.now += self.latencies[min(self.calls, len(self.latencies) - 1)]
        self.calls += 1
        if self.log is not None:
            self.log.append(self.name)


def _measure(latencies: list[list[int]], **kwargs):
    clock = FakeClock()
    sessions = [FakeSession(clock, lat) for lat in latencies]
    stats = measure_interleaved(sessions, [{}] * len(sessions), batches=kwargs.pop("batches", [1] * len(sessions)),
                                warmup=kwargs.pop("warmup", 0), clock=clock, **kwargs)
    return stats, sessions, clock


# ------------------------------------------------------------------------------ throughput = batch / p50


def test_one_stall_moves_the_mean_but_not_the_throughput():
    """The digits-CNN symptom: p50 says faster, the mean-based samples/s said 3x slower."""
    ref = [0.0166] * 100
    cand = [0.0133] * 99 + [4.0]  # one 4 ms stall among 13 us runs
    r, c = latency_stats(ref, batch=1), latency_stats(cand, batch=1)
    assert c.p50_ms < r.p50_ms and c.mean_ms > r.mean_ms  # the stall dominates the mean
    assert r.throughput == pytest.approx(1e3 / 0.0166) and c.throughput == pytest.approx(1e3 / 0.0133)
    assert c.throughput > r.throughput  # consistent with p50: faster is more samples/s
    assert c.throughput / r.throughput == pytest.approx(r.p50_ms / c.p50_ms)


def test_throughput_scales_with_batch_and_uses_the_median_of_an_even_count():
    stats = latency_stats([2.0, 4.0, 6.0, 1000.0], batch=8)
    assert stats.p50_ms == 5.0 and stats.throughput == pytest.approx(8 * 1000 / 5.0)
    assert latency_stats([0.0, 0.0, 1.0], batch=1).throughput == float("inf")  # reported as null in JSON


def test_measured_stall_throughput_follows_median():
    stall = [50 * MS] + [1 * MS] * 1000  # the very first timed run of the candidate stalls
    stats, _, _ = _measure([[2 * MS], stall], runs=21, batches=[4, 4])
    ref, cand = stats
    assert ref.p50_ms == pytest.approx(2.0) and cand.p50_ms == pytest.approx(1.0)
    assert cand.max_ms == pytest.approx(50.0) and cand.mean_ms > ref.mean_ms
    assert ref.throughput == pytest.approx(4 * 1000 / 2.0) and cand.throughput == pytest.approx(4 * 1000 / 1.0)


# ------------------------------------------------------------------------------ how long the loop runs


def test_budget_stops_by_time():
    # 1 ms + 3 ms per round; budget 0.1 s per model -> 0.2 s of loop -> 50 rounds
    stats, sessions, clock = _measure([[1 * MS], [3 * MS]], budget=0.1, min_runs=5, max_runs=10_000)
    assert [s.runs for s in stats] == [50, 50] and [s.calls for s in sessions] == [50, 50]
    assert all(s.stopped_by == "budget" and s.budget_seconds == 0.1 for s in stats)
    assert stats[0].loop_seconds == pytest.approx(0.2) and clock.now == 200 * MS


def test_budget_stops_by_cap_for_tiny_models():
    stats, sessions, _ = _measure([[1_000], [2_000]], budget=5.0, min_runs=3, max_runs=40)  # 1 us, 2 us
    assert [s.runs for s in stats] == [40, 40] and all(s.stopped_by == "max_runs" for s in stats)
    assert stats[0].loop_seconds == pytest.approx(40 * 3e-6)


def test_min_runs_outlast_the_budget_for_huge_models():
    stats, _, _ = _measure([[700 * MS], [900 * MS]], budget=1.0, min_runs=7, max_runs=100)
    assert [s.runs for s in stats] == [7, 7] and all(s.stopped_by == "min_runs" for s in stats)


def test_fixed_runs_ignore_time():
    stats, _, _ = _measure([[900 * MS], [1_000]], runs=12)
    assert [s.runs for s in stats] == [12, 12]
    assert all(s.stopped_by == "runs" and s.budget_seconds is None for s in stats)


def test_default_plan_is_a_budget():
    # 10 ms per run, 2 models: the default 1 s per model is 100 rounds (above the default minimum)
    stats, _, _ = _measure([[10 * MS], [10 * MS]])
    assert [s.runs for s in stats] == [100, 100] and stats[0].stopped_by == "budget"
    assert stats[0].budget_seconds == DEFAULT_BUDGET


def test_budget_loop_still_interleaves_and_warms_up():
    clock, log = FakeClock(), []
    sessions = [FakeSession(clock, [MS], "a", log), FakeSession(clock, [MS], "b", log)]
    measure_interleaved(sessions, [{}, {}], batches=[1, 1], warmup=1, budget=0.002, min_runs=2, max_runs=9,
                        clock=clock)
    assert log == ["a", "b", "a", "b", "b", "a"]  # warm-up round, then rounds alternating who goes first


def test_progress_ticks_add_up_to_the_planned_units():
    for kwargs, timed_units in (({"runs": 7}, 7), ({"budget": 0.05, "min_runs": 2, "max_runs": 1000},
                                                   BUDGET_PROGRESS_UNITS),
                                ({"budget": 9.0, "min_runs": 2, "max_runs": 30}, BUDGET_PROGRESS_UNITS)):
        ticks: list[int] = []
        clock = FakeClock()
        sessions = [FakeSession(clock, [MS]), FakeSession(clock, [2 * MS])]
        measure_interleaved(sessions, [{}, {}], batches=[1, 1], warmup=3, tick=ticks.append, clock=clock, **kwargs)
        assert sum(ticks) == 2 * (3 + timed_units) and all(t > 0 for t in ticks)


@pytest.mark.parametrize("kwargs, message", [
    ({"runs": 0}, "--runs must be >= 1"),
    ({"runs": 5, "budget": 1.0}, "--runs fixes the number"),
    ({"runs": 5, "max_runs": 9}, "--runs fixes the number"),
    ({"budget": -1.0}, "--budget must be"),
    ({"budget": float("nan")}, "--budget must be"),
    ({"min_runs": 0}, "--min-runs must be >= 1"),
    ({"min_runs": 50, "max_runs": 10}, "--max-runs must be >= --min-runs"),
])
def test_bad_plans(kwargs, message):
    with pytest.raises(UsageError, match=message):
        latency_plan(**kwargs)


def test_plan_settings():
    assert latency_plan().settings() == {"runs": None, "budget_seconds": DEFAULT_BUDGET,
                                         "min_runs": DEFAULT_MIN_RUNS, "max_runs": DEFAULT_MAX_RUNS}
    assert latency_plan(runs=3).settings() == {"runs": 3, "budget_seconds": None, "min_runs": None,
                                               "max_runs": None}
    assert latency_plan(budget=2, min_runs=1, max_runs=1).settings()["budget_seconds"] == 2.0
    assert LatencyPlan(runs=3).probe_runs == 3 and LatencyPlan().probe_runs == 5


# ------------------------------------------------------------------------------ what the reports show


def test_validate_budget_reaches_every_output(monkeypatch):
    """validate(): settings and latency objects carry the budget and the runs made; text shows both."""
    from onnxsparse.validate import runner

    real = runner.measure_interleaved
    seen = {}

    def scripted(sessions, feeds, *, batches, warmup, plan, tick):
        seen["plan"] = plan
        clock = FakeClock()
        fakes = [FakeSession(clock, [1 * MS] * 5 + [80 * MS] + [1 * MS]), FakeSession(clock, [800_000])]
        return real(fakes, feeds, batches=batches, warmup=0, plan=plan, tick=tick, clock=clock)

    monkeypatch.setattr(runner, "measure_interleaved", scripted)
    result = runner.validate(sample("digits_cnn"), sample("digits_cnn"), budget=0.01, min_runs=3, max_runs=500,
                             memory=False, session_repeats=1)
    assert seen["plan"] == LatencyPlan(budget=0.01, min_runs=3, max_runs=500)
    data = json.loads(json.dumps(result.to_dict()))
    assert {k: data["settings"][k] for k in ("runs", "budget_seconds", "min_runs", "max_runs")} == {
        "runs": None, "budget_seconds": 0.01, "min_runs": 3, "max_runs": 500}
    p = data["providers"][0]
    ref, cand = p["reference"]["latency"], p["candidate"]["latency"]
    # rounds of 1.8 ms (one of 80.8 ms) until 20 ms: the stall round alone passes the budget
    assert ref["runs"] == cand["runs"] == 6 == len(ref["samples_ms"]) and ref["stopped_by"] == "budget"
    assert ref["budget_seconds"] == 0.01 and ref["loop_seconds"] == pytest.approx((5 * 1.8 + 80.8) / 1e3)
    assert ref["throughput"] == pytest.approx(1e3 / ref["p50_ms"]) and ref["p50_ms"] == pytest.approx(1.0)
    assert cand["throughput"] == pytest.approx(1e3 / 0.8)
    text = render_text(result)
    assert "interleaved runs for 0.01 s per model (3-500 runs)" in text and "samples/s = batch / p50" in text
    row = next(line for line in text.splitlines() if line.startswith("cpu") and "reference" in line)
    assert " 1000 " in row and " 6 " in row  # samples/s from the median, runs made
    assert "| runs |" in render_markdown(result)


def _bench_result(settings) -> BenchResult:
    lat = latency_stats([1.0, 1.0, 9.0], batch=2, stopped_by="runs")
    row = BenchRow("m.onnx", "cpu", "CPUExecutionProvider", "cpu", None, 2, True, latency=lat)
    return BenchResult([], [row], {"warmup": 0, **settings}, {}, [])


def test_infinite_throughput_renders_as_missing():
    row = BenchRow("m.onnx", "cpu", "CPUExecutionProvider", "cpu", None, 1, True,
                   latency=latency_stats([0.0, 0.0, 1.0], batch=1, stopped_by="runs"))
    result = BenchResult([], [row], {"warmup": 0, **latency_plan(runs=3).settings()}, {}, [])
    table = bench_tables(result)[1]
    assert dict(zip(table.headers, table.rows[0]))["samples/s"] is None
    assert json.loads(json.dumps(result.to_dict()))["rows"][0]["latency"]["throughput"] is None


def test_bench_table_shows_runs_and_budget():
    table = bench_tables(_bench_result(latency_plan(budget=0.5).settings()))[1]
    assert "0.5 s per model" in table.title and "runs" in table.headers
    row = dict(zip(table.headers, table.rows[0]))
    assert row["runs"] == 3 and row["samples/s"] == 2000
    fixed = bench_tables(_bench_result(latency_plan(runs=3).settings()))[1]
    assert fixed.title.startswith("Latency (3 interleaved runs after 0 warm-up")


def test_box_plot_thins_long_series(monkeypatch):
    monkeypatch.setattr(_svg, "MAX_DOTS", 50)
    values = np.concatenate([np.full(999, 1.0), [7.0]])
    svg = _svg.box_plot([_svg.Series("x", values, "#000")], title="t")
    assert svg.count("<circle") == 50 and "data-count='1000'" in svg and "50 evenly spaced quantiles" in svg
    assert "data-value='7'" in svg  # the max is always drawn
    short = _svg.box_plot([_svg.Series("x", [1.0, 2.0, 3.0], "#000")], title="t")
    assert short.count("<circle") == 3


def test_validation_tables_title_for_fixed_runs():
    settings = {"batch": 1, "threads": None, "warmup": 2, **latency_plan(runs=4).settings()}

    class R:  # the parts validation_tables reads
        pass

    r = R()
    r.settings, r.providers, r.checks, r.available_providers, r.primary = settings, [], [], [], None
    info = type("I", (), {"role": "reference", "path": "a", "file_bytes": 1, "params": None, "macs": None,
                          "zero_fraction": None})()
    r.reference = r.candidate = info
    latency = validation_tables(r)[1]
    assert latency.title == ("Latency (batch 1, threads auto, 4 interleaved runs after 2 warm-up; "
                             "samples/s = batch / p50)")


def test_recipe_validate_step_takes_the_budget_keys():
    from onnxsparse.recipe import RecipeError, load_recipe

    recipe = load_recipe({"steps": [{"prune": {"channels": 0.25}},
                                    {"validate": {"budget": 0.5, "min_runs": 4, "max_runs": 80}}]})
    kwargs = recipe.steps[1].validate_kwargs()
    assert {k: kwargs[k] for k in ("runs", "budget", "min_runs", "max_runs")} == {
        "runs": None, "budget": 0.5, "min_runs": 4, "max_runs": 80}
    assert load_recipe(recipe.to_dict()).steps == recipe.steps
    with pytest.raises(RecipeError, match=r"steps\.1\.validate\.runs: runs fixes the number"):
        load_recipe({"steps": [{"prune": {"channels": 0.25}}, {"validate": {"runs": 5, "budget": 1}}]})
    with pytest.raises(RecipeError, match=r"steps\.1\.validate\.max_runs: max_runs must be >= min_runs"):
        load_recipe({"steps": [{"prune": {"channels": 0.25}}, {"validate": {"min_runs": 9, "max_runs": 3}}]})
