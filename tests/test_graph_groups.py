"""Group structure on the sample models, plans, masks and the rule registry."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import light, sample
from onnx import helper
from test_prune_support import make_model

from onnxsparse import load_model, normalize
from onnxsparse.errors import UsageError
from onnxsparse.graph import (
    Block,
    Identity,
    OpRule,
    PrunePlan,
    Role,
    build_groups,
    default_registry,
)


def _load(name: str):
    return normalize(load_model(sample(name)))


def _members(group) -> dict[tuple[str, int], object]:
    return {(m.slot.value, m.slot.axis): m for m in group.members}


def test_resnet_residual_ties_every_branch_of_a_stage() -> None:
    dg = build_groups(_load("resnet_mini"))
    stage2 = dg.groups_at("layer2.0.conv2.weight", 0)[0]
    m = _members(stage2)
    # both residual branches produce the stage's channels, and every consumer reads them
    assert {("layer2.0.conv2.weight", 0), ("layer2.0.downsample.conv.weight", 0), ("layer2.1.conv2.weight", 0),
            ("layer2.1.conv1.weight", 1), ("fc.weight", 1)} <= set(m)
    assert m[("layer2.0.conv2.weight", 0)].roles == {Role.PRODUCE}
    assert Role.SCALE in m[("layer2.0.bn2.weight", 0)].roles
    assert all(isinstance(x.index_map, Identity) for x in stage2.members)
    assert stage2.prunable and stage2.size == 32
    # the group reaching the input and the classifier output are refused with reasons
    reasons = {g.root.value: g.reason for g in dg.skipped}
    assert reasons == {"input": "'input' is a graph input", "fc.weight": "'logits' is a graph output"}


def test_densenet_concat_members_sit_at_offsets() -> None:
    dg = build_groups(_load("densenet_block"))
    layer = dg.groups_at("denseblock1.denselayer1.conv2.weight", 0)[0]
    offsets = {m.slot.value: m.index_map for m in layer.members if m.slot.value.endswith("concat") or "Concat" in m.slot.value}
    assert offsets, [m.slot.value for m in layer.members]
    assert all(m.describe().startswith("offset") for m in offsets.values())


def test_flatten_gemm_block_member() -> None:
    w = np.ones((4, 3, 1, 1), np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"]),
        helper.make_node("Flatten", ["h"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    model = make_model(nodes, [("x", [1, 3, 2, 5])], [("y", [1, 2])], {"w": w, "g": np.ones((2, 40), np.float32)})
    (group,) = build_groups(model).prunable
    assert _members(group)[("g", 1)].index_map == Block(10)
    assert group.root.value == "w" and group.channels == 4


def test_light_resnet50_every_conv_group_is_prunable() -> None:
    dg = build_groups(normalize(load_model(light("resnet50"))))
    assert len(dg.prunable) == 37
    assert {g.reason for g in dg.skipped} == {"'gpu_0/data_0' is a graph input", "Softmax 'n175': normalises over axis 1"}


def test_exclude_blocks_a_node_and_unknown_names_fail() -> None:
    model = _load("resnet_mini")
    dg = build_groups(model, exclude=["layer1.0.conv1"])
    g = dg.groups_at("layer1.0.conv1.weight", 0)[0]
    assert not g.prunable and g.reason == "node 'layer1.0.conv1' is excluded"
    with pytest.raises(UsageError, match="nope"):
        build_groups(model, exclude=["nope"])


def test_plan_validation_and_keep_masks() -> None:
    dg = build_groups(_load("resnet_mini"))
    g = dg.groups_at("layer1.0.conv1.weight", 0)[0]
    with pytest.raises(UsageError, match="cannot remove all"):
        PrunePlan.create(dg, {g.id: range(g.size)})
    with pytest.raises(UsageError, match="out of range"):
        PrunePlan.create(dg, {g.id: [g.size]})
    blocked = dg.skipped[0]
    with pytest.raises(UsageError, match="not prunable"):
        PrunePlan.create(dg, {blocked.id: [0]})
    plan = PrunePlan.create(dg, {g.id: [3, 1, 3]})
    assert plan.removed == {g.id: (1, 3)} and plan.kept(g.id) == g.size - 2
    masks = plan.masks()
    keep = masks[("layer1.0.conv1.weight", 0)]
    assert keep.sum() == g.size - 2 and not keep[1] and not keep[3]
    assert set(masks) == {m.slot.key for m in g.members}


def test_weight_slices_sum_what_they_own() -> None:
    model = _load("digits_cnn")
    dg = build_groups(model)
    g = dg.prunable[0]
    for ws in dg.weights(g):
        arr = model.graph.initializers[ws.slot.value].const_value.numpy()
        moved = np.moveaxis(arr, ws.slot.axis, 0).reshape(arr.shape[ws.slot.axis], -1)
        expected = np.abs(moved).sum(axis=1)[ws.positions].sum(axis=1)
        np.testing.assert_allclose(ws.per_unit("abs"), expected, rtol=1e-6)


class _RefuseRelu(OpRule):
    """An extension rule that takes precedence and refuses to let channels through Relu."""

    op_types = ("Relu",)

    def couple(self, node, ctx):
        return None  # accepts, maps nothing: every axis is blocked automatically


def test_registry_precedence_and_auto_blocking() -> None:
    model = _load("digits_cnn")
    assert build_groups(model).prunable
    registry = default_registry()
    registry.add(_RefuseRelu())
    dg = build_groups(model, registry=registry)
    assert not dg.prunable
    assert any("does not map axis 1" in g.reason for g in dg.skipped)
    # opset range: a rule that only applies to opset >= 99 is never chosen
    class _Future(_RefuseRelu):
        since = 99

    registry = default_registry()
    registry.add(_Future())
    assert build_groups(model, registry=registry).prunable
