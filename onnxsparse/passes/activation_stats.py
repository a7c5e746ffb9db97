"""Activation statistics on real data: how sparse the ReLU-family outputs are, per unit.

For every activation node of the ReLU family (``Relu``, ``Clip`` with min 0,
``HardSwish``, ``LeakyRelu``) the output is captured on calibration data
(:func:`onnxsparse.calibration.capture.capture` with ``counts=True``) and
reduced per unit along its channel axis: the fraction of exact zeros (for
``LeakyRelu``, which has none, the negative share), dead units (0 on every
sample and position) and constant units (one value everywhere, not 0).

The channel axis is the one a dependency group of :func:`onnxsparse.graph.build_groups`
puts on that tensor, so the units are the prunable units (``axis_from =
"group"``); a tensor in no group falls back to axis 1, or the last axis of a
rank-3 tensor (tokens x features) (``axis_from = "rank"``).

The same capture also feeds :func:`onnxsparse.passes.dead_units.detect`:
which units are dead / constant where the next layers read them, and how many
``prune --dead`` would remove.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from ..calibration.capture import capture
from ..graph import DependencyGraph, build_groups
from .dead_units import DeadUnitsReport, _prepared, _source, dead_unit_requests, detect

__all__ = ["ACTIVATION_OPS", "HISTOGRAM_BINS", "ActivationLayer", "ActivationReport", "activation_layers",
           "activation_statistics"]

#: Ops whose output statistics are reported (``Clip`` only with a minimum of 0).
ACTIVATION_OPS = ("Relu", "Clip", "HardSwish", "LeakyRelu")
#: Bins of the per-unit zero-fraction histograms: [0, 0.1), ..., [0.9, 1.0].
HISTOGRAM_BINS = 10


@dataclass
class ActivationLayer:
    """Statistics of one activation node's output, per unit along ``axis``."""

    node: str
    op: str
    value: str
    axis: int
    axis_from: str  #: ``group`` (a dependency group's axis) or ``rank`` (fallback)
    units: int = 0
    zeros: int = 0
    negatives: int = 0
    elements: int = 0
    dead: int = 0
    constant: int = 0  #: constant and not dead
    per_unit_zero: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.elements if self.elements else 0.0

    @property
    def negative_fraction(self) -> float:
        return self.negatives / self.elements if self.elements else 0.0

    @property
    def histogram(self) -> list[int]:
        """Units per zero-fraction bin (``HISTOGRAM_BINS`` bins over [0, 1])."""
        return np.histogram(self.per_unit_zero, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0].tolist()

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "value": self.value, "axis": self.axis, "axis_from": self.axis_from,
                "units": self.units, "zero_fraction": self.zero_fraction, "negative_fraction": self.negative_fraction,
                "dead": self.dead, "constant": self.constant, "elements_per_unit": self.elements // max(self.units, 1),
                "histogram": self.histogram}


@dataclass
class ActivationReport:
    data: str
    samples: int
    layers: list[ActivationLayer] = field(default_factory=list)
    dead_units: DeadUnitsReport | None = None
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        """Exact zeros over all elements of every reported activation output (model-level sparsity)."""
        total = sum(layer.elements for layer in self.layers)
        return sum(layer.zeros for layer in self.layers) / total if total else 0.0

    @property
    def histogram(self) -> list[int]:
        """Units of every layer per zero-fraction bin."""
        return np.sum([layer.histogram for layer in self.layers], axis=0).tolist() if self.layers else []

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data, "samples": self.samples, "sparsity": self.sparsity,
            "units": sum(layer.units for layer in self.layers),
            "dead": sum(layer.dead for layer in self.layers),
            "constant": sum(layer.constant for layer in self.layers),
            "histogram_bins": HISTOGRAM_BINS, "histogram": self.histogram,
            "layers": [layer.to_dict() for layer in self.layers],
            "dead_units": None if self.dead_units is None else self.dead_units.to_dict(),
            "seconds": self.seconds,
        }


def _clip_min(node: ir.Node) -> float | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        c = node.inputs[1].const_value
        return float(np.asarray(c.numpy()).reshape(-1)[0]) if c is not None and c.size == 1 else None
    value = node.attributes.get_float("min", None)  # opset < 11
    return None if value is None else float(value)


def _is_activation(node: ir.Node) -> bool:
    if (node.domain or "") not in ("", "ai.onnx") or node.op_type not in ACTIVATION_OPS:
        return False
    return node.op_type != "Clip" or _clip_min(node) == 0.0


def _axis(dg: DependencyGraph, value: ir.Value) -> tuple[int, str] | None:
    rank = len(value.shape) if value.shape is not None else None
    if not rank:
        return None
    in_group = [a for a in range(rank) if dg.groups_at(value.name or "", a)]
    prunable = [a for a in in_group if any(g.prunable for g in dg.groups_at(value.name or "", a))]
    if prunable or in_group:
        return (prunable or in_group)[0], "group"
    return (rank - 1 if rank == 3 else min(1, rank - 1)), "rank"


def activation_layers(dg: DependencyGraph) -> list[tuple[ir.Node, int, str]]:
    """``(node, channel axis, where the axis came from)`` of every ReLU-family activation."""
    out = []
    for node in dg.model.graph:
        if _is_activation(node) and node.outputs and node.outputs[0] is not None:
            axis = _axis(dg, node.outputs[0])
            if axis is not None:
                out.append((node, *axis))
    return out


def activation_statistics(
    model: Any,
    calib: Any,
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    samples: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> ActivationReport:
    """Per-unit activation statistics of ``model`` on ``calib`` and its dead / constant units (one capture)."""
    from ..calibration.data import DEFAULT_CALIB_SAMPLES

    start = time.perf_counter()
    m = _prepared(model)
    dg = build_groups(m)
    source = _source(calib, m, shapes, samples or DEFAULT_CALIB_SAMPLES, seed)
    layers = activation_layers(dg)
    keys = [(node.outputs[0].name or "", axis) for node, axis, _ in layers]
    reads, _ = dead_unit_requests(dg)
    cap = capture(m, source, channels=list(dict.fromkeys(keys + reads)), batch_size=batch_size, seed=seed,
                  counts=True)
    report = ActivationReport(source.origin or "data", cap.samples)
    for (node, axis, origin), key in zip(layers, keys):
        s = cap.channel(*key)
        if s is None:
            continue
        counted = s.counted()
        report.layers.append(ActivationLayer(
            node.name or "", node.op_type, key[0], axis, origin, units=s.channels, zeros=int(counted.zeros.sum()),
            negatives=int(counted.negatives.sum()), elements=s.count * s.channels, dead=int(s.dead.sum()),
            constant=int((s.constant & ~s.dead).sum()), per_unit_zero=s.zero_fraction))
    report.dead_units = detect(dg, cap, data=report.data)
    report.seconds = time.perf_counter() - start
    return report
