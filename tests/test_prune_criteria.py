"""Criteria: group-level magnitude by hand, bn, random, registry, fallback."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from test_prune_support import make_model

from onnxsparse.criteria import (
    DEFAULT_CRITERIA,
    Criterion,
    ScoringContext,
    available_criteria,
    get_criterion,
    register_criterion,
)
from onnxsparse.errors import UsageError
from onnxsparse.graph import build_groups
from onnxsparse.passes.prune import score_groups

RNG = np.random.default_rng(0)


def _model(with_bn: bool = True):
    """conv1 -> [BN] -> relu, joined by a residual conv2 branch, read by conv3: one 6-channel group."""
    inits = {
        "w1": RNG.standard_normal((6, 3, 3, 3)).astype(np.float32),
        "b1": RNG.standard_normal(6).astype(np.float32),
        "w2": RNG.standard_normal((6, 3, 1, 1)).astype(np.float32),
        "w3": RNG.standard_normal((2, 6, 1, 1)).astype(np.float32),
        "s": RNG.standard_normal(6).astype(np.float32),
        "b": np.zeros(6, np.float32),
        "m": np.zeros(6, np.float32),
        "v": np.ones(6, np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1])]
    if with_bn:
        nodes.append(helper.make_node("BatchNormalization", ["h", "s", "b", "m", "v"], ["n"]))
    else:
        for k in ("s", "b", "m", "v"):
            inits.pop(k)
    nodes += [
        helper.make_node("Conv", ["x", "w2"], ["h2"]),
        helper.make_node("Add", ["n" if with_bn else "h", "h2"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w3"], ["y"]),
    ]
    return make_model(nodes, [("x", ["N", 3, 4, 4])], [("y", ["N", 2, 4, 4])], inits), inits


def test_l1_l2_aggregate_producers_and_consumers() -> None:
    model, w = _model()
    dg = build_groups(model)
    (group,) = dg.prunable
    # producers: w1 rows, w2 rows; consumer: w3 columns (biases and BN are not counted)
    l1 = np.abs(w["w1"]).sum(axis=(1, 2, 3)) + np.abs(w["w2"]).sum(axis=(1, 2, 3)) + np.abs(w["w3"]).sum(axis=(0, 2, 3))
    l2 = np.sqrt((w["w1"] ** 2).sum(axis=(1, 2, 3)) + (w["w2"] ** 2).sum(axis=(1, 2, 3)) + (w["w3"] ** 2).sum(axis=(0, 2, 3)))
    ctx = ScoringContext(dg)
    np.testing.assert_allclose(get_criterion("l1").score(group, ctx), l1, rtol=1e-6)
    np.testing.assert_allclose(get_criterion("l2").score(group, ctx), l2, rtol=1e-6)
    np.testing.assert_allclose(get_criterion("bn").score(group, ctx), np.abs(w["s"]), rtol=1e-6)


def test_bn_falls_back_to_l2_and_says_so() -> None:
    model, _ = _model(with_bn=False)
    scores, used = score_groups(build_groups(model), "bn")
    (name,) = used.values()
    assert name == "l2 (bn: not applicable)"
    assert next(iter(scores.values())).shape == (6,)


def test_random_is_seeded() -> None:
    model, _ = _model()
    dg = build_groups(model)
    a, _ = score_groups(dg, "random", seed=3)
    b, _ = score_groups(dg, "random", seed=3)
    c, _ = score_groups(dg, "random", seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a) and not all(np.array_equal(a[k], c[k]) for k in a)


def test_registry_defaults_custom_and_unknown() -> None:
    assert available_criteria()[: len(DEFAULT_CRITERIA)] == DEFAULT_CRITERIA

    @register_criterion("test-neg-l1")
    class NegL1(Criterion):
        description = "test only"

        def score(self, group, ctx):
            return -sum(w.per_unit("abs") for w in ctx.weights(group))

    try:
        model, _ = _model()
        scores, used = score_groups(build_groups(model), "test-neg-l1")
        assert set(used.values()) == {"test-neg-l1"} and all((s <= 0).all() for s in scores.values())
    finally:
        from onnxsparse.criteria import base

        base._REGISTRY.pop("test-neg-l1")
    with pytest.raises(UsageError, match="unknown criterion"):
        get_criterion("nope")
