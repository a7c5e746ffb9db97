"""``prune --target``: the knapsack solvers against brute force, and targets met on the trained samples."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from cli_asserts import one_line_error
from helpers import DATA, cli, sample

from onnxsparse.errors import UsageError
from onnxsparse.passes import prune_target
from onnxsparse.passes.allocate import solve, solve_dp, solve_lagrangian
from onnxsparse.passes.prune_target import group_options, parse_target


def _brute(losses, costs, budget):
    best = None
    for choice in itertools.product(*[range(len(l)) for l in losses]):
        cost = sum(costs[g][o] for g, o in enumerate(choice))
        if cost <= budget + 1e-9:
            loss = sum(losses[g][o] for g, o in enumerate(choice))
            best = loss if best is None else min(best, loss)
    return best


def _tables(rng, integer: bool):
    groups = int(rng.integers(1, 5))
    losses, costs = [], []
    for _ in range(groups):
        n = int(rng.integers(1, 5))
        losses.append(rng.random(n))
        costs.append(rng.integers(0, 20, n).astype(float) if integer else rng.random(n) * 20)
    return losses, costs


def test_dp_is_exact_with_integer_costs():
    rng = np.random.default_rng(0)
    for _ in range(150):
        losses, costs = _tables(rng, integer=True)
        budget = float(rng.integers(0, 60))
        best = _brute(losses, costs, budget)
        got = solve_dp(losses, costs, budget, bins=None)
        assert (got is None) == (best is None)
        if got is not None:
            assert got.cost <= budget
            assert got.loss == pytest.approx(best, abs=1e-12)
            assert got.loss == pytest.approx(sum(losses[g][o] for g, o in enumerate(got.choice)), abs=1e-12)


def test_dp_with_a_floor_is_exact_with_integer_costs():
    rng = np.random.default_rng(3)
    for _ in range(150):
        losses, costs = _tables(rng, integer=True)
        budget = float(rng.integers(0, 60))
        floor = float(rng.integers(0, int(budget) + 1))
        best = None
        for choice in itertools.product(*[range(len(l)) for l in losses]):
            cost = sum(costs[g][o] for g, o in enumerate(choice))
            if floor <= cost <= budget:
                loss = sum(losses[g][o] for g, o in enumerate(choice))
                best = loss if best is None else min(best, loss)
        got = solve_dp(losses, costs, budget, bins=None, floor=floor)
        assert (got is None) == (best is None)
        if got is not None:
            assert floor <= got.cost <= budget and got.loss == pytest.approx(best, abs=1e-12)


def test_dp_on_a_grid_fits_and_is_optimal_up_to_one_step_per_group():
    """Costs rounded up to the grid: the choice fits the real budget, and no worse than the optimum of a
    budget one grid step per group smaller."""
    rng = np.random.default_rng(1)
    for _ in range(150):
        losses, costs = _tables(rng, integer=False)
        budget = float(rng.random() * 50)
        bins = 200
        got = solve_dp(losses, costs, budget, bins=bins)
        best = _brute(losses, costs, budget)
        if got is None:
            assert _brute(losses, costs, budget - len(losses) * budget / bins) is None
            continue
        assert got.cost <= budget + 1e-9 and got.loss >= best - 1e-12
        tighter = _brute(losses, costs, budget - len(losses) * budget / bins)
        if tighter is not None:
            assert got.loss <= tighter + 1e-12


def test_lagrangian_fits_and_is_optimal_for_the_cost_it_reaches():
    rng = np.random.default_rng(2)
    for _ in range(150):
        losses, costs = _tables(rng, integer=True)
        budget = float(rng.integers(0, 60))
        got = solve_lagrangian(losses, costs, budget)
        best = _brute(losses, costs, budget)
        assert (got is None) == (best is None)
        if got is not None:
            assert got.cost <= budget and got.loss >= best - 1e-12
            assert got.loss == pytest.approx(_brute(losses, costs, got.cost), abs=1e-9)


def test_solver_rejects_bad_tables():
    with pytest.raises(ValueError, match="equal-length"):
        solve([[0.0, 1.0]], [[1.0]], 1.0)
    with pytest.raises(ValueError, match="unknown allocation solver"):
        solve([[0.0]], [[1.0]], 1.0, "greedy")


def test_options_snap_the_ladder_to_allowed_widths_and_interpolate():
    measured = {4: 0.1, 8: 0.2, 12: 0.4, 16: 0.8, 20: 1.0, 24: 1.2, 28: 1.5}  # a 32-unit group, ladder k/8
    keep, loss = group_options(32, 1, 1, measured)
    assert keep == [32, 28, 24, 20, 16, 12, 8, 4] and loss[0] == 0.0 and loss[1:] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.2, 1.5]
    keep, loss = group_options(32, 16, 1, measured)  # blocked kernels: widths 16 and 32 only
    assert keep == [32, 16] and loss == [0.0, 0.8]
    keep, loss = group_options(48, 16, 1, {6: 0.1, 12: 0.2, 18: 0.4, 24: 0.6, 30: 0.7, 36: 0.8, 42: 0.9})
    assert keep == [48, 32, 16]
    assert loss[1] == pytest.approx(0.2 + (0.4 - 0.2) * (16 - 12) / 6)  # 16 removed: between 12 and 18
    keep, _ = group_options(32, 1, 20, measured)  # min_keep
    assert min(keep) == 20
    assert group_options(16, 16, 1, measured) == ([16], [0.0])  # nothing allowed below the block


@pytest.mark.parametrize("text", ["macs", "flops=0.5", "macs=0", "macs=1", "params=x", "latency=-0.2"])
def test_parse_target_rejects(text):
    with pytest.raises(UsageError, match="--target"):
        parse_target(text)


def test_parse_target():
    t = parse_target(" Latency = 0.6")
    assert (t.metric, t.ratio, str(t)) == ("latency", 0.6, "latency=0.6")


def _macs_ratio(result, original):
    from onnxsparse.analysis import count_macs
    from onnxsparse.io import load_model

    dims = result.report.mac_dims
    return count_macs(result.model, dims=dims) / count_macs(load_model(original), dims=dims)


def test_target_macs_on_the_cnn_lands_within_two_percent():
    from onnxsparse.passes.prune import prune

    result = prune(sample("digits_cnn"), calib=DATA / "digits_calib.npz", target="macs=0.6", round_to=4)
    target = result.report.target
    measured = _macs_ratio(result, sample("digits_cnn"))
    assert abs(measured - 0.6) <= 0.02 * 0.6, measured
    assert target.met and target.measured == pytest.approx(measured)
    assert result.report.macs_ratio == pytest.approx(measured)
    ratios = {g.id: g.kept / g.total for g in result.report.groups}
    assert len(set(ratios.values())) > 1  # not one ratio everywhere
    for g in result.report.groups:
        assert g.kept % 4 == 0 and target.groups.get(g.id, (g.total,))[0] == g.kept
    assert target.rounds[target.chosen_round].measured == target.measured


def test_target_keeps_the_blocked_widths_and_says_when_they_cannot_land():
    """The default round-to (16 here, see conftest) leaves digits_cnn only 16 or 32 channels per group: no
    allocation reaches macs=0.6 within 2%, the report says so, and no odd width was chosen to force it."""
    from onnxsparse.passes.prune import prune

    result = prune(sample("digits_cnn"), calib=DATA / "digits_calib.npz", target="macs=0.6")
    target = result.report.target
    assert not target.met and "no allocation landed within 2%" in target.note
    assert target.measured <= 0.6 and all(g.kept % 16 == 0 for g in result.report.groups)
    assert target.measured == pytest.approx(_macs_ratio(result, sample("digits_cnn")))


def test_target_macs_on_the_transformer_allocates_heads_and_ffn_together():
    from onnxsparse.passes.prune import prune

    result = prune(sample("digits_transformer"), calib=DATA / "digits_calib_tokens.npz", target="macs=0.6")
    measured = _macs_ratio(result, sample("digits_transformer"))
    assert abs(measured - 0.6) <= 0.02 * 0.6 and result.report.target.met
    kinds = {g.kind for g in result.report.groups if g.id in result.report.target.groups}
    assert kinds == {"head", "neuron"}
    assert any(g.kind == "neuron" and g.kept < g.total for g in result.report.groups)


def test_target_params_counts_the_pruned_model():
    from onnxsparse.analysis import count_params
    from onnxsparse.io import load_model
    from onnxsparse.passes.prune import prune

    result = prune(sample("digits_cnn"), calib=DATA / "digits_calib.npz", target="params=0.5", round_to=8)
    measured = count_params(result.model) / count_params(load_model(sample("digits_cnn")))
    assert result.report.target.measured == pytest.approx(measured)
    assert abs(measured - 0.5) <= 0.02 * 0.5


def test_target_latency_mechanics(monkeypatch, tmp_path):
    """A lookup table times each group pruned alone to each width (cached on disk per model and machine);
    rounds time the pruned copy against the original and tighten the budget until the target is met or
    the rounds run out (no timing is asserted)."""
    from onnxsparse.passes.prune import prune

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(prune_target, "LATENCY_BUDGET_S", 0.02)
    monkeypatch.setattr(prune_target, "TABLE_BUDGET_S", 0.01)
    monkeypatch.setattr(prune_target, "LATENCY_TABLE", True)
    result = prune(sample("digits_cnn"), calib=DATA / "digits_calib.npz", target="latency=0.6", round_to=8)
    target = result.report.target
    assert target.metric == "latency" and target.cost_basis == "latency table"
    assert target.table_measured > 0 and target.table_cached == 0
    assert [p.parent for p in tmp_path.rglob("*.json")] == [tmp_path / "onnxsparse" / "latency"]
    # correction rounds; the verification round appends its own candidates (notes "verify: ...") after a
    # round that met the target, so the miss-then-correct order holds for the correction rounds only
    corrections = [r for r in target.rounds if not (r.note or "").startswith("verify")]
    assert 1 <= len(corrections) <= prune_target.MAX_ROUNDS["latency"]
    for r in target.rounds:
        assert r.timing["candidate_p50_ms"] > 0 and r.measured == pytest.approx(
            r.timing["candidate_p50_ms"] / r.timing["reference_p50_ms"])
    for before, after in zip(corrections, corrections[1:]):
        assert before.measured > 0.6 * 1.02  # a round follows only a miss ...
        assert after.budget <= before.budget * 0.6 / before.measured + 1e-12  # ... and asks for less
    assert target.rounds[0].budget == 0.6
    assert target.met == (target.measured <= 0.6 * 1.02)
    assert target.table().startswith("target latency=0.6 (within 2% or below)")

    again = prune(sample("digits_cnn"), calib=DATA / "digits_calib.npz", target="latency=0.6", round_to=8)
    assert (again.report.target.table_measured, again.report.target.table_cached) == (0, target.table_measured)


@pytest.mark.parametrize("extra, pattern", [
    ((), r"--target macs=0\.6 needs calibration data"),
    (("--calib", DATA / "digits_calib.npz", "--channels", "0.3"), r"drop --channels"),
    (("--calib", DATA / "digits_calib.npz", "--heads", "0.25"), r"drop --heads"),
])
def test_cli_target_usage_errors(tmp_path, extra, pattern):
    import re

    line = one_line_error(*cli("prune", sample("digits_cnn"), "-o", tmp_path / "o.onnx", "--target", "macs=0.6",
                               *extra))
    assert re.search(pattern, line), line


def test_cli_target_prints_and_reports_the_target(tmp_path):
    import json

    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code, stdout, stderr = cli("prune", sample("digits_cnn"), "-o", out, "--target", "params=0.5", "--round-to", "8",
                               "--calib", DATA / "digits_calib.npz", "--report", report, "-q")
    assert code == 0, stderr
    assert "target params=0.5" in stdout and "met (measured" in stdout
    data = json.loads(report.read_text())
    assert data["target"]["met"] and data["target"]["measured"] == pytest.approx(data["params"]["ratio"])


def test_recipe_prune_target(tmp_path):
    import json

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"calib: {DATA / 'digits_calib.npz'}\nsteps:\n  - prune: {{target: params=0.5, round_to: 8}}\n")
    code, out, err = cli("run", recipe, sample("digits_cnn"), "-o", tmp_path / "o.onnx", "--json", "-q")
    assert code == 0, err
    target = json.loads(out)["steps"][0]["report"]["channels"]["target"]
    assert target["met"] and abs(target["measured"] - 0.5) <= 0.01


@pytest.mark.parametrize("step, pattern", [
    ("{target: macs=0.7, channels: 0.3}", "target allocates the per-group ratios itself"),
    ("{target: flops=0.7}", "'flops=0.7': expected macs=R|params=R|latency=R"),
])
def test_recipe_target_errors(tmp_path, step, pattern):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"calib: {DATA / 'digits_calib.npz'}\nsteps:\n  - prune: {step}\n")
    line = one_line_error(*cli("run", recipe, sample("digits_cnn"), "-o", tmp_path / "o.onnx"))
    assert pattern in line, line


def test_recipe_target_needs_calibration(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps:\n  - prune: {target: macs=0.7}\n")
    line = one_line_error(*cli("run", recipe, sample("digits_cnn"), "-o", tmp_path / "o.onnx"))
    assert "target macs=0.7 needs calibration data" in line, line


def test_target_with_a_weight_criterion_and_no_repair():
    """The loss table needs the data even when neither the criterion nor a repair does."""
    from onnxsparse.passes.prune import prune

    result = prune(sample("digits_cnn"), calib=DATA / "digits_calib.npz", target="macs=0.6", criterion="l2",
                   repair="none", round_to=4)
    assert result.report.repair is None and result.report.target.met
    assert result.report.criterion == "l2" and result.report.channels == 0.0
    assert abs(_macs_ratio(result, sample("digits_cnn")) - 0.6) <= 0.02 * 0.6


def test_target_latency_allocates_on_macs_by_default(monkeypatch):
    from onnxsparse.passes.prune import prune

    monkeypatch.setattr(prune_target, "LATENCY_BUDGET_S", 0.02)
    target = prune(sample("digits_cnn"), calib=DATA / "digits_calib.npz", target="latency=0.6",
                   round_to=8).report.target
    assert target.cost_basis == "macs" and (target.table_measured, target.table_cached) == (0, 0)
    # correction rounds; the verification round appends its own candidates (notes "verify: ...")
    assert 1 <= sum(not (r.note or "").startswith("verify") for r in target.rounds) <= prune_target.MAX_ROUNDS["latency"]
    assert all(r.timing["reference_p50_ms"] > 0 for r in target.rounds)
