"""``prune --target`` with whole residual blocks as knapsack items (:mod:`onnxsparse.passes.prune_target`)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from helpers import sample

from onnxsparse.analysis import count_macs
from onnxsparse.io import load_model, save_model
from onnxsparse.passes.allocate import pareto_merge
from onnxsparse.passes.prune import prune

SHAPES = {"input": (1, 3, 32, 32)}


def _dead_branch_model(tmp_path: Path, scale: float) -> tuple[Path, Path]:
    """resnet_mini with ``layer1.0``'s branch scaled by ``scale`` (its last BN's scale and shift), and calib data."""
    model = load_model(sample("resnet_mini"))
    bn = next(n for n in model.graph if n.name == "layer1.0.bn2")
    for value in bn.inputs[1:3]:
        assert value is not None and value.const_value is not None
        value.const_value = ir.tensor(value.const_value.numpy() * scale, name=value.name)
    path, calib = tmp_path / "dead.onnx", tmp_path / "calib.npz"
    save_model(model, path)
    rng = np.random.default_rng(0)
    np.savez(calib, input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    return path, calib


def test_pareto_merge_keeps_exactly_the_undominated_sums() -> None:
    rng = np.random.default_rng(1)
    losses = [rng.random(4).tolist() for _ in range(3)]
    costs = [rng.integers(0, 9, 4).astype(float).tolist() for _ in range(3)]
    front = pareto_merge(losses, costs)
    every = [(sum(losses[g][o] for g, o in enumerate(ch)), sum(costs[g][o] for g, o in enumerate(ch)), ch)
             for ch in itertools.product(range(4), repeat=3)]
    for loss, cost, choice in front:  # each point is what its choice adds up to, and nothing beats it
        assert loss == pytest.approx(sum(losses[g][o] for g, o in enumerate(choice)))
        assert cost == pytest.approx(sum(costs[g][o] for g, o in enumerate(choice)))
        assert not any(l2 <= loss and c2 <= cost and (l2 < loss or c2 < cost) for l2, c2, _ in every)
    for budget in range(0, 25):  # the least loss within every budget is on the front
        fits = [loss for loss, cost, _ in every if cost <= budget]
        on_front = [loss for loss, cost, _ in front if cost <= budget]
        assert (min(fits) if fits else None) == pytest.approx(min(on_front) if on_front else None)


def test_target_removes_the_near_zero_block_instead_of_thinning(tmp_path: Path) -> None:
    path, calib = _dead_branch_model(tmp_path, 1e-4)
    result = prune(path, calib=calib, target="macs=0.65", round_to=8)
    target = result.report.target
    assert target is not None and target.met
    assert [b["add"] for b in target.blocks] == ["layer1.0.add"]
    assert target.to_dict()["blocks_removed"][0]["branch_output"] == "layer1.0.bn2"
    names = {n.name for n in result.model.graph}
    assert not names & {"layer1.0.conv1", "layer1.0.conv2", "layer1.0.add"}
    before = count_macs(load_model(path), SHAPES)
    after = count_macs(result.model, SHAPES)
    assert before and after and abs(after / before - 0.65) <= 0.02 * 0.65
    assert after / before == pytest.approx(target.measured)
    assert not target.groups or all(k == t for k, t in target.groups.values())  # nothing else thinned
    # the pruned model computes what the original does (the branch was ~0): a small output error
    import onnxruntime as ort

    from onnxsparse.io import to_proto

    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
    runs = []
    for m in (load_model(path), result.model):
        proto = to_proto(m)
        proto.ir_version = min(proto.ir_version, 10)
        runs.append(ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input": x})[0])
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-3, atol=1e-3 * float(np.abs(runs[0]).max()))


def test_a_live_block_is_kept_and_widths_are_thinned(tmp_path: Path) -> None:
    """The same model with the branch intact: the block costs more loss than thinning, so the allocation keeps it."""
    path, calib = _dead_branch_model(tmp_path, 1.0)
    result = prune(path, calib=calib, target="macs=0.65", round_to=8)
    target = result.report.target
    assert target is not None and target.met and target.block_candidates == 2
    assert target.blocks == [] and any(k < t for k, t in target.groups.values())
