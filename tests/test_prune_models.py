"""``prune`` on every sample architecture and the onnx 'light' CNNs: the masked-equivalence oracle.

The plan is the real one (criterion scores + uniform selection) at ratios 0.3
and 0.5; the pruned model must match the masked original to atol=1e-5 *
output scale, rtol=1e-4, pass ``onnx.checker`` (full) and keep the I/O
signature, symbolic batch included.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from helpers import light, random_feeds, run, sample, session
from onnx import helper
from test_prune_support import check_oracle, expose_logits, make_model, randomize

from onnxsparse import load_model, normalize
from onnxsparse.analysis import count_macs, count_params
from onnxsparse.graph import build_groups
from onnxsparse.passes.prune import PrunePass, PruneResult, plan_pruning, prune

#: samples with at least one prunable channel group (the others: every group blocked, see below)
PRUNABLE_SAMPLES = [
    "resnet_mini", "densenet_block", "mobilenet_block", "digits_cnn", "digits_cnn_bn", "constant_weights",
    "constantofshape_weights", "ir3_inputs", "if_model", "transformer_encoder", "digits_transformer",
    "digits_transformer_dynamo",
]  # fmt: skip
UNPRUNABLE_SAMPLES = {"lstm": "LSTM"}

LIGHT = ["resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet"]


def _prepared(path, seed: int = 0) -> ir.Model:
    model = normalize(load_model(path))
    model.ir_version = max(model.ir_version, 4)
    return model


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", PRUNABLE_SAMPLES)
def test_samples_match_masked_model(name: str, ratio: float) -> None:
    model = _prepared(sample(name))
    plan, _ = plan_pruning(build_groups(model), ratio, round_to=1)
    check_oracle(model, plan)


@pytest.mark.parametrize("name,why", sorted(UNPRUNABLE_SAMPLES.items()))
def test_samples_without_prunable_groups_say_why(name: str, why: str) -> None:
    result = prune(sample(name), 0.5)
    assert not result.report.pruned_groups
    assert any(why in s.reason for s in result.report.skipped)


@pytest.mark.parametrize("name", ["tiny_decoder_kv", "tiny_gqa"])
def test_decoder_samples_prune_or_refuse_cleanly(name: str) -> None:
    model = _prepared(sample(name))
    plan, _ = plan_pruning(build_groups(model), 0.3)
    check_oracle(model, plan, require_pruning=False)


def _light(name: str) -> ir.Model:
    model = _prepared(light(name))
    randomize(model, seed=1)
    return expose_logits(model)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", LIGHT)
def test_light_models_match_masked_model(name: str, ratio: float) -> None:
    model = _light(name)
    dg = build_groups(model)
    assert len(dg.prunable) >= 10
    plan, _ = plan_pruning(dg, ratio, criterion="l1")
    check_oracle(model, plan, batch=1)


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_light_vgg19_matches_masked_model(ratio: float) -> None:
    model = _light("vgg19")
    plan, _ = plan_pruning(build_groups(model), ratio)
    check_oracle(model, plan, batch=1)


def test_macs_match_independent_count_and_hand_formula() -> None:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    inits = {"w1": rng.standard_normal((10, 3, 3, 3)).astype(np.float32), "b1": np.zeros(10, np.float32),
             "w2": rng.standard_normal((4, 10, 1, 1)).astype(np.float32)}
    model = make_model(nodes, [("x", ["batch", 3, 8, 8])], [("y", ["batch", 4, 8, 8])], inits)
    before = count_macs(model, dims={"batch": 1})
    result = prune(model, 0.3, normalized=True)
    report = result.report
    kept = 10 - 3

    def hand(c: int) -> int:  # per output pixel: c*3*3*3 for conv1, 4*c for conv2
        return 8 * 8 * (c * 3 * 9) + 8 * 8 * (4 * c)

    assert report.macs_before == before == hand(10)
    assert report.macs_after == count_macs(result.model, dims={"batch": 1}) == hand(kept)
    assert report.params_after == count_params(result.model) == kept * 27 + kept + 4 * kept
    assert report.mac_dims == {"batch": 1}


def test_pruned_model_runs_with_symbolic_batch() -> None:
    result = prune(sample("resnet_mini"), 0.5, round_to=1)
    sess = session(result.model)
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and inp.shape[0] == "batch"
    for batch in (1, 3):
        (out,) = run(sess, random_feeds(sess, batch=batch))
        assert out.shape == (batch, 10)
    assert 0.2 < result.report.macs_ratio < 0.35


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "random"])
def test_every_criterion_prunes_resnet_exactly(criterion: str) -> None:
    model = _prepared(sample("resnet_mini"))
    plan, used = plan_pruning(build_groups(model), 0.4, criterion=criterion)
    assert set(used.values()) == {criterion}
    check_oracle(model, plan)


def test_global_ranking_and_round_to_prune_exactly() -> None:
    model = _prepared(sample("mobilenet_block"))
    plan, _ = plan_pruning(build_groups(model), 0.5, global_ranking=True, round_to=4)
    for gid in plan.removed:
        assert plan.kept(gid) % 4 == 0
    check_oracle(model, plan)


def test_prune_pass_composes() -> None:
    model = load_model(sample("digits_cnn_bn"))
    result = PrunePass(channels=0.5, criterion="bn")(model)
    assert isinstance(result, PruneResult) and result.modified and result.report.pruned_groups
    assert result.report.params_after < result.report.params_before
    assert run(result.model, random_feeds(result.model))[0].shape == (2, 10)


def test_prune_at_zero_ratio_changes_nothing() -> None:
    result = prune(sample("resnet_mini"), 0.0)
    assert result.plan.empty and result.report.params_after == result.report.params_before


def test_round_to_auto_keeps_blocked_widths_and_prunes_the_rest() -> None:
    """Default ``round_to="auto"`` (16 in the test profile): widths already a multiple of 16 stay multiples of 16,
    so onnxruntime keeps running them on its blocked NCHWc kernels; other widths are pruned as asked."""
    auto = prune(sample("resnet_mini"), 0.5)
    exact = prune(sample("resnet_mini"), 0.5, round_to=1)
    assert auto.report.round_to == "auto (16)"
    for a, e in zip(auto.report.groups, exact.report.groups):
        assert a.channels_before == e.channels_before
        if a.channels_before % 16 == 0:
            assert a.channels_after % 16 == 0 and a.channels_after >= e.channels_after, (a, e)
        else:
            assert a.channels_after == e.channels_after
    assert any(g.channels_after < g.channels_before for g in auto.report.groups)


def test_nchwc_block_from_cpu_flags() -> None:
    from onnxsparse.quantize import parse_cpuinfo

    assert parse_cpuinfo("flags : fpu avx2 avx512f avx512_vnni\n", "x86_64").nchwc_block == 16
    assert parse_cpuinfo("flags : fpu avx avx2 fma\n", "x86_64").nchwc_block == 8
    assert parse_cpuinfo("flags : fpu sse4_2\n", "x86_64").nchwc_block == 1
    assert parse_cpuinfo("Features : fp asimd asimddp\n", "aarch64").nchwc_block == 1
