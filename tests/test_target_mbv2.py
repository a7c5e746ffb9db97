"""``prune --target`` on ``digits_mbv2``: inverted residual blocks (expand, depthwise, linear projection)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SAMPLES

from onnxsparse._ort import make_session, session_options
from onnxsparse.analysis import count_macs
from onnxsparse.io import load_model, max_runtime_ir_version, to_proto
from onnxsparse.passes import prune_target
from onnxsparse.passes.prune import prune
from onnxsparse.passes.prune_target import TOLERANCE

CALIB = SAMPLES.parent / "data" / "digits_resnet_calib.npz"  # the same task and data as digits_resnet
SHAPES = {"input": (1, 1, 16, 16)}


@pytest.mark.parametrize("name,widths", [
    ("digits_mbv2", [16, 24, 32, 96, 128, 144, 192]),
    ("digits_mbv2_narrow", [8, 12, 16, 48, 72, 96, 128]),
])
def test_macs_target_is_met_on_the_mobilenet_samples(monkeypatch: pytest.MonkeyPatch, name: str, widths: list[int]) -> None:
    monkeypatch.setattr(prune_target, "VERIFY_CANDIDATES", 1)  # the band, not the verification round (own tests)
    model = SAMPLES / f"{name}.onnx"
    res = prune(model, calib=CALIB, calib_samples=16, target="macs=0.7", round_to=4)
    target = res.report.target
    assert target is not None and target.met
    before, after = count_macs(load_model(model), SHAPES), count_macs(res.model, SHAPES)
    assert before is not None and after is not None
    assert abs(after / before - 0.7) <= TOLERANCE * 0.7
    groups = res.report.groups
    # the expansions (96/144/192 wide: expand conv, depthwise conv and projection input) and the narrow
    # residual streams are separate groups, every one offered
    assert sorted({g.total for g in groups}) == widths
    assert all(g.kept % 4 == 0 for g in groups if g.kept < g.total)
    proto = to_proto(res.model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    x = np.load(CALIB)["input"][:5]  # a batch other than the export's 2
    logits = make_session(proto, session_options()).run(None, {"input": x})[0]
    assert logits.shape == (5, 10) and np.isfinite(logits).all()
