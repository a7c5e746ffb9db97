"""``Decline(reason)``: code that cannot handle a node / group / tensor says why; the caller records it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

import onnxsparse
from onnxsparse.errors import Decline, OnnxSparseError
from onnxsparse.graph import OpRule, build_groups, default_registry
from onnxsparse.graph.context import CoupleContext
from onnxsparse.passes.prune import prune

DOMAIN = "test.decline"
RNG = np.random.default_rng(0)


def _model(middle: helper.NodeProto, extra_inputs: tuple = (), domains: tuple[str, ...] = ()) -> ir.Model:
    """x -> Conv(w1) -> h -> ``middle`` -> m -> Conv(w2) -> y, plus Conv(w3) on h to a second output."""
    inits = [numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 3, 1, 1)), ("w2", (4, 8, 1, 1)), ("w3", (4, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"), middle,
             helper.make_node("Conv", ["m", "w2"], ["y"], name="conv2"),
             helper.make_node("Conv", ["h", "w3"], ["z"], name="conv3")]
    graph = helper.make_graph(
        nodes, "decline",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits)
    opsets = [helper.make_opsetid("", 18), *(helper.make_opsetid(d, 1) for d in domains)]
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 8
    return ir.from_proto(proto)


class _Mystery(OpRule):
    """A plugin rule for a custom op that refuses it, the way a rule refuses a shape it cannot map."""

    op_types = ("Mystery",)
    domain = DOMAIN

    def __init__(self, error: Exception) -> None:
        self.error = error

    def couple(self, node: ir.Node, ctx: CoupleContext) -> str | None:
        raise self.error


def _mystery_model() -> ir.Model:
    return _model(helper.make_node("Mystery", ["h"], ["m"], name="mystery", domain=DOMAIN), domains=(DOMAIN,))


def _h_group_reasons(result: onnxsparse.passes.prune.PruneResult) -> tuple[str, ...]:
    (skipped,) = [s for s in result.report.skipped if "conv1" in s.nodes and s.total == 8]
    return skipped.reasons


def test_decline_is_a_reason_not_a_user_error() -> None:
    exc = Decline("feeds a graph output", subject="conv3")
    assert str(exc) == "feeds a graph output" and exc.subject == "conv3" and exc.reason == str(exc)
    assert not isinstance(exc, OnnxSparseError) and onnxsparse.Decline is Decline


def test_a_rule_that_declines_reports_its_reason_as_the_skip() -> None:
    reason = "Mystery 'mystery': its channel layout is not documented"
    registry = default_registry().extend([_Mystery(Decline(reason))])
    result = prune(_mystery_model(), 0.5, registry=registry, round_to=1)
    assert reason in _h_group_reasons(result)
    assert not any("internal error" in r for s in result.report.skipped for r in s.reasons)

    # the same refusal as a bug (any other exception) is reported as one
    registry = default_registry().extend([_Mystery(ValueError("boom"))])
    reasons = _h_group_reasons(prune(_mystery_model(), 0.5, registry=registry, round_to=1))
    assert any("internal error in rule _Mystery: ValueError: boom" in r for r in reasons)


def test_a_declining_rule_lets_the_next_candidate_try() -> None:
    """Like a returned reason: a plugin that declines a Relu leaves it to the default Relu rule."""

    class Picky(_Mystery):
        op_types = ("Relu",)
        domain = ""
        priority = 10

    model = _model(helper.make_node("Relu", ["h"], ["m"], name="relu"))
    dg = build_groups(model, registry=default_registry().extend([Picky(Decline("not mine"))]))
    (group,) = [g for g in dg.prunable if "conv1" in g.nodes]
    assert "relu" in group.nodes and group.size == 8


def test_shape_rule_decline_reaches_the_report() -> None:
    """Squeeze with axes computed at run time: the shape rule declines through ``_axes_arg``."""
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    model = _model(helper.make_node("Squeeze", ["h", "axes"], ["m"], name="squeeze"), extra_inputs=(axes,))
    dg = build_groups(model)
    (group,) = [g for g in dg.groups if "conv1" in g.nodes and g.size == 8]
    assert not group.prunable
    assert "Squeeze 'squeeze': axes are not constant" in group.reasons
    assert not any("internal error" in r for r in group.reasons)
