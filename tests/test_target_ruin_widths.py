"""A width whose predicted loss alone reaches RUIN_LOSS is not offered to the allocation, and is reported."""
from __future__ import annotations

from typing import Any

from onnxsparse.passes.prune_report import TargetReport
from onnxsparse.passes.prune_target import RUIN_LOSS, group_options, offered_widths


def test_ruinous_widths_are_dropped_and_listed() -> None:
    measured = {8: 0.2, 16: 0.6, 24: RUIN_LOSS, 28: 2.5}  # a 32-unit group, widths 24, 16 offered; 8, 4 ruinous
    keep, loss = group_options(32, 1, 1, measured)
    not_offered: list[dict[str, Any]] = []
    kept, losses = offered_widths(7, keep, loss, not_offered)
    assert all(v < RUIN_LOSS for v in losses) and kept[0] == 32 and losses[0] == 0.0
    assert [w["kept"] for w in not_offered] == [k for k, v in zip(keep, loss) if v >= RUIN_LOSS]
    assert {w["kept"] for w in not_offered} == {8, 4} and all(w["group"] == 7 for w in not_offered)
    assert len(kept) + len(not_offered) == len(keep)


def test_report_lists_widths_not_offered() -> None:
    report = TargetReport(metric="macs", ratio=0.7, tolerance=0.02, solver="dp", ladder=(0.5,),
                          cost_basis="macs", sensitivity_sessions=0,
                          widths_not_offered=[{"group": 3, "kept": 4, "loss": 1.7}])
    assert report.to_dict()["widths_not_offered"] == [{"group": 3, "kept": 4, "loss": 1.7}]
    assert "group 3 width 4 not offered: predicted loss 1.7" in report.table()
