"""The report a pruning run produces: sizes before/after, groups pruned, groups skipped."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..report import format_table, human_bytes, human_count

if TYPE_CHECKING:
    from .reconstruct import RepairReport

__all__ = ["GroupReport", "SkippedGroup", "PruneReport", "TargetReport", "TargetRound"]


@dataclass(frozen=True)
class GroupReport:
    """One pruned (or prunable but untouched) group."""

    id: int
    root: str  #: the tensor axis the group is indexed by
    nodes: tuple[str, ...]  #: nodes whose weights/attributes change
    total: int  #: removable units before
    kept: int  #: units after
    channels_before: int  #: positions on the root axis before
    channels_after: int
    criterion: str
    note: str | None = None
    kind: str = "channel"  #: channel | head | kv_group | neuron (onnxsparse.graph.kinds)

    @property
    def removed(self) -> int:
        return self.total - self.kept


@dataclass(frozen=True)
class SkippedGroup:
    id: int
    root: str
    nodes: tuple[str, ...]
    total: int
    reason: str
    reasons: tuple[str, ...] = ()
    kind: str = "channel"


@dataclass
class TargetRound:
    """One allocation of ``prune --target`` and what the pruned copy measured."""

    budget: float  #: the fraction the knapsack was asked to keep (scaled by target / measured between rounds)
    predicted: float  #: the fraction the per-group costs add up to
    measured: float  #: counted (MACs, params) or timed (latency p50 ratio) on the pruned copy
    loss: float  #: the summed predicted loss (relative output error of each group pruned alone)
    keep: dict[int, int] = field(default_factory=dict)  #: kept units per allocated group
    blocks: tuple[int, ...] = ()  #: residual blocks removed whole (ids of ``find_blocks``)
    timing: dict[str, float] = field(default_factory=dict)  #: latency rounds: reference / candidate p50 (ms)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "predicted": self.predicted, "measured": self.measured, "loss": self.loss,
                **({"blocks": list(self.blocks)} if self.blocks else {}),
                **({"timing": dict(self.timing)} if self.timing else {}), **({"note": self.note} if self.note else {})}


@dataclass
class TargetReport:
    """How ``prune --target METRIC=R`` chose per-group widths (:mod:`onnxsparse.passes.prune_target`)."""

    metric: str
    ratio: float
    tolerance: float
    solver: str
    ladder: tuple[float, ...]
    cost_basis: str  #: the per-group cost the knapsack allocates on (latency: MACs, corrected by timing)
    sensitivity_sessions: int = 0
    table_measured: int = 0  #: latency lookup-table entries timed in this run
    table_cached: int = 0  #: ... and read from the on-disk cache
    rounds: list[TargetRound] = field(default_factory=list)
    chosen_round: int | None = None
    measured: float | None = None
    met: bool = False
    predicted_loss: float | None = None
    groups: dict[int, tuple[int, int]] = field(default_factory=dict)  #: (kept, total) units per allocated group
    #: residual blocks removed whole: id, add, x, branch_output, loss (rel. error alone), saved (cost fraction)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    block_candidates: int = 0  #: removable blocks offered to the allocation
    #: removable blocks not offered, each with ``add`` and ``reason`` (e.g. removing it alone breaks the model)
    blocks_not_offered: list[dict[str, Any]] = field(default_factory=list)
    #: widths not offered: group, kept, loss (the width alone predicted at or past ``RUIN_LOSS``)
    widths_not_offered: list[dict[str, Any]] = field(default_factory=list)
    #: the verification round's candidates: round, source, widths, blocks, predicted_loss, measured, whole_loss, chosen
    verify: list[dict[str, Any]] = field(default_factory=list)
    verify_seconds: float = 0.0
    note: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"target": f"{self.metric}={self.ratio:g}", "metric": self.metric, "ratio": self.ratio,
                "tolerance": self.tolerance, "solver": self.solver, "cost_basis": self.cost_basis,
                "ladder": list(self.ladder), "sensitivity_sessions": self.sensitivity_sessions,
                **({"latency_table": {"measured": self.table_measured, "cached": self.table_cached}}
                   if self.table_measured or self.table_cached else {}),
                "measured": self.measured, "met": self.met, "predicted_loss": self.predicted_loss,
                "chosen_round": None if self.chosen_round is None else self.chosen_round + 1,
                "rounds": [r.to_dict() for r in self.rounds],
                "groups": {str(g): {"kept": k, "total": t, "ratio": (t - k) / t} for g, (k, t) in self.groups.items()},
                "block_candidates": self.block_candidates, "blocks_removed": [dict(b) for b in self.blocks],
                "blocks_not_offered": [dict(b) for b in self.blocks_not_offered],
                "widths_not_offered": [dict(w) for w in self.widths_not_offered],
                "verify": {"candidates": [dict(c) for c in self.verify], "seconds": round(self.verify_seconds, 3)},
                "note": self.note or None, "seconds": round(self.seconds, 3)}

    def table(self) -> str:
        rows = [[i + 1, f"{r.budget:.4f}", f"{r.predicted:.4f}", f"{r.measured:.4f}", f"{r.loss:.4g}",
                 "chosen" if i == self.chosen_round else (r.note or "")] for i, r in enumerate(self.rounds)]
        verdict = ("met" if self.met else "NOT met") + (f" (measured {self.measured:.4f})" if self.measured is not None else "")
        text = format_table(["round", "budget", "predicted", "measured", "pred. loss", ""], rows,
                            title=f"target {self.metric}={self.ratio:g} (within {self.tolerance:.0%}"
                                  f"{' or below' if self.metric == 'latency' else ''}): {verdict}; "
                                  f"allocated on {self.cost_basis}"
                                  + (f" ({self.table_measured} widths timed, {self.table_cached} cached)"
                                     if self.table_measured or self.table_cached else "")
                                  + f", {self.solver} solver")
        removed = "".join(f"\nremoved block {b['id']} ({b['add']}): predicted loss {b['loss']:.4g}, "
                          f"saves {b['saved']:.2%} of {self.cost_basis}" for b in self.blocks)
        removed += "".join(f"\nblock at {b['add']} not offered: {b['reason']}" for b in self.blocks_not_offered)
        removed += "".join(f"\ngroup {w['group']} width {w['kept']} not offered: predicted loss {w['loss']:.4g} "
                           f">= the ruin loss (a broken model)" for w in self.widths_not_offered)
        verified = "".join(f"\nverify: round {c['round']} ({c['source']}): predicted loss {c['predicted_loss']:.4g}, "
                           f"measured {c['measured']:.4f}, whole-model loss {c['whole_loss']:.4g}"
                           + (" <- kept" if c["chosen"] else "") for c in self.verify)
        return text + removed + verified + (f"\n{self.note}" if self.note else "")


def _ratio(after: int | None, before: int | None) -> float | None:
    if after is None or not before:
        return None
    return after / before


@dataclass
class PruneReport:
    """Everything ``onnxsparse prune`` prints or writes with ``--report``."""

    channels: float
    criterion: str
    global_ranking: bool
    round_to: int | str
    min_keep: int
    exclude: tuple[str, ...] = ()
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    file_bytes_before: int | None = None
    file_bytes_after: int | None = None
    mac_dims: dict[str, int] = field(default_factory=dict)
    groups: list[GroupReport] = field(default_factory=list)
    skipped: list[SkippedGroup] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    analysis: dict[str, float] = field(default_factory=dict)
    #: calibration data used (``data``, ``samples``, ``capture_s``), or None without ``--calib``
    calibration: dict[str, Any] | None = None
    #: per-layer repairs and their errors, or None without a repair
    repair: RepairReport | None = None
    #: dead / constant units removed first (``prune --dead``), a :class:`~onnxsparse.passes.dead_units.DeadUnitsReport`
    dead: Any = None
    #: nothing was removed and the input model was handed back as it was (not normalised)
    unchanged: bool = False
    #: why no group was found at all (empty when there were groups)
    no_groups_reason: str = ""
    #: ratio of heads / KV groups removed per attention block, and of FFN neurons (None: as ``channels``)
    heads: float = 0.0
    ffn: float | None = None
    #: ``prune --target``: the target, the rounds and the widths chosen (None without a target)
    target: TargetReport | None = None

    @property
    def pruned_groups(self) -> list[GroupReport]:
        return [g for g in self.groups if g.kept < g.total]

    @property
    def ffn_ratio(self) -> float:
        """The ratio FFN neurons were pruned with (``channels`` unless ``ffn`` was given)."""
        return self.channels if self.ffn is None else self.ffn

    @property
    def params_ratio(self) -> float | None:
        return _ratio(self.params_after, self.params_before)

    @property
    def macs_ratio(self) -> float | None:
        return _ratio(self.macs_after, self.macs_before)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {
                "channels": self.channels,
                "heads": self.heads,
                "ffn": self.ffn_ratio,
                "criterion": self.criterion,
                "global": self.global_ranking,
                "round_to": self.round_to,
                "min_keep": self.min_keep,
                "exclude": list(self.exclude),
            },
            "params": {"before": self.params_before, "after": self.params_after, "ratio": self.params_ratio},
            "macs": {
                "before": self.macs_before,
                "after": self.macs_after,
                "ratio": self.macs_ratio,
                "dims": dict(self.mac_dims),
            },
            "weight_bytes": {
                "before": self.weight_bytes_before,
                "after": self.weight_bytes_after,
                "ratio": _ratio(self.weight_bytes_after, self.weight_bytes_before),
            },
            "file_bytes": {
                "before": self.file_bytes_before,
                "after": self.file_bytes_after,
                "ratio": _ratio(self.file_bytes_after, self.file_bytes_before),
            },
            "kinds": self.kind_counts(),
            "groups_pruned": len(self.pruned_groups),
            "groups_prunable": len(self.groups),
            "groups_skipped": len(self.skipped),
            "groups": [dict(asdict(g), removed=g.removed) for g in self.groups],
            "skipped": [asdict(s) for s in self.skipped],
            "skip_reasons": dict(Counter(s.reason for s in self.skipped).most_common()),
            "timings_s": dict(self.timings),
            "analysis": dict(self.analysis),
            "calibration": None if self.calibration is None else dict(self.calibration),
            "repair": None if self.repair is None else self.repair.to_dict(),
            "dead": None if self.dead is None else self.dead.to_dict(),
            "unchanged": self.unchanged,
            "no_groups_reason": self.no_groups_reason or None,
            "target": None if self.target is None else self.target.to_dict(),
        }

    def kind_counts(self) -> dict[str, dict[str, int]]:
        """Per kind (channel, head, kv_group, neuron): groups pruned / prunable / skipped, units removed / total."""
        out: dict[str, dict[str, int]] = {}
        for g in self.groups:
            c = out.setdefault(g.kind, dict(pruned=0, prunable=0, skipped=0, units_removed=0, units=0))
            c["prunable"] += 1
            c["pruned"] += g.kept < g.total
            c["units_removed"] += g.removed
            c["units"] += g.total
        for skipped in self.skipped:
            c = out.setdefault(skipped.kind, dict(pruned=0, prunable=0, skipped=0, units_removed=0, units=0))
            c["skipped"] += 1
        return out

    # -- text -------------------------------------------------------------
    def size_table(self) -> str:
        rows = [
            ["params", human_count(self.params_before), human_count(self.params_after), _fmt(self.params_ratio)],
            ["MACs", human_count(self.macs_before), human_count(self.macs_after), _fmt(self.macs_ratio)],
            [
                "weight bytes",
                human_bytes(self.weight_bytes_before),
                human_bytes(self.weight_bytes_after),
                _fmt(_ratio(self.weight_bytes_after, self.weight_bytes_before)),
            ],
        ]
        if self.file_bytes_before is not None or self.file_bytes_after is not None:
            rows.append(
                [
                    "file bytes",
                    human_bytes(self.file_bytes_before),
                    human_bytes(self.file_bytes_after),
                    _fmt(_ratio(self.file_bytes_after, self.file_bytes_before)),
                ]
            )
        dims = ", ".join(f"{k}={v}" for k, v in self.mac_dims.items())
        title = "size" + (f" (MACs with {dims})" if dims else "")
        return format_table(["", "before", "after", "after/before"], rows, title=title)

    def groups_table(self, limit: int | None = None) -> str:
        groups = self.pruned_groups
        shown = groups if limit is None else groups[:limit]
        rows = [
            [g.id, g.kind, _short(g.nodes), f"{g.kept}/{g.total}", f"{g.channels_after}/{g.channels_before}",
             g.criterion]
            for g in shown
        ]
        text = format_table(
            ["group", "kind", "nodes", "kept units", "channels", "criterion"],
            rows,
            title=f"pruned groups: {len(groups)} of {len(self.groups)} prunable",
        )
        if limit is not None and len(groups) > limit:
            text += f"\n... {len(groups) - limit} more (see --report / --json)"
        return text

    def skipped_table(self, limit: int | None = None) -> str:
        shown = self.skipped if limit is None else self.skipped[:limit]
        rows = [[s.id, s.kind, _short(s.nodes), s.total, s.reason] for s in shown]
        text = format_table(["group", "kind", "nodes", "units", "reason"], rows, title=f"skipped groups: {len(self.skipped)}")
        if limit is not None and len(self.skipped) > limit:
            text += f"\n... {len(self.skipped) - limit} more (see --report / --json)"
        return text

    def summary(self, limit: int | None = 30) -> str:
        parts = [self.size_table(), "", self.groups_table(limit)]
        if self.target is not None:
            parts += ["", self.target.table()]
        if self.no_groups_reason:
            parts.append(f"no channel groups: {self.no_groups_reason}")
        if self.unchanged:
            parts.append("nothing was removed: the output is the input model, unchanged")
        if self.repair is not None and self.repair.layers:
            parts += ["", self.repair.table()]
        if self.dead is not None:
            parts += ["", self.dead.summary()]
        if self.skipped:
            parts += ["", self.skipped_table(limit)]
        return "\n".join(parts)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _short(nodes: tuple[str, ...], width: int = 48) -> str:
    if not nodes:
        return "-"
    text = nodes[0] if len(nodes) == 1 else f"{nodes[0]} (+{len(nodes) - 1})"
    return text if len(text) <= width else text[: width - 3] + "..."
