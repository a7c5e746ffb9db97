"""One criteria registry for ``prune`` (structured) and ``sparsify`` (element-wise), and its declines."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from test_formats_util import mlp_model
from test_prune_criteria import _model

from onnxsparse import Decline, UsageError
from onnxsparse.cli import build_parser
from onnxsparse.criteria import (
    KINDS,
    Criterion,
    ScoringContext,
    WeightContext,
    available_criteria,
    base,
    get_criterion,
    register_criterion,
)
from onnxsparse.graph import Group, Role, build_groups
from onnxsparse.io import load_model
from onnxsparse.passes.prune import score_groups
from onnxsparse.passes.sparsify import sparsify
from onnxsparse.recipe import PruneStep, SparsifyStep, load_recipe
from onnxsparse.sparsity import Magnitude, ScoreContext, SparsityCriterion, Wanda, find_weights

STRUCTURED = {"l2", "l1", "bn", "random", "activation", "wanda", "flap"}
ELEMENTWISE = {"magnitude", "wanda", "sparsegpt"}


def _array(model: ir.Model, name: str) -> np.ndarray:
    value = model.graph.initializers[name].const_value
    assert value is not None
    return value.numpy()


def _criterion_choices(command: str) -> tuple[str, ...]:
    """``--criterion`` choices of one CLI command, as argparse holds them."""
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if a.dest == "criterion")
    if action.choices:
        return tuple(action.choices)
    # flags generated from an Options dataclass check the name in their type converter, at parse time
    accepted = []
    for name in available_criteria():
        try:
            action.type(name)
        except argparse.ArgumentTypeError:
            continue
        accepted.append(name)
    return tuple(accepted)


def _accepts(command: str, criterion: str) -> bool:
    """Whether ``COMMAND m.onnx -o o.onnx --criterion NAME`` parses (flags generated from the options)."""
    try:
        build_parser(command).parse_args([command, "m.onnx", "-o", "o.onnx", "--criterion", criterion])
    except SystemExit:
        return False
    return True


def test_every_registered_name_resolves_to_its_criterion() -> None:
    names = available_criteria()
    assert set(names) >= STRUCTURED | ELEMENTWISE and len(set(names)) == len(names)
    for name in names:
        crit = get_criterion(name)
        assert isinstance(crit, Criterion) and crit.name == name
        assert any(crit.supports(kind) for kind in KINDS), name
        assert get_criterion(crit) is crit  # an instance passes through


def test_support_flags_split_the_one_registry() -> None:
    assert set(available_criteria("structured")) == STRUCTURED
    assert set(available_criteria("elementwise")) == ELEMENTWISE
    wanda = get_criterion("wanda")
    assert wanda.supports("structured") and wanda.supports("elementwise") and wanda.requires_data
    assert get_criterion("sparsegpt").reconstructs and not get_criterion("sparsegpt").supports("structured")
    assert not get_criterion("l2").supports("elementwise")
    # the CLI choices are generated from it
    assert _criterion_choices("prune") == available_criteria("structured")
    assert all(_accepts("sparsify", name) for name in available_criteria("elementwise"))
    assert not _accepts("sparsify", "l2")  # structured only: the generated flag refuses it
    # the names onnxsparse.sparsity always exported are the same classes
    assert type(get_criterion("magnitude")) is Magnitude and type(wanda) is Wanda
    assert SparsityCriterion is Criterion and ScoreContext is WeightContext


def test_unknown_or_wrong_kind_names_list_the_choices() -> None:
    with pytest.raises(UsageError, match=r"unknown criterion 'nope' \(choose from l2, l1, magnitude, bn, random, "
                                         r"activation, wanda, flap, sparsegpt"):
        get_criterion("nope")
    with pytest.raises(UsageError, match=r"unknown criterion 'nope' \(choose from magnitude, wanda, sparsegpt\)"):
        get_criterion("nope", "elementwise")
    with pytest.raises(UsageError, match=r"criterion 'sparsegpt' does not score channel groups \(choose from "
                                         r"l2, l1, bn, random, activation, wanda, flap\)"):
        get_criterion("sparsegpt", "structured")
    with pytest.raises(UsageError, match=r"sparsity criterion 'l2'; choose from magnitude, wanda, sparsegpt"):
        sparsify(load_model(mlp_model(np.random.default_rng(0))), sparsity=0.5, criterion="l2", format="dense")
    with pytest.raises(UsageError, match=r"criterion 'sparsegpt' does not score channel groups"):
        score_groups(build_groups(_model()[0]), "sparsegpt")


class _SmallFirst(Criterion):
    """Test plugin at both granularities: the *smallest* weights / channels are the important ones."""

    description = "test only"

    def score(self, group: Group, ctx: ScoringContext) -> np.ndarray:
        l1 = np.sum([w.per_unit("abs") for w in ctx.weights(group) if w.roles & {Role.PRODUCE, Role.CONSUME}], axis=0)
        return np.asarray(l1.max() - l1, dtype=np.float64)

    def score_weight(self, weight: np.ndarray, ctx: WeightContext) -> np.ndarray:
        return np.abs(weight).max() - np.abs(weight)


@pytest.fixture
def plugin() -> Iterator[str]:
    register_criterion("test-small-first")(_SmallFirst)
    try:
        yield "test-small-first"
    finally:
        base._REGISTRY.pop("test-small-first")


def test_a_plugin_registered_once_serves_prune_and_sparsify(plugin: str, tmp_path: Path) -> None:
    assert plugin in _criterion_choices("prune") and _accepts("sparsify", plugin)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"steps:\n  - prune: {{channels: 0.3, criterion: {plugin}}}\n"
                      f"  - sparsify: {{sparsity: 0.5, criterion: {plugin}}}\n")
    prune_step, sparsify_step = load_recipe(recipe).steps
    assert isinstance(prune_step, PruneStep) and isinstance(sparsify_step, SparsifyStep)
    assert prune_step.criterion == sparsify_step.criterion == plugin

    # structured: its scores reach the plan unchanged
    model, w = _model()
    scores, used = score_groups(build_groups(model), plugin)
    (s,) = scores.values()
    l1 = np.abs(w["w1"]).sum(axis=(1, 2, 3)) + np.abs(w["w2"]).sum(axis=(1, 2, 3)) + np.abs(w["w3"]).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(s, l1.max() - l1, rtol=1e-6)
    assert set(used.values()) == {plugin}

    # element-wise: sparsify zeroes the largest weights, exactly half of them
    m = load_model(mlp_model(np.random.default_rng(1)))
    before = _array(m, "w0").copy()
    sparsify(m, sparsity=0.5, criterion=plugin, exclude=["w1", "w2"], format="dense", min_size=0)
    after = _array(m, "w0")
    zeroed = after == 0
    assert np.count_nonzero(zeroed) == before.size // 2
    assert np.abs(before[zeroed]).min() >= np.abs(before[~zeroed]).max()
    np.testing.assert_array_equal(after[~zeroed], before[~zeroed])


def test_structured_decline_falls_back_and_says_so() -> None:
    """``bn`` declines a group without a normalisation scale: l2 scores it, named so (not an internal error)."""
    model, w = _model(with_bn=False)
    dg = build_groups(model)
    (group,) = dg.prunable
    with pytest.raises(Decline, match="no normalisation scale"):
        get_criterion("bn").score(group, ScoringContext(dg))
    scores, used = score_groups(dg, "bn")
    assert used == {group.id: "l2 (bn: not applicable)"} and dg.group(group.id).prunable
    np.testing.assert_allclose(scores[group.id], get_criterion("l2").score(group, ScoringContext(dg)))
    with pytest.raises(Decline, match="does not score individual weights"):
        get_criterion("l2").score_weight(w["w1"], WeightContext(find_weights(model)[0]))


def test_elementwise_decline_is_a_usage_error_with_its_reason() -> None:
    """The user picked the criterion for every weight: norms that do not fit one are the user's to fix."""
    model = load_model(mlp_model(np.random.default_rng(2)))
    info = next(i for i in find_weights(model) if i.name == "w0")
    weight = _array(model, "w0")
    with pytest.raises(Decline, match=r"'w0' needs 64 norms, got 3") as caught:
        Wanda().score_weight(weight, WeightContext(info, {"w0": np.ones(3)}))
    assert caught.value.subject == "w0" and not isinstance(caught.value, UsageError)
    with pytest.raises(UsageError, match=r"criterion wanda: 'w0' needs 64 norms, got 3"):
        sparsify(model, sparsity=0.5, criterion="wanda", stats={"w0": np.ones(3)}, exclude=["w1", "w2"],
                 format="dense", min_size=0)
