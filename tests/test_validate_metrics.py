"""Each fidelity/accuracy/latency metric on constructed values with answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxsparse.errors import DataError, UsageError
from onnxsparse.validate.svg import log_ticks, nice_ticks
from onnxsparse.validate.latency import latency_stats, measure_interleaved
from onnxsparse.validate.metrics import (
    FidelityAccumulator,
    fidelity,
    is_classifier_like,
    resolve_metric,
    top_k_accuracy,
)


def test_identical_outputs_are_perfect():
    ref = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
    f = fidelity(ref, ref.copy(), "logits")
    assert f.max_abs_error == 0 and f.mean_abs_error == 0 and f.rel_error == 0
    assert f.cosine == pytest.approx(1.0, abs=1e-12) and f.cosine_min == pytest.approx(1.0, abs=1e-12)
    assert f.top1_agreement == 1.0 and f.top5_overlap == 1.0
    assert f.classifier and f.elements == 60 and f.shape == [6, 10] and f.error is None


def test_abs_and_relative_error_known_answer():
    ref = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    cand = np.array([[3.0, 4.5], [0.0, -1.0]], np.float32)
    f = fidelity(ref, cand, "y")
    assert f.max_abs_error == pytest.approx(1.0)
    assert f.mean_abs_error == pytest.approx(1.5 / 4)
    # ||d|| = sqrt(0.25 + 1) ; ||r|| = 5
    assert f.rel_error == pytest.approx(math.sqrt(1.25) / 5)


def test_cosine_per_sample_known_answers():
    ref = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0]], np.float32)
    cand = np.array([[0.0, 1.0], [2.0, 2.0], [-2.0, 0.0], [0.0, 0.0]], np.float32)
    # orthogonal 0, scaled 1, opposite -1, both zero counts as agreement 1
    f = fidelity(ref, cand, "feat")
    assert f.cosine == pytest.approx((0 + 1 - 1 + 1) / 4)
    assert f.cosine_min == pytest.approx(-1.0)


def test_cosine_zero_against_nonzero_is_zero():
    f = fidelity(np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]]), "feat")
    assert f.cosine == 0.0


def test_cosine_of_rank1_output_uses_the_whole_vector():
    ref = np.array([1.0, 2.0, 3.0])
    cand = np.array([1.0, 2.0, -3.0])
    f = fidelity(ref, cand, "score")
    assert f.cosine == pytest.approx((1 + 4 - 9) / 14)


def test_scaled_output_has_cosine_one_and_known_relative_error():
    ref = np.random.default_rng(1).standard_normal((5, 3, 4)).astype(np.float32)
    f = fidelity(ref, 2 * ref, "hidden")
    assert f.cosine == pytest.approx(1.0, abs=1e-6)
    assert f.rel_error == pytest.approx(1.0, rel=1e-6)
    assert f.max_abs_error == pytest.approx(float(np.abs(ref).max()), rel=1e-6)
    assert not f.classifier and f.top1_agreement is None  # rank 3, name not classifier-like


def test_top1_agreement_and_top5_overlap_known_answers():
    classes = 10
    ref = np.tile(np.arange(classes, 0, -1, dtype=np.float32), (4, 1))  # top-5 = {0..4}, top-1 = 0
    cand = ref.copy()
    cand[1] = np.roll(ref[1], 2)  # top-5 = {2..6}: overlap 3; argmax 2 -> disagrees
    cand[2, 9] = 100.0  # argmax 9 (disagrees); top-5 = {9, 0..3}: overlap 4
    f = fidelity(ref, cand, "logits")
    assert f.top1_agreement == pytest.approx(2 / 4)
    assert f.top5_overlap == pytest.approx((5 + 3 + 4 + 5) / 5 / 4)


def test_top5_overlap_undefined_with_five_classes_or_fewer():
    ref = np.eye(5, dtype=np.float32)
    f = fidelity(ref, ref, "logits")
    assert f.top1_agreement == 1.0 and f.top5_overlap is None


def test_classifier_detection():
    assert is_classifier_like("out", np.float32, (8, 10))
    assert is_classifier_like("logits", np.float32, (2, 7, 64))
    assert not is_classifier_like("last_hidden_state", np.float32, (2, 7, 64))
    assert not is_classifier_like("out", np.int64, (8, 10))
    assert not is_classifier_like("out", np.float32, (8, 1))
    assert not is_classifier_like("out", np.float32, (8,))


def test_streaming_equals_whole():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((9, 12)).astype(np.float32)
    cand = ref + 0.1 * rng.standard_normal((9, 12)).astype(np.float32)
    whole = fidelity(ref, cand, "logits")
    acc = FidelityAccumulator("logits")
    for start in range(0, 9, 4):
        acc.update(ref[start:start + 4], cand[start:start + 4])
    streamed = acc.result()
    assert streamed.shape == whole.shape == [9, 12]
    for key in ("max_abs_error", "mean_abs_error", "rel_error", "cosine", "cosine_min", "top1_agreement",
                "top5_overlap"):
        assert getattr(streamed, key) == pytest.approx(getattr(whole, key), rel=1e-12), key


def test_integer_outputs_exact_match():
    f = fidelity(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]), "label")
    assert f.exact_match == pytest.approx(0.75)
    assert f.max_abs_error == 3 and f.cosine is None and f.top1_agreement is None


def test_nan_in_candidate_is_never_a_small_error():
    ref = np.ones((2, 3), np.float32)
    cand = ref.copy()
    cand[0, 1] = np.nan
    f = fidelity(ref, cand, "y")
    assert f.nonfinite == 1
    assert math.isnan(f.max_abs_error) and math.isnan(f.rel_error)


def test_shape_mismatch_is_an_error_not_a_number():
    f = fidelity(np.zeros((2, 10)), np.zeros((2, 8)), "logits")
    assert f.error and "shape mismatch" in f.error and f.max_abs_error is None


def test_top_k_accuracy_known_answers():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 1, 2, 2])
    assert top_k_accuracy(scores, labels, 1) == pytest.approx(2 / 4)
    assert top_k_accuracy(scores, labels, 2) == pytest.approx(3 / 4)
    assert top_k_accuracy(scores, labels, 5) == 1.0  # k > classes: every label is in the top k
    # A model that outputs class indices is compared directly.
    assert top_k_accuracy(np.array([1, 0, 2, 0]), labels, 1) == pytest.approx(2 / 4)


def test_top_k_accuracy_rejects_bad_labels():
    with pytest.raises(DataError, match="classes"):
        top_k_accuracy(np.zeros((2, 3)), np.array([0, 3]), 1)
    with pytest.raises(DataError, match="shape"):
        top_k_accuracy(np.zeros((2, 3)), np.array([0, 1, 2]), 1)


def mean_error(output, labels):
    """A lower-is-better metric for the plug-in test."""
    return float(np.mean(np.abs(output[:, 0] - labels)))


mean_error.higher_is_better = False


def test_plugin_metric_by_module_function():
    metric = resolve_metric("test_validate_metrics:mean_error")
    assert metric.name == "test_validate_metrics:mean_error" and not metric.higher_is_better
    assert metric(np.array([[1.0], [3.0]]), np.array([0.0, 0.0])) == pytest.approx(2.0)
    assert metric.drop(reference=1.0, candidate=1.5) == pytest.approx(0.5)
    assert resolve_metric("top1").drop(reference=0.9, candidate=0.8) == pytest.approx(0.1)


@pytest.mark.parametrize("spec, message", [("nope", "unknown metric"), ("no_such_module_xyz:f", "cannot import"),
                                           ("test_validate_metrics:missing", "no attribute")])
def test_bad_metric_specs(spec, message):
    with pytest.raises(UsageError, match=message):
        resolve_metric(spec)


def test_latency_stats_known_answer():
    stats = latency_stats([float(v) for v in range(1, 101)], batch=4)
    assert stats.p50_ms == pytest.approx(50.5) and stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01) and stats.min_ms == 1 and stats.max_ms == 100
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.throughput == pytest.approx(4 * 1000 / 50.5)  # batch / p50 (ms)


def test_measure_interleaved_alternates_order_and_counts():
    order: list[str] = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def run(self, names, feeds):
            order.append(self.name)

    stats = measure_interleaved([Fake("a"), Fake("b")], [{}, {}], batches=[1, 8], warmup=2, runs=4)
    assert order[:4] == ["a", "b", "a", "b"]  # warm-up
    assert order[4:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # who goes first alternates
    assert [s.runs for s in stats] == [4, 4] and [s.batch for s in stats] == [1, 8]


def test_nice_and_log_ticks():
    assert nice_ticks(0.0, 1.0) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ticks = nice_ticks(57.6, 60.5)
    assert ticks[0] <= 57.6 and ticks[-1] >= 60.5 and len(ticks) <= 8
    assert log_ticks(0.013, 17.0) == pytest.approx([0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20])
