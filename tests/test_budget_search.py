"""The accuracy-budget search: bisection on synthetic accuracy curves, the held-out split, the task metric."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import DATA, SAMPLES

from onnxsparse.calibration.data import DataSource
from onnxsparse.errors import UsageError
from onnxsparse.passes.budget import search_budget, split_holdout, task_metric
from onnxsparse.validate.metrics import resolve_metric

TOP1 = resolve_metric("top1")


def _search(curve, max_drop, **kw):
    """A fake prune whose 'model' is its fraction; the metric is ``curve(fraction)``."""
    tried = []

    def prune_at(f):
        tried.append(f)
        return f, {"macs_ratio": f}

    return search_budget(prune_at, curve, TOP1, curve(1.0), max_drop, **kw), tried


def test_bisection_finds_the_budget_edge():
    # accuracy falls linearly below 0.8 of the MACs: 0.9 at f >= 0.8, 0.9 - (0.8 - f) below
    curve = lambda f: 0.9 - max(0.0, 0.8 - f)  # noqa: E731
    result, tried = _search(curve, 0.1, steps=12, tolerance=0.005)
    assert tried[0] == 0.25  # the most aggressive first
    assert result.best is not None and result.best.within_budget
    assert 0.7 - 1e-9 <= result.best.fraction <= 0.7 + 0.006  # the edge: drop 0.1 at f = 0.7
    assert result.model == result.best.fraction
    assert all(t.within_budget == (t.drop <= 0.1 + 1e-12) for t in result.trials)


def test_lowest_fraction_within_budget_stops_at_once():
    result, tried = _search(lambda f: 0.5, 0.0)
    assert tried == [0.25] and result.best.fraction == 0.25


def test_nothing_within_budget_is_reported_with_a_reason():
    result, _ = _search(lambda f: 1.0 if f == 1.0 else 0.0, 0.01, steps=4)
    assert result.best is None and result.model is None
    assert "lost more than 0.01 top1" in result.reason
    assert "no pruned model kept the budget" in result.table()


def test_a_fraction_the_target_cannot_reach_counts_as_out_of_budget():
    def prune_at(f):
        if f < 0.5:
            raise UsageError("cannot reach macs=0.25")
        return f, {}

    result = search_budget(prune_at, lambda f: 0.9, TOP1, 0.9, 0.01, steps=5)
    assert result.trials[0].note == "cannot reach macs=0.25" and not result.trials[0].within_budget
    assert result.best is not None and 0.5 <= result.best.fraction < 0.7


def test_non_monotone_curve_keeps_the_most_aggressive_success():
    values = {0.25: 0.0, 0.625: 0.9, 0.4375: 0.0, 0.53125: 0.9}
    result, _ = _search(lambda f: values.get(f, 0.9), 0.01, steps=4)
    assert result.best.fraction == 0.53125


def test_bad_budget_is_a_usage_error():
    with pytest.raises(UsageError, match="max-accuracy-drop"):
        _search(lambda f: 1.0, -0.1)


def test_holdout_split_keeps_order_and_sizes():
    source = DataSource({"x": np.arange(10, dtype=np.float32)[:, None]})
    labels = np.arange(10)
    (search, search_labels), (held, held_labels) = split_holdout(source, labels, 0.3)
    assert len(search) == 7 and len(held) == 3
    assert held_labels.tolist() == [7, 8, 9] and held.arrays["x"][:, 0].tolist() == [7, 8, 9]
    with pytest.raises(UsageError, match="cannot be split"):
        split_holdout(DataSource({"x": np.zeros((1, 1), np.float32)}), np.zeros(1), 0.3)


def test_task_metric_matches_validate_on_the_digits_cnn():
    import onnx_ir as ir

    from onnxsparse.validate import validate
    models, data_dir = SAMPLES, DATA
    model = ir.load(models / "digits_cnn.onnx")
    data = np.load(data_dir / "digits_test.npz")
    labels = np.load(data_dir / "digits_test_labels.npy")
    source = DataSource({k: data[k] for k in data.files})
    value = task_metric(model, source, labels, TOP1, batch=32)
    expected = validate(models / "digits_cnn.onnx", models / "digits_cnn.onnx", data=data_dir / "digits_test.npz", labels=labels, batch=len(labels), runs=2,
                        warmup=0, memory=False).providers[0].metrics[0].reference
    assert value == pytest.approx(expected, abs=1e-12)
    assert 0.9 < value <= 1.0


def test_cli_max_accuracy_drop_keeps_the_budget_on_held_out_data(tmp_path):
    """The README's outcome: prune the bundled CNN as far as 1 point of top-1 allows, checked on data the
    search never saw (the last 30% of the test split), and validated there."""
    import json

    from helpers import cli

    out = tmp_path / "small.onnx"
    code, stdout, err = cli("prune", SAMPLES / "digits_cnn.onnx", "-o", out, "--max-accuracy-drop", "0.01",
                            "--data", DATA / "digits_test.npz", "--labels", DATA / "digits_test_labels.npy",
                            "--calib", DATA / "digits_calib.npz", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    best, held = result["search"]["best"], result["search"]["holdout"]
    assert best["within_budget"] and best["drop"] <= 0.01
    assert best["measured"]["macs_ratio"] < 0.9  # it pruned, not just kept the input
    assert held["samples"] == 108 and held["drop"] <= 0.01 + 1e-12
    (accuracy,) = result["validation"]["providers"][0]["metrics"]
    assert accuracy["reference"] == pytest.approx(held["reference"]) and accuracy["candidate"] == pytest.approx(
        held["candidate"])  # validate on the held-out split agrees with the search's own scoring
    assert out.is_file()


@pytest.mark.parametrize("extra, message", [
    ((), "needs labelled data"),
    (("--labels", "x.npy", "--target", "macs=0.5"), "names what to minimise"),
    (("--labels", "x.npy", "--channels", "0.3"), "drop --channels"),
])
def test_cli_max_accuracy_drop_usage_errors(tmp_path, extra, message):
    from cli_asserts import one_line_error
    from helpers import cli

    args = ["prune", SAMPLES / "digits_cnn.onnx", "-o", tmp_path / "o.onnx", "--max-accuracy-drop", "0.01",
            "--data", DATA / "digits_test.npz", *extra]
    assert message in one_line_error(*cli(*args))
    assert not (tmp_path / "o.onnx").exists()


def test_cli_says_when_the_held_out_split_breaks_the_budget(tmp_path, monkeypatch):
    """The search split may promise more than unseen data keeps: then the model is written (it is the best
    found) but the exit code is 1 and one line says so."""
    import onnxsparse.passes.budget as budget
    from helpers import cli

    real = budget.prune_within_budget

    def pessimistic(*args, **kwargs):
        found = real(*args, **kwargs)
        found.holdout = {**found.holdout, "drop": found.max_drop + 0.05}
        return found

    monkeypatch.setattr(budget, "prune_within_budget", pessimistic)
    out = tmp_path / "small.onnx"
    code, _, err = cli("prune", SAMPLES / "digits_cnn.onnx", "-o", out, "--max-accuracy-drop", "0.01",
                       "--data", DATA / "digits_test.npz", "--labels", DATA / "digits_test_labels.npy",
                       "--calib", DATA / "digits_calib.npz")
    assert code == 1 and out.is_file()
    assert err.strip().splitlines()[-1].startswith("onnxsparse: the winner loses 0.0600 top1 on the 108 held-out")


def test_a_recipe_step_runs_the_same_budget_search_as_the_command(tmp_path):
    """``prune: {max_accuracy_drop: ...}`` in a recipe is the command's search (one function,
    :func:`onnxsparse.passes.budget.run_budget`): the same winner, byte for byte."""
    from helpers import cli

    from onnxsparse.recipe import run_recipe

    by_cli = tmp_path / "cli.onnx"
    code, _, err = cli("prune", SAMPLES / "digits_cnn.onnx", "-o", by_cli, "--max-accuracy-drop", "0.01",
                       "--data", DATA / "digits_test.npz", "--labels", DATA / "digits_test_labels.npy",
                       "--calib", DATA / "digits_calib.npz")
    assert code == 0, err
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"steps:\n  - prune: {{max_accuracy_drop: 0.01, data: {DATA / 'digits_test.npz'}, "
                      f"labels: {DATA / 'digits_test_labels.npy'}, calib: {DATA / 'digits_calib.npz'}}}\n")
    by_recipe = tmp_path / "recipe.onnx"
    result = run_recipe(recipe, SAMPLES / "digits_cnn.onnx", by_recipe)
    assert result.passed and by_recipe.read_bytes() == by_cli.read_bytes()
    (step,) = result.steps
    assert step.report["search"]["holdout_within_budget"] is True
