"""``prune --threshold T``: remove every unit whose raw criterion score is below T, no ratio."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_pruned_matches_masked, cli, runtime_bytes, sample

from onnxsparse import load_model
from onnxsparse.errors import UsageError
from onnxsparse.graph import apply_plan, build_groups, masked_copy
from onnxsparse.passes.prune import plan_pruning, prepare_for_analysis, prune, score_groups
from onnxsparse.passes.prune_select import select_threshold
from onnxsparse.recipe import RecipeError, run_recipe


def test_select_threshold_removes_exactly_the_units_below() -> None:
    scores = {0: np.array([0.0, 3.0, 1e-9, 2.0, 5.0]), 1: np.array([1.0, 2.0]), 2: np.array([0.0, 0.0, 0.0])}
    removed = select_threshold(scores, 1e-8)
    assert {k: v.tolist() for k, v in removed.items()} == {0: [0, 2], 2: [0, 1]}  # min_keep 1: the last stays
    assert {k: v.tolist() for k, v in select_threshold(scores, 2.0).items()} == {0: [0, 2], 1: [0], 2: [0, 1]}
    assert select_threshold(scores, 0.0) == {}  # nothing is below 0


def test_rounding_and_min_keep_only_ever_keep_more() -> None:
    scores = {0: np.array([0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0])}
    assert 0 not in select_threshold(scores, 0.5, round_to=4)  # 5 kept rounds up to 8: nothing goes
    assert select_threshold(scores, 0.5, round_to={0: 3})[0].tolist() == [0, 1]  # 5 -> 6 kept
    assert select_threshold(scores, 0.5, min_keep=7)[0].tolist() == [0]
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(UsageError, match="threshold"):
            select_threshold(scores, bad)


def test_threshold_plan_matches_the_masked_oracle() -> None:
    """T at the median l2 score of digits_cnn_bn's units: the plan removes exactly the units below T
    (every group keeps at least one) and the pruned model computes what the masked original does."""
    model = prepare_for_analysis(load_model(sample("digits_cnn_bn")))
    dg = build_groups(model)
    scores, _ = score_groups(dg, "l2")
    threshold = float(np.median(np.concatenate(list(scores.values()))))
    plan, used = plan_pruning(dg, 0.0, threshold=threshold, round_to=1)
    expected = {gid: np.nonzero(s < threshold)[0].tolist() for gid, s in scores.items()}
    assert {gid: list(idx) for gid, idx in plan.removed.items()} == {g: i for g, i in expected.items() if i}
    assert sum(map(len, plan.removed.values())) >= 30 and set(used.values()) == {"l2"}
    original, masked = runtime_bytes(model), runtime_bytes(masked_copy(model, plan))
    apply_plan(plan)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    assert_pruned_matches_masked("digits_cnn_bn", original, masked, runtime_bytes(model), {"input": x})


def test_threshold_replaces_the_ratios_everywhere(tmp_path) -> None:
    out = tmp_path / "p.onnx"
    code, _, err = cli("prune", sample("digits_cnn"), "-o", out, "--threshold", "0.1", "--channels", "0.3")
    assert code == 2 and "--threshold replaces the ratios" in err
    code, _, err = cli("prune", sample("digits_cnn"), "-o", out, "--threshold", "-1")
    assert code == 2 and "must be >= 0" in err
    with pytest.raises(UsageError, match="replaces the ratios"):
        prune(sample("digits_cnn"), 0.3, threshold=0.1)
    with pytest.raises(RecipeError, match="threshold replaces the ratios"):
        run_recipe({"steps": [{"prune": {"channels": 0.3, "threshold": 0.1}}]}, sample("digits_cnn"))
    # a threshold above every score leaves min_keep units per group, as the CLI and a recipe both do
    code, text, err = cli("prune", sample("digits_cnn"), "-o", out, "--threshold", "1e9", "--round-to", "1")
    assert code == 0, err
    assert "score < 1e+09" in text
    kept = {t.name: tuple(t.dims) for t in onnx.load(out).graph.initializer}
    result = run_recipe({"steps": [{"prune": {"threshold": 1e9, "round_to": 1}}]}, sample("digits_cnn"))
    assert {k: tuple(v.shape) for k, v in result.model.graph.initializers.items()} == kept
    assert all(g["kept"] == 1 for g in result.steps[0].report["channels"]["groups"])


def test_log_histogram_counts_per_decade_with_zeros_apart() -> None:
    from onnxsparse.criteria.histogram import histogram_line, log_histogram

    hist = log_histogram([0.0, 0.0, 1e-9, 0.5, 1.0, 10.0, 99.0, 1e-3])
    assert hist["units"] == 8 and hist["zero"] == 2
    counts = {round(np.log10(b["lo"])): b["count"] for b in hist["buckets"]}
    assert counts == {-9: 1, -8: 0, -7: 0, -6: 0, -5: 0, -4: 0, -3: 1, -2: 0, -1: 1, 0: 1, 1: 2}
    assert histogram_line(hist).startswith("0:2 | 1e-9:1 | 1e-8:0") and histogram_line(hist).endswith("1e0:1 | 1e1:2")
    assert histogram_line(log_histogram([])) == "no scores"
