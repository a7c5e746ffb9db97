"""Sensitivity analysis: how much each prunable group hurts the outputs when pruned alone.

``sensitivity(model, calib, ratios=(0.1, 0.25, 0.5))`` builds the dependency groups
(:func:`onnxsparse.graph.build_groups`, after the same ``normalize`` and attention
rewrites as ``prune``), scores every prunable group with a criterion, and for every
(group, ratio) removes that ratio of the group's lowest-scoring units *alone*, everything
else intact.  The removal is done with :func:`onnxsparse.graph.masked_copy` (the removed
units are made to contribute nothing; same outputs as the pruned model, without rewriting
the graph), run with onnxruntime on the calibration samples and compared with the
unmasked model:

* ``rel_mse``: ``sum((y - y0)^2) / sum(y0^2)`` of each output over all samples;
* ``cosine``: the cosine between ``y`` and ``y0`` of each sample (flattened), averaged over samples;

both averaged over the model's float outputs.

``macs_saved`` estimates the MACs the removal saves per sample: every MAC-counting node
(:mod:`onnxsparse.analysis.macs`) one of whose inputs/outputs loses positions along an axis
loses the same fraction of its MACs (the largest such fraction when several of its axes do;
removing a fraction of one channel/head/neuron axis of a Conv, Gemm or MatMul removes that
fraction of its multiply-accumulates).  Element-wise ops count no MACs.

Units are selected as ``prune --round-to 1 --min-keep 1`` selects them
(``floor(ratio * units)``, lowest scores first), so a group's error at a ratio is the error of
``prune`` removing just that group's units at that ratio.  A ratio that removes 0 units of a
group is reported as such (``units_removed == 0``, no error).

Residual blocks (:mod:`.blocks`): every removable ``x + f(x)`` is also evaluated with its branch
dropped (``report.blocks``, kind ``block``; declined ones in ``report.skipped_blocks``), with the
same metrics; ``macs_saved`` is the branch's MACs.

The evaluations are independent tasks (``("group", id, nodes, removed)``, ``("block", Block)``) run
by :func:`onnxsparse.executor.run_tasks`: in this process, in local worker processes or on Ray, each
worker rebuilding the analysis once from the model file; on 1 intra-op thread each is deterministic,
so every executor gives bit-identical numbers.  With ``cache``, each is stored under a hash of the
model file, criterion, data and the task, and an interrupted sweep resumes.

Cost: one onnxruntime session per (group, ratio) with at least one unit removed: a model clone,
the graph serialised without its large weights (they reach onnxruntime as in-memory initializers)
and session creation, then the calibration samples in batches of ``batch_size`` on 1 intra-op
thread (MiniLM-L6, 91 MB, 32 sentences: ~0.3 s per (group, ratio); docs/sensitivity.md).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from ..errors import UsageError
from ..executor import ExecutorSpec, Setup, TaskCache, parse_executor, run_tasks
from ..graph.kinds import HEAD_KINDS, KINDS

if TYPE_CHECKING:  # options.sensitivity reads this module's defaults
    from ..options.sensitivity import SensitivityOptions

__all__ = [
    "BLOCK_KIND",
    "BlockSensitivity",
    "DEFAULT_RATIOS",
    "run_sensitivity",
    "DEFAULT_SAMPLES",
    "GroupSensitivity",
    "RatioResult",
    "SensitivityReport",
    "SkippedEntry",
    "macs_removed",
    "output_errors",
    "parse_ratios",
    "prepare",
    "sensitivity",
]

logger = logging.getLogger(__name__)

DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.25, 0.5)
DEFAULT_SAMPLES = 32
#: the kind of a whole residual block in reports (and in ``kinds``)
BLOCK_KIND = "block"
#: bump when what a cached evaluation means changes
_CACHE_VERSION = 1


@dataclass
class RatioResult:
    """One (group, ratio) measurement."""

    ratio: float
    units_removed: int
    rel_mse: float | None = None  #: mean over outputs of sum((y-y0)^2)/sum(y0^2); None when nothing was removed
    cosine: float | None = None  #: mean over outputs of the per-sample cosine(y, y0)
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)
    macs_saved: int | None = None  #: per sample (see the module docstring)
    macs_saved_fraction: float | None = None  #: of the model's MACs
    seconds: float = 0.0
    note: str | None = None
    #: the root indices removed (for tying to a real :class:`~onnxsparse.graph.PrunePlan`; not in to_dict)
    removed: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "units_removed": self.units_removed, "rel_mse": self.rel_mse,
                "cosine": self.cosine, "per_output": self.per_output, "macs_saved": self.macs_saved,
                "macs_saved_fraction": self.macs_saved_fraction, "seconds": round(self.seconds, 4),
                **({"note": self.note} if self.note else {})}


@dataclass
class GroupSensitivity:
    id: int
    kind: str
    nodes: tuple[str, ...]
    units: int
    channels: int
    criterion: str
    results: list[RatioResult] = field(default_factory=list)

    def at(self, ratio: float) -> RatioResult | None:
        return next((r for r in self.results if math.isclose(r.ratio, ratio)), None)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "nodes": list(self.nodes), "units": self.units,
                "channels": self.channels, "criterion": self.criterion,
                "results": [r.to_dict() for r in self.results]}


@dataclass
class SkippedEntry:
    id: int | None
    kind: str
    nodes: tuple[str, ...]
    units: int
    reason: str
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "nodes": list(self.nodes), "units": self.units,
                "reason": self.reason, "reasons": list(self.reasons)}


@dataclass
class BlockSensitivity:
    """One residual block removed whole (its branch dropped: ``x + f(x)`` becomes ``x``)."""

    id: int  #: the id of :func:`onnxsparse.passes.blocks.find_blocks` on the analysed model
    add: str  #: the residual Add node
    x: str  #: the shortcut value
    nodes: int  #: branch nodes removed
    params: int  #: weights only the branch uses
    rel_mse: float | None = None
    cosine: float | None = None
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)
    macs_saved: int | None = None  #: per sample: the branch's MACs
    macs_saved_fraction: float | None = None
    seconds: float = 0.0
    kind: str = BLOCK_KIND

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "add": self.add, "x": self.x, "nodes": self.nodes,
                "params": self.params, "rel_mse": self.rel_mse, "cosine": self.cosine,
                "per_output": self.per_output, "macs_saved": self.macs_saved,
                "macs_saved_fraction": self.macs_saved_fraction, "seconds": round(self.seconds, 4)}


@dataclass
class SensitivityReport:
    model: str
    criterion: str
    ratios: tuple[float, ...]
    data: str
    samples: int
    outputs: tuple[str, ...]
    macs_total: int | None
    mac_shapes: dict[str, tuple[int, ...]]
    groups: list[GroupSensitivity] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    sessions: int = 0
    ignored_outputs: tuple[str, ...] = ()
    #: residual blocks removed whole, least sensitive first by rel_mse; declined ones in skipped_blocks
    blocks: list[BlockSensitivity] = field(default_factory=list)
    skipped_blocks: list[Any] = field(default_factory=list)  #: :class:`~onnxsparse.passes.blocks.Block`
    cached: int = 0  #: evaluations read from the cache instead of run

    @property
    def middle_ratio(self) -> float:
        return self.ratios[len(self.ratios) // 2]

    def sorted_groups(self) -> list[GroupSensitivity]:
        """Least sensitive first by ``rel_mse`` at the middle ratio (groups with no error there last)."""
        mid = self.middle_ratio

        def key(g: GroupSensitivity):
            r = g.at(mid)
            err = r.rel_mse if r is not None and r.rel_mse is not None else None
            return (err is None, err if err is not None else 0.0, g.id)

        return sorted(self.groups, key=key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "criterion": self.criterion, "ratios": list(self.ratios), "data": self.data,
            "samples": self.samples, "outputs": list(self.outputs), "ignored_outputs": list(self.ignored_outputs),
            "macs_total": self.macs_total, "mac_shapes": {k: list(v) for k, v in self.mac_shapes.items()},
            "sessions": self.sessions, "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "sorted_by": f"rel_mse at ratio {self.middle_ratio:g}, least sensitive first",
            "groups": [g.to_dict() for g in self.sorted_groups()],
            "skipped": [s.to_dict() for s in self.skipped],
            "blocks": [b.to_dict() for b in self.sorted_blocks()],
            "skipped_blocks": [b.to_dict() for b in self.skipped_blocks],
            "cached": self.cached,
        }

    def sorted_blocks(self) -> list[BlockSensitivity]:
        """Least sensitive first by ``rel_mse``."""
        return sorted(self.blocks, key=lambda b: (b.rel_mse is None, b.rel_mse or 0.0, b.id))

    def table(self) -> str:
        from ..report import format_table, human_count

        mid = self.middle_ratio
        headers = ["group", "kind", "nodes", "units", *[f"err@{r:g}" for r in self.ratios], f"MACs@{mid:g}"]
        rows = []
        for g in self.sorted_groups():
            errs = []
            for ratio in self.ratios:
                r = g.at(ratio)
                errs.append(None if r is None or r.rel_mse is None else float(r.rel_mse))
            r = g.at(mid)
            macs = "-"
            if r is not None and r.macs_saved_fraction is not None and r.units_removed:
                macs = f"-{100 * r.macs_saved_fraction:.1f}%"
            rows.append([g.id, g.kind, _short_nodes(g.nodes), g.units, *errs, macs])
        lines = [format_table(headers, rows, title=(
            f"sensitivity of {self.model} ({self.criterion}; {self.samples} samples of {self.data}; "
            f"error = relative MSE of the outputs; least sensitive first at {mid:g})"))]
        zero = sorted({f"{r.ratio:g}" for g in self.groups for r in g.results if r.units_removed == 0})
        if zero:
            lines.append(f"'-': the ratio removes 0 units of that group (ratios {', '.join(zero)})")
        if self.skipped:
            lines.append("")
            lines.append(format_table(["group", "kind", "nodes", "units", "skipped because"],
                                      [[s.id if s.id is not None else "-", s.kind, _short_nodes(s.nodes), s.units,
                                        _clip(s.reason, 90)] for s in self.skipped]))
        if self.blocks or self.skipped_blocks:
            lines.append("")
            lines.append(format_table(
                ["block", "kind", "residual Add", "nodes", "params", "err", "cosine", "MACs"],
                [[b.id, b.kind, _short_nodes([b.add]), b.nodes, b.params, b.rel_mse,
                  None if b.cosine is None else round(b.cosine, 6),
                  "-" if b.macs_saved_fraction is None else f"-{100 * b.macs_saved_fraction:.1f}%"]
                 for b in self.sorted_blocks()],
                title="residual blocks removed whole (x + f(x) -> x), least sensitive first"))
        if self.skipped_blocks:
            lines.append("")
            lines.append(format_table(["block", "residual Add", "not removable because"],
                                      [[b.id, _short_nodes([b.add]), _clip(b.reason or "", 100)]
                                       for b in self.skipped_blocks]))
        total = self.timings.get("total_s")
        if total is not None:
            lines.append("")
            lines.append(f"{self.sessions} onnxruntime sessions"
                         + (f" ({self.cached} from the cache)" if self.cached else "") + f", {total:.2f} s"
                         + (f"; model MACs per sample {human_count(self.macs_total)}" if self.macs_total else ""))
        return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _short_nodes(nodes: Sequence[str]) -> str:
    if not nodes:
        return "-"
    first = _clip(nodes[0], 36)
    return first + (f" +{len(nodes) - 1}" if len(nodes) > 1 else "")


def parse_ratios(text: str | Iterable[float]) -> tuple[float, ...]:
    """``"0.1,0.25,0.5"`` (or numbers) -> sorted unique ratios, each in (0, 1); :class:`UsageError` otherwise."""
    items: list[str | float] = [t.strip() for t in text.split(",")] if isinstance(text, str) else [*text]
    values: list[float] = []
    for item in items:
        if item == "":
            raise UsageError(f"bad --ratios {text!r}: empty entry (expected e.g. 0.1,0.25,0.5)")
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise UsageError(f"bad --ratios {text!r}: {item!r} is not a number (expected e.g. 0.1,0.25,0.5)") from None
        if not 0.0 < value < 1.0 or not math.isfinite(value):
            raise UsageError(f"bad --ratios {text!r}: every ratio must be in (0, 1), got {item}")
        values.append(value)
    if not values:
        raise UsageError("--ratios is empty (expected e.g. 0.1,0.25,0.5)")
    return tuple(sorted(set(values)))


def prepare(model) -> tuple[ir.Model, Any]:
    """The model as ``prune`` analyses it (own weights, normalised, attention rewritten) and its groups."""
    from ..graph import build_groups
    from ..io import load_model, own_weights
    from .prune import prepare_for_analysis

    model = prepare_for_analysis(own_weights(load_model(model)))
    return model, build_groups(model)


#: dtypes handed to onnxruntime as in-memory initializers (others stay in the serialised model)
_IN_MEMORY_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.float16, np.float64, np.int8, np.uint8,
                                                    np.int16, np.int32, np.int64))
_IN_MEMORY_MIN_BYTES = 1024


def _session(model: ir.Model):
    """A 1-thread CPU session of ``model`` whose large weights reach onnxruntime as in-memory
    initializers (``add_external_initializers``): the protobuf holds only the graph, so a 91 MB
    model takes 0.16 s instead of 0.4 s (serialising and parsing every weight per session)."""
    import onnx
    import onnxruntime as ort

    from .._ort import external_data_config, make_session, session_options
    from ..io import max_runtime_ir_version, to_proto

    proto = to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    names: list[str] = []
    values: list[Any] = []
    arrays: list[np.ndarray] = []
    for init in proto.graph.initializer:
        value = model.graph.initializers.get(init.name)
        tensor = value.const_value if value is not None else None
        if tensor is None or tensor.nbytes < _IN_MEMORY_MIN_BYTES:
            continue
        try:
            array = np.ascontiguousarray(tensor.numpy())
        except Exception:  # noqa: BLE001 - a tensor numpy cannot hold stays in the protobuf
            logger.debug("weight %s stays in the protobuf", init.name, exc_info=True)
            continue
        if array.dtype not in _IN_MEMORY_DTYPES or tuple(array.shape) != tuple(init.dims):
            continue
        for field_name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            init.ClearField(field_name)
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        for key, text in (("location", "onnxsparse-in-memory"), ("offset", "0"), ("length", str(array.nbytes))):
            entry = init.external_data.add()
            entry.key, entry.value = key, text
        names.append(init.name)
        arrays.append(array)
        values.append(ort.OrtValue.ortvalue_from_numpy(array))
    options = session_options(threads=1, config=external_data_config(model))
    if names:
        options.add_external_initializers(names, values)
    sess = make_session(proto.SerializeToString(), options)
    sess._onnxsparse_buffers = (arrays, values)  # onnxruntime reads these buffers for the session's lifetime
    return sess


def _run_all(sess, source, batch_size: int, limit: int, names: Sequence[str]) -> list[np.ndarray]:
    wanted = {i.name for i in sess.get_inputs()}
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for batch in source.batches(batch_size, limit):
        outs = sess.run(list(names), {k: v for k, v in batch.items() if k in wanted})
        for i, o in enumerate(outs):
            parts[i].append(np.asarray(o))
    return [np.concatenate(p) if len(p) > 1 else p[0] for p in parts]


def output_errors(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                  names: Sequence[str]) -> tuple[float, float, dict[str, dict[str, float]]]:
    """(mean rel_mse, mean cosine, per output) of ``outputs`` against ``reference`` (axis 0 = samples)."""
    per: dict[str, dict[str, float]] = {}
    for name, y0, y in zip(names, reference, outputs):
        y0 = np.asarray(y0, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        denom = float(np.sum(y0 * y0))
        diff = float(np.sum((y - y0) ** 2))
        rel = diff / denom if denom > 0 else (0.0 if diff == 0 else float("inf"))
        a = y0.reshape(y0.shape[0], -1) if y0.ndim > 1 else y0.reshape(-1, 1)
        b = y.reshape(y.shape[0], -1) if y.ndim > 1 else y.reshape(-1, 1)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        dots = np.sum(a * b, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where((na > 0) & (nb > 0), dots / (na * nb), np.where((na == 0) & (nb == 0), 1.0, 0.0))
        per[name] = {"rel_mse": rel, "cosine": float(np.mean(cos))}
    rel_mean = float(np.mean([p["rel_mse"] for p in per.values()])) if per else 0.0
    cos_mean = float(np.mean([p["cosine"] for p in per.values()])) if per else 1.0
    return rel_mean, cos_mean, per


def _node_macs(model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, int], int | None]:
    from ..analysis import infer_shapes
    from ..analysis.macs import macs_table
    from .blocks import quiet_folding

    try:
        with quiet_folding():
            rows, total = macs_table(model, infer_shapes(model, shapes))
    except Exception:  # noqa: BLE001 - MACs are informative, never fail the analysis on them
        logger.debug("MAC count failed", exc_info=True)
        return {}, None
    return {r.name: int(r.macs) for r in rows if r.graph == "main" and r.macs}, total


def macs_removed(counted: Iterable[tuple[ir.Node, int]], masks: Mapping[tuple[str, int], np.ndarray]) -> float:
    """MACs removed from ``(node, MACs)`` pairs when the slots in ``masks`` lose their ``False`` positions:
    each node loses the largest fraction any of its inputs/outputs loses on one axis (module docstring)."""
    saved = 0.0
    for node, macs in counted:
        frac = 0.0
        for value in (*node.inputs, *node.outputs):
            if value is None or value.shape is None:
                continue
            for axis in range(len(value.shape)):
                mask = masks.get((value.name or "", axis))
                if mask is not None and mask.size:
                    frac = max(frac, 1.0 - float(mask.mean()))
        saved += macs * frac
    return saved


def _macs_saved(model: ir.Model, masks: Mapping[tuple[str, int], np.ndarray], per_node: Mapping[str, int]) -> int:
    return round(macs_removed(((n, per_node[n.name or ""]) for n in model.graph if per_node.get(n.name or "")), masks))


def sensitivity(
    model,
    calib,
    *,
    ratios: Iterable[float] | str = DEFAULT_RATIOS,
    criterion: str = "l2",
    samples: int = DEFAULT_SAMPLES,
    kinds: Iterable[str] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    blocks: bool = True,
    workers: int | None = 1,
    executor: str | ExecutorSpec | None = "local",
    cache: str | os.PathLike | None = None,
    repair: str = "none",
    damp: float | None = None,
) -> SensitivityReport:
    """Per-group, per-ratio output error of removing that ratio of the group's lowest-scoring units alone.

    ``model``: a path, bytes, ``ModelProto`` or ``onnx_ir.Model`` (not modified: a copy is analysed).
    ``calib``: what :func:`onnxsparse.calibration.load_data` accepts (``.npz``, folder, ``"random"``,
    dict of arrays); the first ``samples`` are used.  ``kinds``: only groups of these kinds
    (``channel``, ``head``, ``kv_group``, ``neuron``); the others are listed as skipped.
    ``shapes`` fixes input shapes for ``"random"`` data.  See the module docstring for the metrics.
    ``blocks``: also remove every residual block whole (:mod:`.blocks`; with ``kinds``, only if it has
    ``"block"``).  ``workers``/``executor``: where the evaluations run (:func:`onnxsparse.executor.run_tasks`;
    ``workers=None`` = up to ``min(cores, 4)`` processes when they pay off); ``cache``: a directory keeping every evaluation (resumable).
    ``repair``: the repair ``prune`` would apply (``"bias"``, ``"lstsq"``, one-shot, ridge ``damp``) is applied to
    each group's consumers before measuring, so the table predicts the pruned *and repaired* model.
    """
    from .reconstruct import DEFAULT_DAMP, REPAIRS
    from ..calibration.data import DataSource
    from ..criteria import CALIBRATION_KEY, get_criterion
    from ..graph import PrunePlan
    from .prune import _calibration_source, score_groups
    from .prune_select import select_uniform

    ratios = parse_ratios(ratios) if isinstance(ratios, str) else parse_ratios(list(ratios))
    if repair not in REPAIRS:
        raise UsageError(f"unknown repair {repair!r} (choose from {', '.join(REPAIRS)})")
    damp = DEFAULT_DAMP if damp is None else float(damp)
    if samples is None or samples < 1:
        raise UsageError(f"--calib-samples must be >= 1, got {samples}")
    if calib is None:
        raise UsageError("sensitivity needs calibration data: give --calib DATA "
                         "(an .npz keyed by input name, a folder of them, or 'random')")
    kinds = None if kinds is None else tuple(kinds)
    wanted_kinds = None if kinds is None else set(kinds)
    with_blocks = blocks and (wanted_kinds is None or BLOCK_KIND in wanted_kinds)
    if wanted_kinds is not None:
        wanted_kinds.discard(BLOCK_KIND)
        if not wanted_kinds <= set(KINDS):
            raise UsageError(f"unknown group kind(s) {sorted(wanted_kinds - set(KINDS))} "
                             f"(kinds: {', '.join((*KINDS, BLOCK_KIND))})")
    crit = get_criterion(criterion)
    label = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "model"
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()

    model_arg = model
    if not isinstance(model, (str, os.PathLike, bytes)):
        model_arg = _serialized(model)  # workers rebuild the same analysis from these bytes
    model, dg = prepare(model)
    timings["analysis_s"] = time.perf_counter() - t
    t = time.perf_counter()
    source = _calibration_source(calib, model, shapes, samples, seed)
    from ..calibration.capture import batching

    bs, limit = batching(model, source, batch_size)
    source = DataSource({k: v[:limit] for k, v in source.arrays.items()}, source.origin)

    sess = _session(model)
    all_outputs = [o.name for o in sess.get_outputs()]
    float_outputs = [o.name for o in sess.get_outputs() if o.type in ("tensor(float)", "tensor(double)",
                                                                      "tensor(float16)", "tensor(bfloat16)")]
    if not float_outputs:
        raise UsageError("the model has no floating-point output to compare")
    reference = _run_all(sess, source, bs, limit, float_outputs)
    del sess
    timings["reference_s"] = time.perf_counter() - t

    t = time.perf_counter()
    extras: dict[str, object] = {}
    if crit.requires_data:
        from ..calibration.capture import capture
        from .reconstruct import candidate_requests

        probe_channels, _ = candidate_requests(dg)
        extras[CALIBRATION_KEY] = capture(model, source, channels=probe_channels, batch_size=bs, seed=seed)
    considered = {g.id for g in dg.prunable if wanted_kinds is None or g.kind in wanted_kinds}
    scores, used = score_groups(dg, criterion, seed=seed, extras=extras, only=considered)
    timings["scoring_s"] = time.perf_counter() - t

    # per-sample MACs at the calibration data's shapes (one sample each), unless ``shapes`` fixes them
    mac_shapes = {k: (1, *v.shape[1:]) for k, v in source.arrays.items()}
    mac_shapes.update({k: tuple(v) for k, v in (shapes or {}).items()})
    per_node, macs_total = _node_macs(model, mac_shapes)

    report = SensitivityReport(
        model=label, criterion=crit.name, ratios=ratios, data=source.origin or "data", samples=limit,
        outputs=tuple(float_outputs), macs_total=macs_total, mac_shapes=mac_shapes,
        ignored_outputs=tuple(n for n in all_outputs if n not in float_outputs),
    )

    todo = [g for g in dg.prunable if g.id in scores]
    t = time.perf_counter()
    entries: list[GroupSensitivity] = []
    declined: dict[int, str] = {}
    tasks: list[tuple] = []
    slots: list[tuple[RatioResult | BlockSensitivity, int | None]] = []  # where each task's answer goes
    for group in todo:
        entry = GroupSensitivity(group.id, group.kind, tuple(group.nodes), group.size, group.channels,
                                 used.get(group.id, crit.name))
        entries.append(entry)
        for ratio in ratios:
            removed = select_uniform({group.id: scores[group.id]}, ratio).get(group.id)
            if removed is None or len(removed) == 0:
                entry.results.append(RatioResult(ratio, 0, note="rounds to 0 units"))
                continue
            plan = PrunePlan.create(dg, {group.id: removed})
            if group.id not in plan.removed:  # check_rewrites declined it: dg.skip gave the reason
                declined[group.id] = dg.groups[group.id].reason or "the rewrite declined this group"
                break
            saved = _macs_saved(model, plan.masks(), per_node) if per_node else None
            result = RatioResult(ratio, len(removed), macs_saved=saved,
                                 macs_saved_fraction=(saved / macs_total) if saved is not None and macs_total else None,
                                 removed=tuple(int(i) for i in removed))
            entry.results.append(result)
            tasks.append(("group", group.id, tuple(group.nodes), result.removed))
            slots.append((result, group.id))

    found = []
    if with_blocks:
        from .blocks import find_blocks

        found = find_blocks(model, mac_shapes)
        for block in found:
            if not block.removable:
                report.skipped_blocks.append(block)
                continue
            entry_b = BlockSensitivity(block.id, block.add, block.x, len(block.nodes), block.params,
                                       macs_saved=block.macs,
                                       macs_saved_fraction=(block.macs / macs_total)
                                       if block.macs is not None and macs_total else None)
            report.blocks.append(entry_b)
            tasks.append(("block", block))
            slots.append((entry_b, None))
    timings["selection_s"] = time.perf_counter() - t

    t = time.perf_counter()
    spec = parse_executor(executor)
    setup = Setup(_Evaluator, (_model_source(model_arg, ship_bytes=spec.kind == "ray"), dict(source.arrays),
                               source.origin, bs, limit, tuple(float_outputs), reference, repair, damp))
    keys = None
    store = None
    if cache is not None:
        namespace = _cache_namespace(model_arg, f"{crit.name} repair {repair} damp {damp!r}", source.arrays, limit, bs,
                                     float_outputs)
        store = TaskCache(cache, namespace)
        keys = [_task_key(task) for task in tasks]
    local_state = _Evaluator.from_prepared(model, dg, source, bs, limit, float_outputs, reference, repair, damp)
    answers = run_tasks(setup, _evaluate, tasks, keys=keys, cache=store, executor=spec, workers=workers,
                        progress=progress, desc="sensitivity", local_state=local_state,
                        task_seconds=timings["reference_s"], setup_seconds=timings["analysis_s"])
    report.sessions = len(tasks)
    report.cached = store.hits if store is not None else 0
    for (slot, group_id), answer in zip(slots, answers):
        slot.rel_mse, slot.cosine = answer["rel_mse"], answer["cosine"]
        slot.per_output, slot.seconds = answer["per_output"], answer["seconds"]
    for entry in entries:
        if entry.id in declined:
            g = dg.groups[entry.id]
            report.skipped.append(SkippedEntry(g.id, g.kind, tuple(g.nodes), g.size, declined[entry.id],
                                               tuple(g.reasons[:5])))
        else:
            report.groups.append(entry)
    timings["masked_runs_s"] = time.perf_counter() - t

    for g in dg.groups:
        if g.prunable and g.id in scores:
            continue
        if g.prunable:  # not scored: another kind than asked, or the criterion failed (then dg.skip made it not prunable)
            reason = f"kind {g.kind} not asked for (kinds: {', '.join(sorted(kinds or ()))})"
        else:
            reason = g.reason or "not prunable"
        if any(s.id == g.id for s in report.skipped):
            continue
        report.skipped.append(SkippedEntry(g.id, g.kind, tuple(g.nodes), g.size, reason, tuple(g.reasons[:5])))
    for value, reasons in dg.unattached_heads():
        if wanted_kinds is None or wanted_kinds & HEAD_KINDS:
            report.skipped.append(SkippedEntry(None, "head", (value,), 0,
                                               "attention heads reach no group: " + "; ".join(reasons[:2]),
                                               tuple(reasons[:5])))
    report.skipped.sort(key=lambda s: (s.id is None, s.id if s.id is not None else 0))
    timings["total_s"] = time.perf_counter() - t0
    report.timings = timings
    return report


# ---------------------------------------------------------------------------------------------- evaluations


def _serialized(model) -> bytes:
    import onnx

    from ..io import to_proto

    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    return to_proto(model).SerializeToString()


def _external_files(path: str | os.PathLike) -> list[str]:
    """The external data files the model file names (sorted), none when it names none."""
    from ..io import external_data_files

    return sorted(os.fspath(f) for f in external_data_files(path))


def _model_source(model_arg: str | os.PathLike | bytes, *, ship_bytes: bool) -> str | bytes:
    """What a worker rebuilds the analysis from: the file's path, or its bytes (external data inlined)
    for workers that may run on other machines."""
    if isinstance(model_arg, bytes):
        return model_arg
    if ship_bytes:
        if _external_files(model_arg):
            import onnx

            return onnx.load(os.fspath(model_arg)).SerializeToString()
        with open(model_arg, "rb") as f:
            return f.read()
    return os.fspath(model_arg)


def _sha256(*chunks: bytes | str) -> str:
    import hashlib

    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
        h.update(b"\0")
    return h.hexdigest()


def _cache_namespace(model_arg, criterion: str, arrays: Mapping[str, np.ndarray], limit: int, batch_size: int,
                     outputs: Sequence[str]) -> str:
    """sha256 of (model file and its external data, criterion, data, samples, batch size, outputs): what every
    evaluation depends on besides its own task."""
    import hashlib

    h = hashlib.sha256()
    if isinstance(model_arg, bytes):
        h.update(model_arg)
    else:
        for name in (os.fspath(model_arg), *_external_files(model_arg)):
            with open(name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    data = [_sha256(name, str(a.dtype), repr(a.shape), np.ascontiguousarray(a).tobytes())
            for name, a in sorted(arrays.items())]
    from .._version import __version__

    return _sha256(f"v{_CACHE_VERSION}", __version__, h.hexdigest(), criterion, *data, str(limit), str(batch_size),
                   *outputs)[:40]


def _task_key(task: tuple) -> str:
    if task[0] == "group":
        _, group_id, nodes, removed = task
        return f"group {group_id} {_sha256(*nodes)[:16]} removed {_sha256(','.join(map(str, removed)))[:32]}"
    block = task[1]
    return f"block {block.id} {block.add} {_sha256(*block.nodes)[:16]}"


class _Evaluator:
    """A worker's state: the analysed model, its groups, the data and the reference outputs (built once)."""

    def __init__(self, model_source, arrays: dict[str, np.ndarray], origin, batch_size: int, limit: int,
                 outputs: tuple[str, ...], reference: list[np.ndarray], repair: str = "none",
                 damp: float = 0.0) -> None:
        from ..calibration.data import DataSource

        self.model, self.dg = prepare(model_source)
        self.source = DataSource(arrays, origin)
        self.batch_size, self.limit, self.outputs, self.reference = batch_size, limit, outputs, reference
        self.repair, self.damp = repair, damp

    @classmethod
    def from_prepared(cls, model: ir.Model, dg, source, batch_size: int, limit: int, outputs, reference,
                      repair: str = "none", damp: float = 0.0) -> _Evaluator:
        self = cls.__new__(cls)
        self.model, self.dg, self.source = model, dg, source
        self.batch_size, self.limit, self.outputs, self.reference = batch_size, limit, tuple(outputs), reference
        self.repair, self.damp = repair, damp
        return self

    def repaired(self, plan) -> ir.Model:
        """The masked model, with the consumers of the removed units repaired as ``prune`` repairs them
        (one-shot: the repair of one group alone needs no earlier stage)."""
        from ..graph import masked_copy
        from .reconstruct import reconstruct

        candidate = masked_copy(self.model, plan)
        if self.repair != "none":
            source = self.source.take(self.limit) if len(self.source) > self.limit else self.source
            rec = reconstruct(self.dg, plan, source, mode=self.repair, sequential=False, damp=self.damp,
                              batch_size=self.batch_size, measure=False)
            rec.apply_unpruned(candidate)
        return candidate

    def measure(self, candidate: ir.Model, start: float) -> dict[str, Any]:
        sess = _session(candidate)
        outs = _run_all(sess, self.source, self.batch_size, self.limit, self.outputs)
        del sess
        rel, cos, per = output_errors(self.reference, outs, self.outputs)
        return {"rel_mse": rel, "cosine": cos, "per_output": per, "seconds": time.perf_counter() - start}


def _evaluate(state: _Evaluator, task: tuple) -> dict[str, Any]:
    """One evaluation: ``("group", id, nodes, removed)`` masks those units of one group; ``("block", Block)``
    drops one residual branch.  Deterministic (1 intra-op thread), so every executor gives the same numbers."""
    from ..graph import PrunePlan
    from .blocks import remove_found

    start = time.perf_counter()
    if task[0] == "group":
        _, group_id, nodes, removed = task
        group = state.dg.groups[group_id]
        if tuple(group.nodes) != tuple(nodes):  # pragma: no cover - the analysis is deterministic
            raise RuntimeError(f"worker analysis differs: group {group_id} is {group.nodes[:2]}, not {nodes[:2]}")
        plan = PrunePlan.create(state.dg, {group_id: list(removed)})
        return state.measure(state.repaired(plan), start)
    copy = state.model.clone()
    remove_found(copy, [task[1]])
    return state.measure(copy, start)


def run_sensitivity(model: Any, options: SensitivityOptions, *, data: object | None = None,
                    shapes: Mapping[str, tuple[int, ...]] | None = None,
                    progress: bool = False) -> SensitivityReport:
    """:func:`sensitivity` as ``options`` say (what ``onnxsparse sensitivity`` runs): ``heads`` -> head kinds,
    the default cache directory, ``shape`` parsed; ``data`` is in-memory calibration data instead of
    ``options.calib`` and ``shapes`` replaces ``options.shape``."""
    from ..calibration.data import parse_shapes
    from ..executor import default_cache_dir

    if shapes is None and options.shape:
        shapes = parse_shapes(list(options.shape))
    cache = None if not options.use_cache else (options.cache or default_cache_dir() / "sensitivity")
    report = sensitivity(
        model, data if data is not None else options.calib, ratios=options.ratios, criterion=options.criterion,
        samples=options.calib_samples, kinds=sorted(HEAD_KINDS) if options.heads else None, shapes=shapes or None,
        batch_size=options.calib_batch, seed=options.seed, progress=progress, blocks=options.blocks,
        workers=options.workers, executor=parse_executor(options.executor), cache=cache, repair=options.repair,
        damp=options.damp,
    )
    if options.heads and not report.groups and not any(s.kind in HEAD_KINDS for s in report.skipped):
        raise UsageError(f"--heads: {model if isinstance(model, (str, os.PathLike)) else 'the model'} has no "
                         "attention head group")
    return report
