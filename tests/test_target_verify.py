"""``prune --target``'s verification round: the loss table proposes, the whole pruned and repaired model decides."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import SAMPLES

from onnxsparse.calibration.data import DataSource
from onnxsparse.io import load_model
from onnxsparse.passes import prune_target
from onnxsparse.passes.allocate import solve_dp
from onnxsparse.passes.prune import prune
from onnxsparse.passes.prune_target import TOLERANCE, _Choice, next_best
from onnxsparse.passes.sensitivity import _run_all, _session, output_errors

DATA = SAMPLES.parent / "data"
TARGET = 0.7


def _cnn(**kwargs):
    return prune(SAMPLES / "digits_cnn.onnx", calib=DATA / "digits_calib.npz", target=f"macs={TARGET}", round_to=4,
                 **kwargs)


def _calib_error(pruned) -> float:
    """rel_mse of ``pruned`` against the original digits_cnn on all calibration samples (the verify metric)."""
    arrays = dict(np.load(DATA / "digits_calib.npz"))
    source = DataSource(arrays, "calib")
    original = _session(load_model(SAMPLES / "digits_cnn.onnx"))
    names = [o.name for o in original.get_outputs()]
    reference = _run_all(original, source, 32, len(source), names)
    return output_errors(reference, _run_all(_session(pruned), source, 32, len(source), names), names)[0]


def test_verification_keeps_the_least_whole_model_loss_over_the_tables_pick() -> None:
    res = _cnn()
    target = res.report.target
    assert target is not None and target.met
    cands = target.verify
    assert len(cands) >= 2
    table_pick = min(cands, key=lambda c: c["predicted_loss"])
    chosen = [c for c in cands if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["whole_loss"] == min(c["whole_loss"] for c in cands)
    # digits_cnn at macs=0.7: the table's pick (first layer kept whole) is worse on the whole model
    assert table_pick["source"] == "knapsack" and not table_pick["chosen"]
    assert table_pick["whole_loss"] > chosen[0]["whole_loss"]
    # distinct and in band
    keys = {(tuple(sorted(c["widths"].items())), tuple(c["blocks"])) for c in cands}
    assert len(keys) == len(cands)
    assert all(abs(c["measured"] - TARGET) <= TOLERANCE * TARGET for c in cands)
    # the model prune returns is the chosen candidate, pruned and repaired as the verification measured it
    kept = {str(g.id): g.kept for g in res.report.groups if g.kept < g.total}
    assert kept == chosen[0]["widths"]
    assert _calib_error(res.model) == pytest.approx(chosen[0]["whole_loss"], rel=1e-5)
    assert "whole-model loss" in target.table()
    assert target.to_dict()["verify"]["candidates"] == cands


def test_one_candidate_keeps_the_tables_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prune_target, "VERIFY_CANDIDATES", 1)
    target = _cnn().report.target
    assert target is not None and target.met and target.verify == []
    assert target.rounds[target.chosen_round or 0].loss == min(r.loss for r in target.rounds)


def test_next_best_is_the_optimum_with_each_winning_option_forbidden() -> None:
    rng = np.random.default_rng(3)
    losses = [np.sort(rng.random(4)).tolist() for _ in range(5)]
    costs = [sorted(rng.integers(1, 20, 4).astype(float).tolist(), reverse=True) for _ in range(5)]
    items = [[_Choice((), (), loss, 0.0) for loss in row] for row in losses]
    cap = float(round(0.6 * sum(c[0] for c in costs)))
    winner = solve_dp(losses, costs, cap, bins=None)
    assert winner is not None
    found = next_best(items, losses, costs, list(winner.choice), cap, None, "dp")
    every = [(sum(losses[g][o] for g, o in enumerate(ch)), ch) for ch in itertools.product(range(4), repeat=5)
             if sum(costs[g][o] for g, o in enumerate(ch)) <= cap]
    expected = {min((p for p in every if p[1][j] != w), key=lambda p: p[0])[1] for j, w in enumerate(winner.choice)}
    assert {tuple(c) for _, c in found} == expected
    assert len(found) == len(expected)
    assert [loss for loss, _ in found] == sorted(loss for loss, _ in found)
    assert all(loss >= winner.loss for loss, _ in found)
