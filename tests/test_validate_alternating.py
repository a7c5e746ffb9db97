"""Sessions that do not fit the memory budget together: one alive at a time, latency in alternating phases.

The mode is forced with a budget one byte below the two small models' weights; the numbers that do not
depend on timing (fidelity, metrics, noise) must equal the interleaved path's exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import sample
from onnxsparse import limits
from onnxsparse.io import model_file_bytes
from onnxsparse.validate import validate
from onnxsparse.validate.latency import LatencyPlan, measure_alternating, phase_plans
from test_validate_latency import MS, FakeClock, FakeSession
from test_validate_support import DIGITS_X, DIGITS_Y, edited_digits

DIGITS = sample("digits_cnn")


def test_phase_plans_split_the_run_counts():
    assert [p.runs for p in phase_plans(LatencyPlan(runs=10), 3)] == [4, 3, 3]
    assert [p.runs for p in phase_plans(LatencyPlan(runs=2), 3)] == [1, 1]
    parts = phase_plans(LatencyPlan(budget=1.5, min_runs=10, max_runs=100), 3)
    assert [(p.budget, p.min_runs, p.max_runs) for p in parts] == [(0.5, 4, 34)] * 3


def test_one_session_alive_at_a_time_and_every_run_counted():
    clock, log, live, opened = FakeClock(), [], [], []

    class Tracked(FakeSession):
        def __del__(self) -> None:
            live.remove(self.name)

    def open_session(i: int) -> Tracked:
        assert live == [], f"model {i} opened while {live} is alive"
        opened.append(i)
        live.append(f"m{i}")
        return Tracked(clock, [(i + 1) * MS], name=f"m{i}", log=log)

    ticks: list[int] = []
    ref, cand = measure_alternating(open_session, [{}, {}], batches=[1, 2], warmup=2, plan=LatencyPlan(runs=7),
                                    tick=ticks.append, clock=clock)
    assert opened == [0, 1, 1, 0, 0, 1]  # the first model alternates
    assert len(log) == 3 * 2 * 2 + 2 * 7  # warm-up in every phase, the timed runs split 3 + 2 + 2
    assert (ref.runs, cand.runs) == (7, 7) and ref.stopped_by == cand.stopped_by == "runs"
    assert ref.p50_ms == pytest.approx(1.0) and cand.p50_ms == pytest.approx(2.0)
    assert cand.throughput == pytest.approx(1000.0)  # batch 2 / 2 ms
    assert sum(ticks) == 2 * (2 + 7)  # what the interleaved loop sends


@pytest.fixture(scope="module")
def candidate(tmp_path_factory):
    return edited_digits(tmp_path_factory.mktemp("alt") / "noisy.onnx", noise=0.01)


def test_forced_alternating_matches_interleaved(candidate):
    kwargs = dict(data=DIGITS_X, labels=DIGITS_Y, runs=4, warmup=1, memory=False, noise=0.05)
    normal = validate(DIGITS, candidate, **kwargs)
    need = model_file_bytes(DIGITS) + model_file_bytes(candidate)
    with limits.max_memory(need - 1):
        alt = validate(DIGITS, candidate, **kwargs)
    (p,), (q,) = normal.providers, alt.providers
    assert p.latency_mode == "interleaved" and q.latency_mode == "alternating"
    assert not any("alternating" in n for n in normal.notes)
    (note,) = [n for n in alt.notes if n.startswith("latency measured in alternating phases")]
    assert "over the memory budget" in note
    assert q.samples == p.samples == 360
    for a, b in zip(p.fidelity, q.fidelity):
        assert (a.max_abs_error, a.mean_abs_error, a.cosine, a.top1_agreement) == \
            (b.max_abs_error, b.mean_abs_error, b.cosine, b.top1_agreement)
    assert [(m.reference, m.candidate) for m in p.metrics] == [(m.reference, m.candidate) for m in q.metrics]
    assert p.noise is not None and q.noise is not None
    assert [f.cosine for f in p.noise.fidelity] == [f.cosine for f in q.noise.fidelity]
    assert p.noise.metrics and p.noise.metrics == q.noise.metrics
    for session in (q.reference, q.candidate):
        assert session.latency.runs == 4  # the same timed runs, in phases of 2 + 1 + 1
        assert len(session.session_samples_s) == 4  # the first opening plus one per phase
        assert session.session_seconds == min(session.session_samples_s) > 0
    assert np.isfinite(q.latency_ratio)
    assert alt.to_dict()["providers"][0]["latency_mode"] == "alternating"
