"""Dead and constant units, found on calibration data and removed exactly.

A unit (one root index of a prunable dependency group: a conv filter with its
BatchNorm entries, residual partners, the next layer's input columns, ...) can
only influence the rest of the network where a node *sums over it* (a
:class:`~onnxsparse.graph.Contraction`; see :mod:`onnxsparse.graph.masking`).
So a unit is judged at the group level, at every tensor of the group that a
contraction reads:

* **dead**: exactly 0 at every sample and position of every such read (the
  ReLU after a filter whose pre-activation is never positive).  Removing it
  changes nothing.
* **constant**: one value ``c`` per read position on every sample (a filter
  with zero weights and a bias, a depthwise channel fed by a dead one).  Its
  contribution ``W[:, unit] * c`` is folded into each consumer's bias
  (:func:`onnxsparse.passes.reconstruct.solve_bias` with the exact column
  means); that is exact for Gemm/MatMul and for a Conv without zero padding
  (padding makes the border see 0 instead of ``c``), so a constant unit read by
  a padded Conv, a grouped Conv, a ConvTranspose or a product of two
  activations is kept, with the reason.

A residual group's unit is therefore removable only if the stream every
branch adds into is dead/constant where the next layers read it.  Removal
goes through the one engine: a :class:`~onnxsparse.graph.PrunePlan` over the
groups with the bias fold of :mod:`.reconstruct` (``bias`` repair) applied
before :func:`~onnxsparse.graph.apply_plan`.  "Exact" means on the data seen;
another input may wake a dead unit, so :func:`remove_dead_units` measures the
output difference on the calibration data and ``onnxsparse validate`` measures
it on other data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from ..calibration.capture import (
    Capture,
    LayerRequest,
    LinearView,
    batching,
    capture,
    session_with_outputs,
)
from ..calibration.data import DataSource
from ..graph import DependencyGraph, PrunePlan, build_groups
from ..graph.slots import SlotKey
from ..report import format_table

__all__ = [
    "DeadUnitsReport",
    "GroupUnits",
    "dead_unit_requests",
    "detect",
    "find_dead_units",
    "output_difference",
    "read_slots",
    "remove_dead_units",
]

logger = logging.getLogger(__name__)


@dataclass
class GroupUnits:
    """Dead / constant units of one prunable group, and which of them can go exactly."""

    group: int
    kind: str
    root: str
    units: int
    dead: list[int] = field(default_factory=list)
    constant: list[int] = field(default_factory=list)  #: constant and not dead
    removable: list[int] = field(default_factory=list)  #: dead, plus constants that fold exactly
    notes: list[str] = field(default_factory=list)  #: why constant units stay

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "kind": self.kind, "root": self.root, "units": self.units,
                "dead": list(self.dead), "constant": list(self.constant), "removable": list(self.removable),
                "notes": list(self.notes)}


@dataclass
class DeadUnitsReport:
    """What :func:`find_dead_units` found (and :func:`remove_dead_units` removed)."""

    data: str
    samples: int
    groups: list[GroupUnits] = field(default_factory=list)
    removed: dict[int, list[int]] = field(default_factory=dict)  #: group id -> units removed
    #: per graph output: max |original - pruned| and that divided by max |original|, on the calibration data
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    max_rel_diff: dict[str, float] = field(default_factory=dict)
    applied: bool = False  #: :func:`remove_dead_units` ran (``removed`` is what it removed)
    seconds: float = 0.0

    @property
    def units(self) -> int:
        return sum(g.units for g in self.groups)

    @property
    def dead(self) -> int:
        return sum(len(g.dead) for g in self.groups)

    @property
    def constant(self) -> int:
        return sum(len(g.constant) for g in self.groups)

    @property
    def removable(self) -> int:
        return sum(len(g.removable) for g in self.groups)

    @property
    def removed_units(self) -> int:
        return sum(len(v) for v in self.removed.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data, "samples": self.samples, "units": self.units, "dead": self.dead,
            "constant": self.constant, "removable": self.removable, "removed_units": self.removed_units,
            "applied": self.applied, "removed": {str(k): list(v) for k, v in self.removed.items()},
            "max_abs_diff": dict(self.max_abs_diff), "max_rel_diff": dict(self.max_rel_diff),
            "groups": [g.to_dict() for g in self.groups if g.dead or g.constant], "seconds": self.seconds,
        }

    def summary(self) -> str:
        head = (f"dead units ({self.samples} samples of {self.data}): {self.dead} dead, {self.constant} constant "
                f"of {self.units} units in {len(self.groups)} prunable groups; {self.removable} removable exactly")
        if self.applied:
            head += f", {self.removed_units} removed"
        lines = [head]
        rows = [[g.group, g.kind, g.root, g.units, len(g.dead), len(g.constant), len(g.removable),
                 *([len(self.removed.get(g.group, ()))] if self.applied else []), "; ".join(g.notes[:1]) or "-"]
                for g in self.groups if g.dead or g.constant]
        if rows:
            lines.append(format_table(["group", "kind", "root", "units", "dead", "constant", "removable",
                                       *(["removed"] if self.applied else []), "note"], rows))
        for name, diff in self.max_abs_diff.items():
            lines.append(f"output {name}: max |diff| {diff:.3g} (relative {self.max_rel_diff.get(name, 0.0):.3g}) "
                         "on the calibration data")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------------


def read_slots(dg: DependencyGraph) -> dict[int, list[tuple[str, SlotKey]]]:
    """Per prunable group: ``(contraction node, activation slot)`` of every contraction that reads it."""
    nodes = {n.name or "": n for n in dg.model.graph}
    members = {g.id: {m.slot.key for m in g.members} for g in dg.prunable}
    out: dict[int, list[tuple[str, SlotKey]]] = {gid: [] for gid in members}
    for c in dg.contractions:
        node = nodes.get(c.node)
        x = node.inputs[c.input] if node is not None and c.input < len(node.inputs) else None
        if x is None:
            continue
        key = (x.name or "", c.axis)
        for gid, keys in members.items():
            if key in keys:
                out[gid].append((c.node, key))
    return out


def _folds_exactly(view: LinearView) -> bool:
    """Whether every input column of ``view`` sees a constant channel's value (no zero padding)."""
    if view.kind == "dense":
        return True
    if view.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return all(k == 1 for k in view.kernel) and all(s == 1 for s in view.strides)
    return view.auto_pad == "VALID" or not any(view.pads)


def _fold_reasons(dg: DependencyGraph) -> dict[str, str | None]:
    """Per contraction node: ``None`` if a constant input unit folds exactly into its bias, else why not."""
    from .reconstruct import find_consumers

    out: dict[str, str | None] = {}
    for cons in find_consumers(dg):
        if cons.view is None:
            out[cons.name] = cons.reason or "no linear view"
        elif not _folds_exactly(cons.view):
            out[cons.name] = (f"{cons.node.op_type} '{cons.name}' zero-pads its input: a constant channel's "
                              "border differs from its value")
        else:
            out[cons.name] = None
    return out


def dead_unit_requests(dg: DependencyGraph, *, fold: bool = False) -> tuple[list[SlotKey], list[LayerRequest]]:
    """Activation slots to capture (with ``counts=True``), and the consumers' column sums when folding."""
    channels = list(dict.fromkeys(key for reads in read_slots(dg).values() for _, key in reads))
    layers: list[LayerRequest] = []
    if fold:
        from .reconstruct import candidate_requests

        layers = candidate_requests(dg)[1]
    return channels, layers


def _round_to_multiple(size: int, removable: np.ndarray, multiple: int) -> np.ndarray:
    """The removable units to remove so the kept width stays a multiple of ``multiple`` (the blocked
    kernels' width): keeping a dead unit is exact too, and an odd width would run slower."""
    if multiple <= 1 or removable.size == 0:
        return removable
    kept = -(-(size - removable.size) // multiple) * multiple
    return removable[: max(0, size - kept)] if kept <= size else removable[:0]


def detect(dg: DependencyGraph, cap: Capture, *, min_keep: int = 1, data: str = "data",
           multiples: Mapping[int, int] | None = None) -> DeadUnitsReport:
    """Classify every prunable group's units from statistics captured with ``counts=True``;
    ``multiples`` (group id -> unit multiple, from ``round_to``) keeps widths kernel-friendly."""
    report = DeadUnitsReport(data, cap.samples)
    folds = _fold_reasons(dg)
    for gid, reads in read_slots(dg).items():
        group = dg.group(gid)
        entry = GroupUnits(gid, group.kind, str(group.root), group.size)
        report.groups.append(entry)
        if not reads:
            entry.notes.append("no contraction reads this group")
            continue
        dead = np.ones(group.size, dtype=bool)
        const = np.ones(group.size, dtype=bool)
        ok = np.ones(group.size, dtype=bool)
        notes: list[str] = []
        for node, key in reads:
            stats = cap.channel(*key)
            if stats is None or stats.count == 0:
                dead[:] = const[:] = ok[:] = False
                notes.append(f"no statistics for {key[0]}")
                break
            pos = dg.positions(group, key)
            zero = (stats.dead[pos]).all(axis=1)
            flat = (stats.constant[pos]).all(axis=1)
            dead &= zero
            const &= flat
            reason = folds.get(node, "no weighted consumer (a product of two activations)")
            if reason is not None:
                if np.any(flat & ~zero):
                    notes.append(reason)
                ok &= zero
        entry.dead = np.flatnonzero(dead).tolist()
        entry.constant = np.flatnonzero(const & ~dead).tolist()
        removable = np.flatnonzero(ok & const)
        keep = max(min_keep, 1) - (group.size - removable.size)
        if keep > 0:  # a group keeps at least min_keep units, dead or not
            notes.append(f"keeps {keep} removable unit(s): min_keep {max(min_keep, 1)}")
            removable = removable[keep:]
        multiple = (multiples or {}).get(gid, 1)
        rounded = _round_to_multiple(group.size, removable, multiple)
        if rounded.size < removable.size:
            notes.append(f"keeps {removable.size - rounded.size} removable unit(s): widths stay multiples of "
                         f"{multiple} (--round-to)")
        entry.removable = rounded.tolist()
        entry.notes = list(dict.fromkeys(notes))
    return report


def _prepared(model: Any) -> ir.Model:
    from ..io import load_model, own_weights
    from .prune import prepare_for_analysis

    return prepare_for_analysis(own_weights(load_model(model)))


def _source(calib: Any, model: ir.Model, shapes, samples: int | None, seed: int) -> DataSource:
    from .prune import _calibration_source

    return _calibration_source(calib, model, shapes, samples, seed)


def find_dead_units(
    model: Any,
    calib: Any,
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    samples: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    min_keep: int = 1,
    round_to: int | str = "auto",
) -> DeadUnitsReport:
    """Dead and constant units of every prunable group of ``model`` on ``calib`` (nothing is changed);
    ``removable`` are those ``prune --dead --round-to ROUND_TO`` removes.

    ``model`` is anything :func:`onnxsparse.io.load_model` reads (an ``ir.Model`` is normalised in
    place); ``calib`` anything :func:`onnxsparse.calibration.load_data` reads.
    """
    from ..calibration.data import DEFAULT_CALIB_SAMPLES
    from .prune import _unit_round

    start = time.perf_counter()
    m = _prepared(model)
    dg = build_groups(m)
    source = _source(calib, m, shapes, samples or DEFAULT_CALIB_SAMPLES, seed)
    channels, _ = dead_unit_requests(dg)
    cap = capture(m, source, channels=channels, batch_size=batch_size, seed=seed, counts=True)
    report = detect(dg, cap, min_keep=min_keep, data=source.origin or "data", multiples=_unit_round(dg, round_to))
    report.seconds = time.perf_counter() - start
    return report


# ---------------------------------------------------------------------------------------------------
# removal
# ---------------------------------------------------------------------------------------------------


def output_difference(reference: ir.Model, model: ir.Model, source: DataSource, *,
                      batch_size: int = 32) -> tuple[dict[str, float], dict[str, float]]:
    """Max ``|ref - model|`` per graph output over ``source``, and that over max ``|ref|``."""
    names = [v.name or "" for v in reference.graph.outputs]
    ref, new = session_with_outputs(reference, ()), session_with_outputs(model, ())
    wanted = {i.name for i in ref.get_inputs()}
    diff = dict.fromkeys(names, 0.0)
    scale = dict.fromkeys(names, 0.0)
    size, limit = batching(reference, source, batch_size)
    for batch in source.batches(size, limit):
        feeds = {k: v for k, v in batch.items() if k in wanted}
        for name, a, b in zip(names, ref.run(names, feeds), new.run(names, feeds)):
            a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            if a64.size:
                diff[name] = max(diff[name], float(np.max(np.abs(a64 - b64))))
                scale[name] = max(scale[name], float(np.max(np.abs(a64))))
    rel = {n: (diff[n] / scale[n] if scale[n] else (0.0 if diff[n] == 0 else float("inf"))) for n in names}
    return diff, rel


def remove_dead_units(
    model: ir.Model,
    source: DataSource,
    *,
    batch_size: int = 32,
    seed: int = 0,
    min_keep: int = 1,
    round_to: int | str = "auto",
    measure: bool = True,
    build: Mapping[str, Any] | None = None,
) -> DeadUnitsReport:
    """Remove every exactly removable dead / constant unit of the prepared ``model`` in place.

    ``model`` must already be normalised (:func:`onnxsparse.passes.prune.prepare_for_analysis`);
    ``build`` holds keyword arguments of :func:`onnxsparse.graph.build_groups` (registry, exclude, block,
    ...).  ``round_to`` as in ``prune`` (``"auto"``: widths the CPU's blocked kernels run stay
    multiples of their block).  With ``measure`` the output difference to the unchanged model on
    ``source`` is measured.
    """
    from .prune import _unit_round
    from .reconstruct import reconstruct

    start = time.perf_counter()
    dg = build_groups(model, **dict(build or {}))
    channels, layers = dead_unit_requests(dg, fold=True)
    cap = capture(model, source, channels=channels, layers=layers, batch_size=batch_size, seed=seed, counts=True)
    report = detect(dg, cap, min_keep=min_keep, data=source.origin or "data", multiples=_unit_round(dg, round_to))
    plan = PrunePlan.create(dg, {g.group: g.removable for g in report.groups if g.removable})
    report.removed = {gid: list(units) for gid, units in plan.removed.items()}
    report.applied = True
    if not plan.empty:
        reference = model.clone() if measure else None
        rec = reconstruct(dg, plan, source, mode="bias", sequential=False, stats=cap, batch_size=batch_size,
                          seed=seed, measure=False)
        rec.prune_with(plan, model)
        if reference is not None:
            report.max_abs_diff, report.max_rel_diff = output_difference(reference, model, source,
                                                                         batch_size=batch_size)
    logger.info("removed %d dead/constant units in %d groups", report.removed_units, len(report.removed))
    report.seconds = time.perf_counter() - start
    return report
