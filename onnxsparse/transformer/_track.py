"""Head/neuron axis propagation: the engine every matcher uses to prove a block prunable.

A matcher names the *seeds* of a block (the projections whose output columns
belong to heads or neurons) and this module follows that axis forward through
every consumer, node by node, with one small rule per op type.  Each rule
either states where the axis is in the node's outputs (and which edits a
removal will need: slicing a constant, rewriting a Reshape target, changing a
``num_heads`` attribute), or refuses with a reason.  The walk ends at *sinks*:
constant-weight MatMul/Gemm nodes that contract the axis (the output
projection, the FFN's second linear layer), whose rows are removed.

Every tracked value carries a :class:`Track`: which axis, and for each entry
on it which unit it belongs to (``units``) in which index *space* -- ``q``
(query heads), ``kv`` (key/value heads), ``n`` (FFN neurons).  Query and KV
heads meet in ``QK^T`` and ``P V``; those MatMuls record which KV head each
query head reads (``kv_of_q``), which is how grouped-query attention keeps
whole groups together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from ._graph import (
    Skip,
    attr_int,
    attr_ints,
    const_ints,
    is_const,
    new_initializer,
    normalize_axis,
    opset_version,
    rank_of,
    replace_const,
    set_attr_int,
    static_shape,
    users,
)
from ._targets import ShapeTarget, apply_target_edits

__all__ = ["Track", "Removal", "Region", "RULES", "rule", "ScoreTensor"]


@dataclass(frozen=True, eq=False)
class Track:
    """Where the pruned axis is in one value, and which unit owns each entry on it."""

    axis: int
    space: str
    units: np.ndarray
    #: (axis, repeats) of a grouped-query repeat axis next to ``axis`` (Unsqueeze -> Tile/Expand).
    rep: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return int(len(self.units))

    def same(self, other: "Track") -> bool:
        return (
            self.axis == other.axis
            and self.space == other.space
            and self.rep == other.rep
            and np.array_equal(self.units, other.units)
        )


class Removal:
    """Which units of each space go; ``kv`` removals imply their query heads."""

    def __init__(self, removed: dict[str, set[int]]) -> None:
        self.removed = {k: sorted(v) for k, v in removed.items()}

    def keep(self, track: Track) -> np.ndarray:
        gone = self.removed.get(track.space, [])
        return ~np.isin(track.units, gone)

    def count(self, track: Track) -> int:
        return int(self.keep(track).sum())

    def kept_units(self, track: Track) -> int:
        """Number of distinct units left on this axis (e.g. heads of a merged H*D axis)."""
        return len(set(track.units[self.keep(track)].tolist()))


@dataclass(frozen=True)
class ScoreTensor:
    """A weight a unit owns slices of: ``value``'s entries along ``axis`` belong to ``track.units``."""

    value: ir.Value
    axis: int
    track: Track
    role: str = "produce"  # "produce" (Q/K/V, first-layer columns) | "consume" (output rows)


Rule = Callable[[ir.Node, "Region"], None]
RULES: dict[tuple[str, str], Rule] = {}


def rule(*op_types: str, domain: str = "") -> Callable[[Rule], Rule]:
    """Register a propagation rule for ``op_types`` in ``domain``."""

    def deco(fn: Rule) -> Rule:
        for op in op_types:
            RULES[(domain, op)] = fn
        return fn

    return deco


@dataclass
class SignatureChange:
    value: ir.Value
    axis: int
    track: Track
    kind: str  # "input" | "output"


@dataclass
class Region:
    """The analysis of one block; ``apply`` performs a removal on the graph."""

    graph: ir.Graph
    tracks: dict[ir.Value, Track] = field(default_factory=dict)
    nodes: list[ir.Node] = field(default_factory=list)
    actions: list[Callable[[Removal], None]] = field(default_factory=list)
    target_edits: list[tuple[ShapeTarget, Callable[[Removal], dict[int, int]]]] = field(default_factory=list)
    sinks: list[ir.Node] = field(default_factory=list)
    #: (node, weight, row axis, track) of every sink: the rows a removal deletes.
    sink_weights: list[tuple[ir.Node, ir.Value, int, Track]] = field(default_factory=list)
    scores: list[ScoreTensor] = field(default_factory=list)
    signature: list[SignatureChange] = field(default_factory=list)
    kv_of_q: dict[int, int] = field(default_factory=dict)
    touched: set[ir.Node] = field(default_factory=set)
    attention_nodes: list[ir.Node] = field(default_factory=list)

    # -- seeds -------------------------------------------------------------------------
    def seed_projection(self, node: ir.Node, space: str, units: np.ndarray) -> None:
        """``node`` (MatMul/Gemm with a constant weight) produces the pruned columns."""
        weight, col_axis = projection_weight(node)
        w = weight.const_value
        assert w is not None
        if int(w.shape[col_axis]) != len(units):
            raise Skip(f"projection {node.name!r} has {w.shape[col_axis]} outputs, expected {len(units)}")
        out = node.outputs[0]
        rank = rank_of(out)
        if rank is None:
            raise Skip(f"rank of {out.name!r} is unknown (run shape inference)")
        track = Track(rank - 1, space, np.asarray(units))
        self.set(out, track)
        self.touched.add(node)
        self.scores.append(ScoreTensor(weight, col_axis, track))
        self.slice_input(node, 1, col_axis, track)
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            self.side_input(node, 2, 2, 1, track)

    # -- bookkeeping -------------------------------------------------------------------
    def track(self, value: ir.Value | None) -> Track | None:
        return None if value is None else self.tracks.get(value)

    def set(self, value: ir.Value, track: Track) -> None:
        old = self.tracks.get(value)
        if old is not None and not old.same(track):
            raise Skip(f"value {value.name!r} is reached with two different head layouts")
        self.tracks[value] = track

    def slice_input(self, node: ir.Node, index: int, axis: int, track: Track) -> None:
        """At apply time, keep only the kept entries of constant input ``index`` along ``axis``."""
        value = node.inputs[index]
        assert value is not None

        def act(removal: Removal, node: ir.Node = node, index: int = index) -> None:
            current = node.inputs[index]
            assert current is not None and current.const_value is not None
            arr = current.const_value.numpy()
            replace_const(self.graph, current, np.compress(removal.keep(track), arr, axis=axis), [(node, index)])

        self.actions.append(act)

    def side_input(self, node: ir.Node, index: int, out_rank: int, out_axis: int, track: Track) -> None:
        """An input that is not tracked must broadcast over the axis, or be a constant we slice."""
        value = node.inputs[index]
        if value is None:
            return
        shape = static_shape(value)
        if shape is None:
            raise Skip(f"cannot tell whether {value.name!r} (input of {node.op_type} {node.name!r}) "
                       "broadcasts over the pruned axis: unknown shape")
        pos = out_axis - (out_rank - len(shape))
        if pos < 0:
            return
        dim = shape[pos]
        if dim == 1:
            return
        if dim == track.size and is_const(value):
            self.slice_input(node, index, pos, track)
            return
        if dim == track.size and value.is_graph_input():
            self.signature.append(SignatureChange(value, pos, track, "input"))
            return
        what = "unknown size" if dim is None else f"{dim} entries"
        raise Skip(f"input {value.name!r} of {node.op_type} {node.name!r} has {what} on the pruned axis "
                   "and is not a constant")

    def edit_target(self, target: ShapeTarget, fn: Callable[[Removal], dict[int, int]]) -> None:
        self.target_edits.append((target, fn))

    def pair(self, q: Track, kv: Track, where: ir.Node) -> None:
        """Record which KV head each query head reads (QK^T and P V)."""
        if kv.size == 1:
            kv_units = np.repeat(kv.units, q.size)
        elif kv.size == q.size:
            kv_units = kv.units
        else:
            raise Skip(f"{where.op_type} {where.name!r}: {q.size} query heads against {kv.size} key/value heads "
                       "without a repeat the matcher understands")
        for qu, ku in zip(q.units.tolist(), kv_units.tolist()):
            if self.kv_of_q.setdefault(qu, ku) != ku:
                raise Skip(f"{where.op_type} {where.name!r}: query head {qu} reads two different KV heads")

    # -- the walk ----------------------------------------------------------------------
    def propagate(self) -> None:
        processed: set[ir.Node] = set()
        for node in self.graph:
            if not any(v is not None and v in self.tracks for v in node.inputs):
                continue
            fn = RULES.get((node.domain if node.domain != "ai.onnx" else "", node.op_type))
            if fn is None:
                tracked = next(v for v in node.inputs if v is not None and v in self.tracks)
                raise Skip(f"the pruned axis of {tracked.name!r} reaches {node.op_type} node {node.name!r}, "
                           "which no head/neuron rule covers")
            fn(node, self)
            processed.add(node)
            self.nodes.append(node)
            self.touched.add(node)
        for value, track in self.tracks.items():
            for node, _ in users(value):
                if node not in processed:
                    raise Skip(f"{value.name!r} is used by {node.op_type} {node.name!r} outside the main graph")
            if value.is_graph_output():
                self.signature.append(SignatureChange(value, track.axis, track, "output"))
        if not self.sinks:
            raise Skip("the pruned axis never reaches a constant-weight projection that consumes it")

    # -- apply -------------------------------------------------------------------------
    def apply(self, removal: Removal) -> None:
        for act in self.actions:
            act(removal)
        apply_target_edits(self.graph, [(t, fn(removal)) for t, fn in self.target_edits])
        for value, track in self.tracks.items():
            _shrink_shape(value, track.axis, track.size, removal.count(track))
        for change in self.signature:
            if change.kind == "input":
                _shrink_shape(change.value, change.axis, change.track.size, removal.count(change.track))


def _shrink_shape(value: ir.Value, axis: int, old: int, new: int) -> None:
    shape = value.shape
    if shape is None or axis >= len(shape):
        return
    dims = list(shape.dims)
    if dims[axis] == old:
        dims[axis] = new
        value.shape = ir.Shape(dims)


def projection_weight(node: ir.Node) -> tuple[ir.Value, int]:
    """The constant weight of a MatMul/Gemm and the axis that indexes its outputs."""
    if node.op_type == "MatMul" and len(node.inputs) == 2:
        w = node.inputs[1]
        if is_const(w) and len(w.const_value.shape) == 2 and not is_const(node.inputs[0]):  # type: ignore[union-attr]
            return w, 1  # type: ignore[return-value]
    if node.op_type == "Gemm":
        w = node.inputs[1]
        if is_const(w) and (attr_int(node, "transA", 0) or 0) == 0:
            return w, 0 if attr_int(node, "transB", 0) else 1  # type: ignore[return-value]
    raise Skip(f"{node.op_type} node {node.name!r} is not a projection with a constant weight")


def is_projection(node: ir.Node | None) -> bool:
    if node is None or node.domain not in ("", "ai.onnx"):
        return False
    try:
        projection_weight(node)
    except Skip:
        return False
    return True


# ----------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------

UNARY = (
    "Identity", "Cast", "CastLike", "Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "Sqrt", "Exp", "Log",
    "LeakyRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Mish", "Reciprocal",
    "ThresholdedRelu", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "Swish",
)
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Where", "PRelu", "Equal", "Less", "Greater", "LessOrEqual",
          "GreaterOrEqual", "And", "Or", "Xor", "Max", "Min", "Sum", "Mod", "BitShift", "Clip")


def _tracked_inputs(node: ir.Node, region: Region) -> list[tuple[int, Track]]:
    return [(i, t) for i, v in enumerate(node.inputs) if (t := region.track(v)) is not None]


def _only(node: ir.Node, region: Region, index: int = 0) -> Track:
    tracked = _tracked_inputs(node, region)
    if [i for i, _ in tracked] != [index]:
        raise Skip(f"{node.op_type} {node.name!r}: the pruned axis enters through an unexpected input")
    return tracked[0][1]


def _rank(value: ir.Value | None, node: ir.Node) -> int:
    r = rank_of(value)
    if r is None:
        raise Skip(f"rank of {getattr(value, 'name', None)!r} (at {node.op_type} {node.name!r}) is unknown")
    return r


@rule(*UNARY)
@rule("Gelu", "FastGelu", "QuickGelu", "BiasGelu", domain="com.microsoft")
def _elementwise_unary(node: ir.Node, region: Region) -> None:
    if len([v for v in node.inputs if v is not None]) > 1:
        _broadcast(node, region)
        return
    track = _only(node, region)
    for out in node.outputs:
        region.set(out, track)


@rule(*BINARY)
def _broadcast(node: ir.Node, region: Region) -> None:
    out_rank = _rank(node.outputs[0], node) if rank_of(node.outputs[0]) is not None else max(
        _rank(v, node) for v in node.inputs if v is not None)
    tracked = _tracked_inputs(node, region)
    aligned: Track | None = None
    for i, t in tracked:
        shift = out_rank - _rank(node.inputs[i], node)
        cand = replace(t, axis=t.axis + shift, rep=None if t.rep is None else (t.rep[0] + shift, t.rep[1]))
        if aligned is None:
            aligned = cand
        elif not aligned.same(cand):
            raise Skip(f"{node.op_type} {node.name!r} combines two values whose pruned axes do not line up")
    assert aligned is not None
    for i, v in enumerate(node.inputs):
        if v is None or region.track(v) is not None:
            continue
        region.side_input(node, i, out_rank, aligned.axis, aligned)
    region.set(node.outputs[0], aligned)


@rule("Dropout")
def _dropout(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    region.set(node.outputs[0], track)
    if len(node.outputs) > 1 and node.outputs[1].uses():
        raise Skip(f"Dropout {node.name!r}: its mask output is used")


@rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    rank = _rank(node.inputs[0], node)
    opset = opset_version(region.graph)
    axis = normalize_axis(attr_int(node, "axis", -1 if opset >= 13 else 1), rank)  # type: ignore[arg-type]
    if (opset >= 13 and axis == track.axis) or (opset < 13 and track.axis >= axis):
        raise Skip(f"{node.op_type} {node.name!r} normalises over the pruned axis")
    region.set(node.outputs[0], track)


@rule("LayerNormalization", "RMSNormalization")
@rule("SimplifiedLayerNormalization", "SkipLayerNormalization", domain="com.microsoft")
def _layernorm(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    rank = _rank(node.inputs[0], node)
    axis = normalize_axis(attr_int(node, "axis", -1), rank)  # type: ignore[arg-type]
    if axis <= track.axis or node.op_type == "SkipLayerNormalization":
        raise Skip(f"{node.op_type} {node.name!r} normalises over the pruned axis")
    for i in range(1, len(node.inputs)):
        region.side_input(node, i, rank, track.axis, track)
    region.set(node.outputs[0], track)
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        raise Skip(f"{node.op_type} {node.name!r}: mean/variance outputs are used")


@rule("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
      "ReduceLogSumExp", "ReduceSumSquare")
def _reduce(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    rank = _rank(node.inputs[0], node)
    axes = attr_ints(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_ints(node.inputs[1])
        if axes is None:
            raise Skip(f"{node.op_type} {node.name!r}: axes are not constant")
    if not axes:
        raise Skip(f"{node.op_type} {node.name!r} reduces every axis")
    axes = [normalize_axis(a, rank) for a in axes]
    if track.axis in axes or (track.rep and track.rep[0] in axes):
        raise Skip(f"{node.op_type} {node.name!r} reduces over the pruned axis")
    if attr_int(node, "keepdims", 1):
        region.set(node.outputs[0], track)
    else:
        shift = sum(1 for a in axes if a < track.axis)
        region.set(node.outputs[0], replace(track, axis=track.axis - shift, rep=None))


@rule("Transpose")
def _transpose(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    rank = _rank(node.inputs[0], node)
    perm = attr_ints(node, "perm") or list(range(rank))[::-1]
    rep = None if track.rep is None else (perm.index(track.rep[0]), track.rep[1])
    region.set(node.outputs[0], replace(track, axis=perm.index(track.axis), rep=rep))


@rule("Unsqueeze")
def _unsqueeze(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    rank = _rank(node.inputs[0], node)
    axes = attr_ints(node, "axes")
    if axes is None:
        axes = const_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    if axes is None:
        raise Skip(f"Unsqueeze {node.name!r}: axes are not constant")
    out_rank = rank + len(axes)
    axes = sorted(normalize_axis(a, out_rank) for a in axes)
    kept = [i for i in range(out_rank) if i not in axes]
    new_axis = kept[track.axis]
    rep = None
    if track.rep is not None:
        rep = (kept[track.rep[0]], track.rep[1])
    elif len(axes) == 1 and axes[0] in (new_axis - 1, new_axis + 1):
        rep = (axes[0], 1)
    region.set(node.outputs[0], replace(track, axis=new_axis, rep=rep))


@rule("Squeeze")
def _squeeze(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    rank = _rank(node.inputs[0], node)
    axes = attr_ints(node, "axes")
    if axes is None:
        axes = const_ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if axes is None:
        raise Skip(f"Squeeze {node.name!r}: axes are not constant")
    axes = [normalize_axis(a, rank) for a in axes]
    if track.axis in axes:
        raise Skip(f"Squeeze {node.name!r} removes the pruned axis")
    if track.rep is not None and track.rep[0] in axes and track.rep[1] == 1:
        track = replace(track, rep=None)
    shift = sum(1 for a in axes if a < track.axis)
    rep = None if track.rep is None else (track.rep[0] - sum(1 for a in axes if a < track.rep[0]), track.rep[1])
    region.set(node.outputs[0], replace(track, axis=track.axis - shift, rep=rep))


@rule("Tile")
def _tile(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    reps = const_ints(node.inputs[1])
    if reps is None:
        raise Skip(f"Tile {node.name!r}: repeats are not constant")
    if reps[track.axis] != 1:
        raise Skip(f"Tile {node.name!r} repeats the pruned axis itself")
    rep = track.rep
    if rep is not None and reps[rep[0]] != 1:
        if rep[1] != 1:
            raise Skip(f"Tile {node.name!r} repeats an already repeated axis")
        rep = (rep[0], reps[rep[0]])
    region.set(node.outputs[0], replace(track, rep=rep))


@rule("Expand")
def _expand(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    rank = _rank(node.inputs[0], node)
    target = ShapeTarget(node, 1)
    out_rank = max(rank, len(target))
    shift = out_rank - rank
    pos = track.axis + shift
    tpos = pos - (out_rank - len(target))
    rep = None if track.rep is None else (track.rep[0] + shift, track.rep[1])
    if tpos >= 0:
        entry = target.const(tpos)
        if entry is None:
            raise Skip(f"Expand {node.name!r}: the head entry of its shape is computed at run time")
        if entry == track.size and track.size != 1:
            if not target.editable(tpos):
                raise Skip(f"Expand {node.name!r}: cannot rewrite its shape")
            region.edit_target(target, lambda r, tp=tpos: {tp: r.count(track)})
        elif entry != 1:
            raise Skip(f"Expand {node.name!r} changes the head axis size")
    if rep is not None and rep[1] == 1:
        rpos = rep[0] - (out_rank - len(target))
        if rpos >= 0 and target.const(rpos) not in (None, 1):
            rep = (rep[0], int(target.const(rpos)))  # type: ignore[arg-type]
        elif rpos >= 0 and target.const(rpos) is None:
            raise Skip(f"Expand {node.name!r}: the repeat count is computed at run time")
    region.set(node.outputs[0], replace(track, axis=pos, rep=rep))


@rule("Concat")
def _concat(node: ir.Node, region: Region) -> None:
    rank = _rank(node.outputs[0], node)
    axis = normalize_axis(attr_int(node, "axis", 0), rank)  # type: ignore[arg-type]
    tracked = _tracked_inputs(node, region)
    first = tracked[0][1]
    for _, t in tracked[1:]:
        if not t.same(first):
            raise Skip(f"Concat {node.name!r} joins values with different head layouts")
    if axis == first.axis:
        raise Skip(f"Concat {node.name!r} concatenates along the pruned axis")
    for i, v in enumerate(node.inputs):
        if v is not None and region.track(v) is None:
            region.side_input(node, i, rank, first.axis, first)
    region.set(node.outputs[0], first)


@rule("Split")
def _split(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    rank = _rank(node.inputs[0], node)
    axis = normalize_axis(attr_int(node, "axis", 0), rank)  # type: ignore[arg-type]
    if axis == track.axis:
        raise Skip(f"Split {node.name!r} splits the pruned axis")
    for out in node.outputs:
        region.set(out, track)


@rule("Slice")
def _slice(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    rank = _rank(node.inputs[0], node)
    starts = const_ints(node.inputs[1])
    ends = const_ints(node.inputs[2])
    has_axes = len(node.inputs) > 3 and node.inputs[3] is not None
    axes = const_ints(node.inputs[3]) if has_axes else None
    if (starts is None or ends is None) and axes is not None and all(
            normalize_axis(a, rank) != track.axis for a in axes):
        # run-time bounds on other axes only (rotary ``x[..., : x.shape[-1] // 2]``, a mask cut to the
        # key length): the pruned axis is not sliced
        region.set(node.outputs[0], track)
        return
    if starts is None or ends is None:
        raise Skip(f"Slice {node.name!r}: starts/ends are not constant")
    if not has_axes:
        axes = list(range(len(starts)))
    steps = const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1] * len(starts)
    if axes is None or steps is None:
        raise Skip(f"Slice {node.name!r}: axes/steps are not constant")
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = normalize_axis(a, rank)
        if a == track.axis and not (s == 0 and st == 1 and e >= track.size):
            raise Skip(f"Slice {node.name!r} slices the pruned axis")
    region.set(node.outputs[0], track)


@rule("Shape")
def _shape(node: ir.Node, region: Region) -> None:
    """Reading the shape is fine as long as nobody reads the pruned axis's size."""
    track = _only(node, region)
    rank = _rank(node.inputs[0], node)
    start = attr_int(node, "start", 0) or 0
    end = attr_int(node, "end", rank)
    start = max(0, start + rank if start < 0 else start)
    end = min(rank, (end + rank if end < 0 else end) if end is not None else rank)
    exposed = list(range(start, end))
    danger = {i for i, a in enumerate(exposed) if a == track.axis}
    if not danger:
        return
    for user, _ in users(node.outputs[0]):
        read = _indices_read(user, len(exposed))
        if read is None or read & danger:
            raise Skip(f"the size of the pruned axis is read through Shape {node.name!r} by "
                       f"{user.op_type} {user.name!r}")
    if node.outputs[0].is_graph_output():
        raise Skip(f"Shape {node.name!r} is a graph output")


def _indices_read(node: ir.Node, length: int, depth: int = 0) -> set[int] | None:
    """Which entries of a 1-D shape tensor ``node`` reads; ``None`` when unknown (assume all).

    An integer ``Cast`` / ``Identity`` (tf2onnx casts ``Shape`` to int32) reads what its users read.
    """
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in ("Cast", "Identity") and depth < 4:
        if node.op_type == "Cast" and attr_int(node, "to", 0) not in (int(ir.DataType.INT64), int(ir.DataType.INT32)):
            return None
        out = node.outputs[0]
        if out.is_graph_output():
            return None
        read: set[int] = set()
        for user, _ in users(out):
            r = _indices_read(user, length, depth + 1)
            if r is None:
                return None
            read |= r
        return read
    if node.op_type == "Gather" and (attr_int(node, "axis", 0) or 0) == 0:
        idx = const_ints(node.inputs[1])
        return None if idx is None else {i % length for i in idx}
    if node.op_type == "Slice":
        starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
        axes = const_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
        steps = const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
        if starts is None or ends is None or axes != [0] or steps != [1]:
            return None
        s = max(0, starts[0] + length if starts[0] < 0 else starts[0])
        e = min(length, ends[0] + length if ends[0] < 0 else ends[0])
        return set(range(s, e))
    return None


@rule("Reshape")
def _reshape(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    in_shape = static_shape(node.inputs[0])
    out_shape = static_shape(node.outputs[0])
    if in_shape is None:
        raise Skip(f"Reshape {node.name!r}: input rank unknown")
    rank = len(in_shape)
    target = ShapeTarget(node, 1)
    out_rank = len(target)
    allowzero = attr_int(node, "allowzero", 0)
    last = rank - 1

    def inferred(pos: int) -> int | None:
        if out_shape is None or len(out_shape) != out_rank:
            return None
        return out_shape[pos]

    if track.rep is not None:
        _reshape_repeat_merge(node, region, track, target, rank, out_rank, inferred)
        return
    if track.axis == last and out_rank > rank and _keeps_last(node, track, in_shape, target, inferred):
        # Leading dims split ([B*S, X] -> [B, S, X], Keras Dense via tf2onnx); the last axis stays whole.
        el = target.const(out_rank - 1)
        same = Track(out_rank - 1, track.space, track.units)
        if el != -1:
            if not target.editable(out_rank - 1):
                raise Skip(f"Reshape {node.name!r}: cannot rewrite its shape")
            region.edit_target(target, lambda r: {out_rank - 1: r.count(same)})
        region.set(node.outputs[0], same)
        return
    if track.axis == last and out_rank > rank:
        # Split H*D -> (H, D) over the last two axes.
        eh, ed = target.const(out_rank - 2), target.const(out_rank - 1)
        width = track.size
        if allowzero == 0 and 0 in (eh, ed):
            raise Skip(f"Reshape {node.name!r} copies an input dim into the head axis")
        if eh not in (None, -1) and ed not in (None, -1):
            h, d = eh, ed
        elif eh == -1 and ed not in (None, -1):
            h, d = width // ed, ed
        elif ed == -1 and eh not in (None, -1):
            h, d = eh, width // eh
        else:
            h, d = inferred(out_rank - 2), inferred(out_rank - 1)
        if not h or not d or h * d != width:
            raise Skip(f"Reshape {node.name!r} splits {width} columns into {target.describe()}, "
                       "not into (heads, head size)")
        grid = track.units.reshape(h, d)
        if not (grid == grid[:, :1]).all():
            raise Skip(f"Reshape {node.name!r} splits columns across heads (head size {d} does not match)")
        head = Track(out_rank - 2, track.space, grid[:, 0].copy())
        if eh != -1:
            _edit_entry(region, target, out_rank - 2, node, rank, lambda r: r.count(head),
                        lambda r: [0] * (out_rank - 2) + [r.count(head), d])
        region.set(node.outputs[0], head)
        return
    if track.axis == rank - 2 and out_rank < rank and in_shape[-1] is not None:
        # Merge (H, D) -> H*D.
        d = int(in_shape[-1])
        h = track.size
        el = target.const(out_rank - 1)
        if el is None:
            if inferred(out_rank - 1) != h * d:
                raise Skip(f"Reshape {node.name!r}: cannot prove it merges (heads, head size)")
        elif el != -1 and el != h * d:
            raise Skip(f"Reshape {node.name!r} reshapes (.., {h}, {d}) to {target.describe()}")
        merged = Track(out_rank - 1, track.space, np.repeat(track.units, d))
        if el != -1:
            _edit_entry(region, target, out_rank - 1, node, rank, lambda r: r.count(merged),
                        lambda r: [0] * (out_rank - 1) + [r.count(merged)], merge=True)
        region.set(node.outputs[0], merged)
        return
    if track.axis == last and out_rank >= 1:
        # Leading dims change ([B*S, X] <-> [B, S, X]); the pruned last axis stays whole.
        el = target.const(out_rank - 1)
        if el in (None, -1) and inferred(out_rank - 1) != track.size:
            raise Skip(f"Reshape {node.name!r}: cannot prove it keeps the pruned last axis whole "
                       f"(target {target.describe()})")
        if el is not None and el not in (-1, track.size):
            raise Skip(f"Reshape {node.name!r} reshapes the pruned axis to {target.describe()}")
        same = Track(out_rank - 1, track.space, track.units)
        if el != -1:
            if not target.editable(out_rank - 1):
                raise Skip(f"Reshape {node.name!r}: cannot rewrite its shape")
            region.edit_target(target, lambda r: {out_rank - 1: r.count(same)})
        region.set(node.outputs[0], same)
        return
    if out_rank == rank and _same_other_dims(node.inputs[0], node.outputs[0], track.axis):
        # A Reshape that keeps every other dim (TorchScript's SDPA lowering reshapes ``P V`` to
        # ``[Shape(x)[0], -1, Shape(q)[2], Shape(v)[3]]``): the pruned axis stays where it is.
        eh = target.const(track.axis)
        if eh is None or eh == 0:
            raise Skip(f"Reshape {node.name!r}: the entry of the pruned axis is computed at run time "
                       f"({target.describe()})")
        if eh != -1:
            if eh != track.size or not target.editable(track.axis):
                raise Skip(f"Reshape {node.name!r} reshapes the pruned axis to {target.describe()}")
            same = track
            region.edit_target(target, lambda r, pos=track.axis: {pos: r.count(same)})
        region.set(node.outputs[0], track)
        return
    raise Skip(f"Reshape {node.name!r} moves the pruned axis (axis {track.axis} of rank {rank} -> "
               f"{target.describe()})")


def _known_dims(value: ir.Value | None) -> list[int | str | None] | None:
    """Dims as ints or symbolic names (shape inference's, e.g. onnxruntime's ``batch``); ``None`` if unknown."""
    if value is None or value.shape is None:
        return None
    out: list[int | str | None] = []
    for d in value.shape.dims:
        if isinstance(d, int):
            out.append(d if d >= 0 else None)
        else:
            name = getattr(d, "value", None)
            out.append(name if name and not str(name).startswith("unk__") else None)
    return out


def _same_other_dims(a: ir.Value | None, b: ir.Value | None, axis: int) -> bool:
    """``a`` and ``b`` have the same rank and provably equal dims (same number or same symbol)
    everywhere except ``axis``."""
    da, db = _known_dims(a), _known_dims(b)
    if da is None or db is None or len(da) != len(db):
        return False
    return all(x is not None and x == y for i, (x, y) in enumerate(zip(da, db)) if i != axis)


def _keeps_last(node: ir.Node, track: Track, in_shape: list[int | None], target: ShapeTarget,
                inferred: Callable[[int], int | None]) -> bool:
    """Whether a rank-raising Reshape only splits leading dims: its last output dim equals the
    input's last dim (the pruned axis), so row-major order keeps every entry of it in place.

    A single head (all entries one unit) is left to the head-split branch: ``(1, D)`` is a split too.
    """
    if in_shape[-1] != track.size or len(set(track.units.tolist())) == 1:
        return False
    out_rank = len(target)
    el = target.const(out_rank - 1)
    if el == 0:
        return False
    last = el if el not in (None, -1) else inferred(out_rank - 1)
    return last == track.size


def _edit_entry(region: Region, target: ShapeTarget, pos: int, node: ir.Node, rank: int,
                value: Callable[[Removal], int], whole: Callable[[Removal], list[int]], merge: bool = False) -> None:
    """Rewrite one entry of a Reshape target; fall back to a ``[0, .., 0, new]`` target when
    the entry is computed at run time and the reshape only splits/merges the last axes."""
    if target.editable(pos):
        region.edit_target(target, lambda r: {pos: value(r)})
        return
    if (merge and len(target) != rank - 1) or (not merge and len(target) != rank + 1):
        raise Skip(f"Reshape {node.name!r}: the head entry of its shape is computed at run time")

    def act(r: Removal) -> None:
        arr = np.array(whole(r), dtype=np.int64)
        new = new_initializer(region.graph, f"{node.name or 'reshape'}.shape_heads", arr)
        node.replace_input_with(1, new)
        set_attr_int(node, "allowzero", 0)

    region.actions.append(act)


def _reshape_repeat_merge(node, region, track, target, rank, out_rank, inferred) -> None:
    rep_axis, reps = track.rep
    if abs(rep_axis - track.axis) != 1 or out_rank != rank - 1:
        raise Skip(f"Reshape {node.name!r} does not merge the grouped-query repeat axis into the head axis")
    m = min(rep_axis, track.axis)
    entry = target.const(m)
    total = track.size * reps
    if entry is None:
        if inferred(m) != total:
            raise Skip(f"Reshape {node.name!r}: cannot prove it merges the grouped-query repeat")
    elif entry not in (-1, total):
        raise Skip(f"Reshape {node.name!r} reshapes the repeated heads to {target.describe()}")
    units = np.repeat(track.units, reps) if rep_axis == track.axis + 1 else np.tile(track.units, reps)
    merged = Track(m, track.space, units)
    if entry != -1:
        if not target.editable(m):
            raise Skip(f"Reshape {node.name!r}: cannot rewrite its shape")
        region.edit_target(target, lambda r: {m: r.count(merged)})
    region.set(node.outputs[0], merged)


@rule("MatMul")
def _matmul(node: ir.Node, region: Region) -> None:
    a, b = node.inputs[0], node.inputs[1]
    ta, tb = region.track(a), region.track(b)
    ra, rb = _rank(a, node), _rank(b, node)
    if ta is not None and tb is None and ta.axis == ra - 1:
        if not is_const(b) or rb != 2:
            raise Skip(f"MatMul {node.name!r} contracts the pruned axis with a non-constant operand")
        _sink(node, region, ta, b, 0)
        return
    if ra < 3 and rb < 3:
        raise Skip(f"MatMul {node.name!r} uses the pruned axis as a matrix axis")
    out_rank = max(ra, rb)
    aligned = []
    for t, r, name in ((ta, ra, "A"), (tb, rb, "B")):
        if t is None:
            aligned.append(None)
            continue
        if t.axis >= r - 2 or t.rep is not None:
            raise Skip(f"MatMul {node.name!r}: the pruned axis is a matrix axis of input {name}")
        aligned.append(replace(t, axis=t.axis + out_rank - r))
    qa, qb = aligned
    if qa is not None and qb is not None:
        if qa.axis != qb.axis:
            raise Skip(f"MatMul {node.name!r}: head axes of its inputs do not line up")
        if qa.space == qb.space:
            if not qa.same(qb):
                raise Skip(f"MatMul {node.name!r}: inputs have different head orders")
            out = qa
        elif qa.space == "q" and qb.space == "kv":
            region.pair(qa, qb, node)
            out = qa
        else:
            raise Skip(f"MatMul {node.name!r} multiplies {qa.space!r} heads by {qb.space!r} heads")
        region.attention_nodes.append(node)
    else:
        out = qa if qa is not None else qb
        assert out is not None
        other = 1 if qa is not None else 0
        region.side_input(node, other, out_rank, out.axis, out)
    region.set(node.outputs[0], out)


@rule("Gemm")
def _gemm(node: ir.Node, region: Region) -> None:
    track = _only(node, region)
    axis_a = 0 if attr_int(node, "transA", 0) else 1
    if track.axis != axis_a or not is_const(node.inputs[1]):
        raise Skip(f"Gemm {node.name!r} uses the pruned axis other than as its reduction axis")
    _sink(node, region, track, node.inputs[1], 1 if attr_int(node, "transB", 0) else 0)


def _sink(node: ir.Node, region: Region, track: Track, weight: ir.Value, row_axis: int) -> None:
    if int(weight.const_value.shape[row_axis]) != track.size:  # type: ignore[union-attr]
        raise Skip(f"{node.op_type} {node.name!r}: weight rows do not match the pruned axis")
    region.sinks.append(node)
    region.sink_weights.append((node, weight, row_axis, track))
    region.scores.append(ScoreTensor(weight, row_axis, track, "consume"))
    region.slice_input(node, 1, row_axis, track)


def head_units(heads: int, head_size: int) -> np.ndarray:
    """Units of a merged ``heads * head_size`` axis (head-major)."""
    return np.repeat(np.arange(heads), head_size)
