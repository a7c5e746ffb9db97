"""Repair the layers that lost input channels, from calibration data (no retraining).

Structured pruning removes inputs ``R`` of every *consumer* contraction of a
pruned group (the next conv, the Gemm after a Flatten, an output projection).
Seen as ``Y = W X + b`` (``W`` ``[out, in]``, Conv through im2col, see
:class:`~onnxsparse.calibration.capture.LinearView`), a consumer can absorb
part of what the removed inputs carried:

``bias`` (FLAP bias compensation)
    ``b += W[:, R] @ mean(X_R)``: exact when the removed inputs were constant
    on the data (a dead ReLU, a channel with zero filters) - up to Conv zero
    padding, which makes border columns differ from the mean.
``lstsq`` (least-squares re-fit, He et al. 2017 / ThiNet)
    keep inputs ``K``, re-fit ``[W', b']`` to minimise ``||W X + b - W' X_K - b'||^2``
    on the calibration rows: with ``Z = [X; 1]``, ``G = E[Z Z^T]``,
    ``[W', b'] = [W, b] G[:, K1] (G[K1, K1] + lambda I_K)^-1`` (``K1`` = ``K`` and
    the ones row), ``lambda = damp * mean(diag(G[K, K]))``; float64 Cholesky.
    Exact when the removed inputs are affine combinations of kept ones and
    ``damp -> 0``.

``sequential=True`` repairs consumers stage by stage in topological order and
fits each one to the *current* (already pruned and repaired) model's inputs
``X~`` against the original's outputs: ``[W', b'] = [W, b] E[Z Z~^T][:, K1]
(E[Z~ Z~^T][K1, K1] + lambda I)^-1`` (bias: ``b' = b + W mean(X) - W_K mean(X~_K)``),
so upstream errors are compensated instead of compounding.  One-shot (the
default) fits every consumer to the original activations with one capture.

The model is repaired in *full index space* before :func:`~onnxsparse.graph.apply_plan`
slices it: kept columns of the consumer weight are rewritten in place (removed
columns are zeroed, then sliced away); bias changes are kept per node and
written after the slicing (:meth:`Reconstruction.write_biases`), creating a bias
input (Conv, Gemm) or an ``Add`` (MatMul) when the consumer had none.

Each repaired layer's relative output error ``||Y - Y'||^2 / ||Y||^2`` on the
calibration data is measured before (pruned, no repair) and after, in the
whole network (upstream errors included), by running masked copies
(:func:`~onnxsparse.graph.masked_copy`, exactly equivalent to the pruned
model) with onnxruntime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from ..calibration.capture import (
    DEFAULT_MAX_ROWS,
    Capture,
    LayerRequest,
    LinearView,
    capture,
    chunk_requests,
    linear_view,
    output_errors,
)
from ..calibration.data import DataSource
from ..calibration.stats import LayerStats
from ..errors import Decline, UsageError
from ..graph import DependencyGraph, PrunePlan, Role, apply_plan, masked_copy
from ..report import format_table

__all__ = [
    "REPAIRS",
    "DEFAULT_DAMP",
    "LayerRepair",
    "RepairReport",
    "Reconstruction",
    "Consumer",
    "find_consumers",
    "candidate_requests",
    "reconstruct",
    "solve_bias",
    "solve_lstsq",
    "add_bias",
]

logger = logging.getLogger(__name__)

#: Repair methods, in CLI order.
REPAIRS: tuple[str, ...] = ("none", "bias", "lstsq")
#: ``lambda = DEFAULT_DAMP * mean(diag(G[K, K]))`` (see docs/prune.md for the measurements behind it).
DEFAULT_DAMP = 0.01
#: Consumers with more input columns than this are repaired with ``bias`` instead of ``lstsq``.
MAX_LSTSQ_FEATURES = 8192
#: Gram matrices held at once during one capture pass (bytes); more layers take more passes.
GRAM_BUDGET = 512 << 20


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------


@dataclass
class LayerRepair:
    """What happened to one consumer."""

    node: str
    op_type: str
    inputs: int  #: input channels before pruning
    kept: int  #: input channels kept
    method: str  #: repair actually applied: ``bias``, ``lstsq`` or ``none``
    stage: int = 0
    reason: str | None = None  #: why the requested repair was not (fully) applied
    error_before: float | None = None  #: relative output MSE, pruned without repair
    error_after: float | None = None  #: relative output MSE, pruned and repaired


@dataclass
class RepairReport:
    mode: str
    sequential: bool
    damp: float
    samples: int = 0
    layers: list[LayerRepair] = field(default_factory=list)
    #: relative MSE of every graph output, pruned without / with repair
    output_error_before: dict[str, float] = field(default_factory=dict)
    output_error_after: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "sequential": self.sequential,
            "damp": self.damp,
            "samples": self.samples,
            "layers": [asdict(layer) for layer in self.layers],
            "output_error_before": dict(self.output_error_before),
            "output_error_after": dict(self.output_error_after),
            "timings_s": dict(self.timings),
        }

    def table(self) -> str:
        rows = [
            [r.node, r.op_type, f"{r.kept}/{r.inputs}", r.method, r.stage, _err(r.error_before), _err(r.error_after),
             r.reason or ""]
            for r in self.layers
        ]
        for name, before in self.output_error_before.items():
            rows.append([f"output {name}", "", "", "", "", _err(before), _err(self.output_error_after.get(name)), ""])
        how = "sequential" if self.sequential else "one-shot"
        title = (f"repair: {self.mode} ({how}, damp {self.damp:g}, {self.samples} calibration samples); "
                 "error = relative output MSE on calibration data")
        text = format_table(["layer", "op", "inputs kept", "repair", "stage", "error before", "error after", "note"],
                            rows, title=title)
        t = self.timings
        if t:
            text += (f"\ntime: {t.get('total_s', 0.0):.2f} s (capture {t.get('capture_s', 0.0):.2f} s, "
                     f"solve {t.get('solve_s', 0.0):.2f} s, error measurement {t.get('measure_s', 0.0):.2f} s)")
        return text


def _err(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


# ------------------------------------------------------------------------------------------
# consumers and their weights
# ------------------------------------------------------------------------------------------


@dataclass
class Consumer:
    """A contraction whose input loses channels, and how to see it as ``Y = W X + b``."""

    node: ir.Node
    input_name: str
    axis: int
    in_keep: np.ndarray  #: keep-mask over the input channels
    weight: ir.Value | None = None
    in_axis: int = 0
    out_axis: int = 0
    view: LinearView | None = None
    reason: str | None = None  #: why it cannot be repaired

    @property
    def name(self) -> str:
        return self.node.name or ""

    @property
    def weight_name(self) -> str:
        """Name of the constant weight (only consumers with one are repaired)."""
        if self.weight is None:
            raise ValueError(f"{self.name}: no constant weight to repair")
        return self.weight.name or ""

    @property
    def cols_keep(self) -> np.ndarray:
        assert self.view is not None
        return np.repeat(self.in_keep, self.view.taps)

    def matrix(self, array: np.ndarray | None = None) -> np.ndarray:
        """The weight as ``[out, in]`` float64 (columns in the view's order)."""
        assert self.weight is not None and self.weight.const_value is not None
        arr = np.asarray(self.weight.const_value.numpy() if array is None else array, dtype=np.float64)
        moved = np.moveaxis(arr, (self.out_axis, self.in_axis), (0, 1))
        return moved.reshape(moved.shape[0], -1)

    def unmatrix(self, w2d: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`matrix`, in the weight's dtype."""
        assert self.weight is not None and self.weight.const_value is not None
        arr = self.weight.const_value.numpy()
        rest = [d for a, d in enumerate(arr.shape) if a not in (self.out_axis, self.in_axis)]
        moved_shape = (arr.shape[self.out_axis], arr.shape[self.in_axis], *rest)
        out = np.moveaxis(w2d.reshape(moved_shape), (0, 1), (self.out_axis, self.in_axis))
        return np.ascontiguousarray(out.astype(arr.dtype))


def _node_map(model: ir.Model) -> dict[str, ir.Node]:
    return {n.name or "": n for n in model.graph}


def find_consumers(dg: DependencyGraph, masks: Mapping[tuple[str, int], np.ndarray] | None = None) -> list[Consumer]:
    """Weighted contractions reading a pruned slot (``masks``), or every prunable group's (``masks=None``)."""
    nodes = _node_map(dg.model)
    prunable_slots: set[tuple[str, int]] = set()
    if masks is None:
        for g in dg.prunable:
            prunable_slots.update(m.slot.key for m in g.members)
    out: list[Consumer] = []
    seen: set[str] = set()
    for c in dg.contractions:
        node = nodes.get(c.node)
        if node is None or c.node in seen:
            continue
        x = node.inputs[c.input]
        if x is None:
            continue
        key = (x.name or "", c.axis)
        if masks is not None:
            keep = masks.get(key)
            if keep is None:
                continue
        else:
            if key not in prunable_slots:
                continue
            x_value = dg.value(key[0])
            size = x_value.shape[c.axis] if x_value is not None and x_value.shape is not None else None
            keep = np.ones(int(size) if isinstance(size, int) else 0, dtype=bool)
        seen.add(c.node)
        cons = Consumer(node, key[0], c.axis, np.asarray(keep, dtype=bool))
        out.append(cons)
        if c.weight is None:
            cons.reason = "the other operand is not a constant weight"
            continue
        w = node.inputs[c.weight[0]]
        if w is None:
            cons.reason = "the weight input is missing"
            continue
        cons.weight, cons.in_axis = w, c.weight[1]
        if c.input != 0:
            cons.reason = "the weight is the left operand"
            continue
        produce = [a for a in range(len(w.shape or ())) if a != c.weight[1] and Role.PRODUCE in dg.roles_of((w.name or "", a))]
        if len(produce) != 1:
            cons.reason = "no single output axis on the weight"
            continue
        cons.out_axis = produce[0]
        users = {u.node for u in w.uses()}
        if len(users) > 1:
            cons.reason = f"weight '{w.name}' is shared by {len(users)} nodes"
            continue
        try:
            view = linear_view(node, c.input, c.axis)
            _check_bias(node)
        except Decline as exc:
            cons.reason = exc.reason
            continue
        if cons.matrix().shape[1] != view.in_features:
            cons.reason = "weight columns do not match the input view"
            continue
        cons.view = view
    return out


def _check_bias(node: ir.Node) -> None:
    """Declines when :func:`add_bias` could not add a per-output-channel bias to ``node``."""
    if node.op_type not in ("Conv", "Gemm"):
        return  # MatMul: the Add after it, or a new one
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is None:
        return
    if b.const_value is None:
        raise Decline(f"{node.op_type} '{node.name}': the bias is computed at run time")
    shape = tuple(b.const_value.shape.numpy())
    if node.op_type == "Gemm" and len(shape) == 2 and shape[0] != 1:
        raise Decline(f"Gemm '{node.name}': bias of shape {list(shape)} is not per output channel")


def candidate_requests(dg: DependencyGraph) -> tuple[list[tuple[str, int]], list[LayerRequest]]:
    """What the criteria and one-shot ``bias`` repair need for every prunable group, in one pass.

    Channel statistics of every weighted contraction's input, and column sums
    of every repairable consumer.
    """
    channels: list[tuple[str, int]] = []
    layers: list[LayerRequest] = []
    for cons in find_consumers(dg):
        if cons.weight is None:
            continue
        channels.append((cons.input_name, cons.axis))
        if cons.view is not None:
            layers.append(LayerRequest(cons.view))
    nodes = _node_map(dg.model)
    for c in dg.contractions:  # weight on the left, e.g. Gemm(A=const): channel statistics only
        node = nodes.get(c.node)
        if node is not None and c.weight is not None and (x := node.inputs[c.input]) is not None:
            channels.append((x.name or "", c.axis))
    prunable = {m.slot.key for g in dg.prunable for m in g.members}
    return [k for k in dict.fromkeys(channels) if k in prunable], layers


# ------------------------------------------------------------------------------------------
# solvers
# ------------------------------------------------------------------------------------------


def solve_bias(w2d: np.ndarray, cols_keep: np.ndarray, stats: LayerStats) -> np.ndarray:
    """Bias change ``W mean(X_ref) - W_K mean(X_K)`` (one-shot: ``W[:, R] mean(X_R)``)."""
    ref = stats.ref_mean
    cur = stats.mean
    return w2d @ ref - w2d[:, cols_keep] @ cur[cols_keep]


def solve_lstsq(
    w2d: np.ndarray, bias: np.ndarray, cols_keep: np.ndarray, stats: LayerStats, damp: float = DEFAULT_DAMP
) -> tuple[np.ndarray, np.ndarray]:
    """Re-fitted ``(W'[:, K], b')`` minimising the output error on the calibration rows (float64 Cholesky)."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    g, c = stats.second_moments()
    n_in = w2d.shape[1]
    k1 = np.concatenate([np.flatnonzero(cols_keep), [n_in]])
    wa = np.concatenate([w2d, bias[:, None]], axis=1)
    rhs = wa @ c[:, k1]  # [out, |K1|]
    h = g[np.ix_(k1, k1)]
    diag = np.diag(h)[:-1]
    scale = float(np.mean(diag)) if diag.size else 0.0
    lam = damp * scale if scale > 0 else max(damp, 1e-12)
    eye = np.ones(k1.size)
    eye[-1] = 0.0  # the bias is not damped
    for _ in range(8):
        try:
            factor = cho_factor(h + np.diag(lam * eye), lower=True, check_finite=True)
            sol = cho_solve(factor, rhs.T, check_finite=True).T
            break
        except (LinAlgError, ValueError):
            lam = max(lam * 10.0, 1e-12)
    else:  # pragma: no cover - a damped Gram with a unit bias entry is positive definite
        raise LinAlgError("Gram matrix is not positive definite even after damping")
    return sol[:, :-1], sol[:, -1]


# ------------------------------------------------------------------------------------------
# biases
# ------------------------------------------------------------------------------------------


def _new_initializer(model: ir.Model, base: str, array: np.ndarray) -> ir.Value:
    graph = model.graph
    name, i = f"{base}__repair", 0
    while name in graph.initializers:
        i += 1
        name = f"{base}__repair{i}"
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.Tensor(array, name=name))
    graph.register_initializer(value)
    return value


def _set_const(model: ir.Model, node: ir.Node, index: int, array: np.ndarray) -> None:
    old = node.inputs[index] if index < len(node.inputs) else None
    array = np.ascontiguousarray(array)
    if old is not None and old.is_initializer() and not old.is_graph_output() and len({u.node for u in old.uses()}) == 1:
        old.const_value = ir.Tensor(array, name=old.name)
        old.shape = ir.Shape(array.shape)
        return
    value = _new_initializer(model, f"{node.name}_bias", array)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    if old is not None and old.is_initializer() and not old.uses() and not old.is_graph_output():
        model.graph.initializers.pop(old.name or "", None)


def _matmul_bias_add(node: ir.Node, out_channels: int) -> tuple[ir.Node, int, np.ndarray] | None:
    y = node.outputs[0]
    uses = list(y.uses())
    if len(uses) != 1 or y.is_graph_output():
        return None
    add, idx = uses[0].node, uses[0].idx
    if add.op_type != "Add" or (add.domain or "") not in ("", "ai.onnx"):
        return None
    other = add.inputs[1 - idx]
    if other is None or other.const_value is None:
        return None
    shape = tuple(other.const_value.shape.numpy())
    if not shape or shape[-1] != out_channels or any(d != 1 for d in shape[:-1]):
        return None
    if y.shape is not None and len(shape) > len(y.shape):
        return None
    return add, 1 - idx, other.const_value.numpy()


def add_bias(model: ir.Model, node_name: str, delta: np.ndarray) -> str:
    """Add ``delta`` (one value per output channel) to ``node_name``'s bias; create one if needed.

    Returns where it went: ``"input"`` (Conv/Gemm bias input), ``"add"`` (the
    constant of the ``Add`` after a MatMul) or ``"new add"``.
    """
    node = _node_map(model).get(node_name)
    if node is None:
        raise KeyError(f"node {node_name!r} not found")
    delta = np.asarray(delta, dtype=np.float64)
    y = node.outputs[0]
    dtype = y.dtype.numpy() if y.dtype is not None else np.dtype(np.float32)
    n = delta.size
    if node.op_type in ("Conv", "Gemm"):
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if b is None:
            _set_const(model, node, 2, delta.astype(dtype))
            return "input"
        if b.const_value is None:
            raise ValueError(f"{node.op_type} '{node_name}': bias is not a constant")
        old = np.asarray(b.const_value.numpy(), dtype=np.float64)
        if node.op_type == "Conv" or old.shape in ((n,), (1, n)):
            new = old + delta.reshape(old.shape)
        elif old.size == 1:  # a broadcast scalar: becomes a vector
            new = old.reshape(()) + delta
        else:
            raise ValueError(f"Gemm '{node_name}': bias of shape {old.shape} is not per output channel")
        _set_const(model, node, 2, new.astype(b.const_value.numpy().dtype))
        return "input"
    if node.op_type != "MatMul":
        raise ValueError(f"cannot add a bias to {node.op_type} '{node_name}'")
    found = _matmul_bias_add(node, n)
    if found is not None:
        add, index, constant = found
        old = np.asarray(constant, dtype=np.float64)
        _set_const(model, add, index, (old + delta.reshape(old.shape)).astype(constant.dtype))
        return "add"
    bias = _new_initializer(model, f"{node_name}_bias", delta.astype(dtype))
    uses = list(y.uses())
    add = ir.Node("", "Add", [y, bias], name=f"{node_name}__repair_bias", num_outputs=1)
    out = add.outputs[0]
    out.shape, out.type = y.shape, y.type
    model.graph.insert_after(node, add)
    for use in uses:
        use.node.replace_input_with(use.idx, out)
    # The Add's output takes over the name, so whoever looks the value up by name sees the bias.
    name = y.name
    y.name = f"{name}__pre_bias"
    out.name = name
    if y.is_graph_output():
        outputs = model.graph.outputs
        for i, v in enumerate(outputs):
            if v is y:
                outputs[i] = out
    return "new add"


# ------------------------------------------------------------------------------------------
# the pass
# ------------------------------------------------------------------------------------------


@dataclass
class Reconstruction:
    """Repairs in full index space: write weights before ``apply_plan``, biases after."""

    report: RepairReport
    weights: dict[str, np.ndarray] = field(default_factory=dict)  #: weight name -> new full array
    biases: dict[str, np.ndarray] = field(default_factory=dict)  #: node name -> bias change per output channel
    out_masks: dict[str, tuple[str, int]] = field(default_factory=dict)  #: node -> weight slot of its outputs

    def write_weights(self, model: ir.Model) -> None:
        """Replace the consumer weights of the unpruned ``model`` (same names as analysed)."""
        values = model.graph.initializers
        for name, array in self.weights.items():
            value = values[name]
            value.const_value = ir.Tensor(array, name=name)

    def write_biases(self, model: ir.Model, masks: Mapping[tuple[str, int], np.ndarray] | None = None) -> None:
        """Add the bias changes; with ``masks`` (after ``apply_plan``) sliced to the kept output channels."""
        for node, delta in self.biases.items():
            slot = self.out_masks.get(node)
            keep = masks.get(slot) if masks is not None and slot is not None else None
            add_bias(model, node, delta if keep is None else delta[keep])

    def prune_with(self, plan: PrunePlan, model: ir.Model) -> None:
        """Apply ``plan`` to ``model`` with these repairs: weights written in full index space before the
        plan slices them, bias changes after, sliced to the kept output channels."""
        masks = plan.masks()
        self.write_weights(model)
        apply_plan(plan)
        self.write_biases(model, masks)

    def apply_unpruned(self, model: ir.Model) -> ir.Model:
        self.write_weights(model)
        self.write_biases(model)
        return model


def _stages(model: ir.Model, changed: set[str]) -> dict[str, int]:
    """Stage of every node: changed contractions on the longest path upstream of its inputs."""
    depth: dict[str, int] = {}
    stage: dict[str, int] = {}
    for node in model.graph:
        d = max((depth.get(v.name or "", 0) for v in node.inputs if v is not None), default=0)
        stage[node.name or ""] = d
        out = d + (1 if (node.name or "") in changed else 0)
        for v in node.outputs:
            depth[v.name or ""] = out
    return stage


def _solve(cons: Consumer, stats: LayerStats, mode: str, damp: float, entry: LayerRepair,
           rec: Reconstruction) -> None:
    w2d = cons.matrix()
    keep = cons.cols_keep
    method = mode
    if mode == "lstsq" and (stats.gram is None or stats.sampled == 0):
        method = "bias"
        entry.reason = entry.reason or "no Gram matrix: bias compensation instead"
    if method == "lstsq":
        # The ones row is not damped, so a constant target maps to itself: fitting with b = 0
        # gives exactly the change of the bias, whatever the consumer's bias is.
        w_k, delta = solve_lstsq(w2d, np.zeros(w2d.shape[0]), keep, stats, damp)
        new = np.zeros_like(w2d)
        new[:, keep] = w_k
    else:
        new = np.where(keep[None, :], w2d, 0.0)
        delta = solve_bias(w2d, keep, stats)
    entry.method = method
    rec.weights[cons.weight_name] = cons.unmatrix(new)
    if np.any(delta != 0):
        rec.biases[cons.name] = delta
        rec.out_masks[cons.name] = (cons.weight_name, cons.out_axis)


def reconstruct(
    dg: DependencyGraph,
    plan: PrunePlan,
    source: DataSource,
    *,
    mode: str = "lstsq",
    sequential: bool = False,
    damp: float = DEFAULT_DAMP,
    stats: Capture | None = None,
    batch_size: int = 32,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
    measure: bool = True,
    progress: bool = False,
) -> Reconstruction:
    """Compute the repairs of every consumer of ``plan`` on the calibration data (the model is not changed).

    ``stats`` may hold column sums captured earlier on the unpruned model (one-shot
    ``bias`` then needs no new pass).  Apply the result with
    :meth:`Reconstruction.write_weights` before ``apply_plan`` and
    :meth:`Reconstruction.write_biases` after it (:func:`onnxsparse.passes.prune.prune` does).
    """
    if mode not in REPAIRS:
        raise UsageError(f"unknown repair {mode!r} (choose from {', '.join(REPAIRS)})")
    if not 0 <= damp < float("inf"):  # also refuses NaN
        raise UsageError(f"damping must be a finite number >= 0, got {damp}")
    report = RepairReport(mode, sequential, damp, samples=len(source))
    rec = Reconstruction(report)
    if mode == "none" or plan.empty:
        return rec
    start = time.perf_counter()
    model = dg.model
    masks = plan.masks()
    consumers = find_consumers(dg, masks)
    entries: dict[str, LayerRepair] = {}
    todo: list[Consumer] = []
    for cons in consumers:
        entry = LayerRepair(cons.name, cons.node.op_type, int(cons.in_keep.size), int(cons.in_keep.sum()), "none",
                            reason=cons.reason)
        entries[cons.name] = entry
        report.layers.append(entry)
        if cons.view is not None:
            todo.append(cons)
    stage_of = _stages(model, {c.name for c in consumers})
    for cons in todo:
        entries[cons.name].stage = stage_of.get(cons.name, 0)

    def request(cons: Consumer) -> LayerRequest:
        view = cons.view
        if view is None:
            raise ValueError(f"{cons.name}: no linear view to capture")  # todo holds only consumers with one
        gram = mode == "lstsq"
        if gram and view.in_features > MAX_LSTSQ_FEATURES:
            entries[cons.name].reason = f"{view.in_features} input columns > {MAX_LSTSQ_FEATURES}: bias compensation instead"
            gram = False
        return LayerRequest(view, gram)

    def run_capture(m: ir.Model, layers: list[LayerRequest], reference: ir.Model | None = None) -> Capture:
        return capture(m, source, layers=layers, reference=reference, batch_size=batch_size, max_rows=max_rows,
                       seed=seed, progress=progress)
    capture_s = 0.0
    if not sequential:
        requests = [request(c) for c in todo]
        have = stats.layers if stats is not None else {}
        missing = [r for r in requests if r.gram or r.view.node not in have]
        captured: dict[str, LayerStats] = {r.view.node: have[r.view.node] for r in requests if r.view.node in have}
        for chunk in chunk_requests(missing, GRAM_BUDGET):
            cap = run_capture(model, chunk)
            captured.update(cap.layers)
            capture_s += cap.seconds
        for cons in todo:
            _solve(cons, captured[cons.name], mode, damp, entries[cons.name], rec)
        repaired = rec.apply_unpruned(masked_copy(model, plan)) if measure else None
    else:
        current = masked_copy(model, plan)
        for stage in sorted({entries[c.name].stage for c in todo}):
            layer_cons = [c for c in todo if entries[c.name].stage == stage]
            stage_rec = Reconstruction(report)
            for chunk in chunk_requests([request(c) for c in layer_cons], GRAM_BUDGET, cross=True):
                cap = run_capture(current, chunk, reference=model)
                capture_s += cap.seconds
                for r in chunk:
                    cons = next(c for c in layer_cons if c.name == r.view.node)
                    _solve(cons, cap.layers[cons.name], mode, damp, entries[cons.name], stage_rec)
            stage_rec.apply_unpruned(current)
            rec.weights.update(stage_rec.weights)
            rec.biases.update(stage_rec.biases)
            rec.out_masks.update(stage_rec.out_masks)
        repaired = current
    report.timings["capture_s"] = capture_s
    report.timings["solve_s"] = time.perf_counter() - start - capture_s
    if measure and repaired is not None:  # repaired is None only when not measuring
        t = time.perf_counter()
        masked = masked_copy(model, plan)
        values = [c.node.outputs[0].name or "" for c in consumers]
        outputs = [v.name or "" for v in model.graph.outputs]
        errors = output_errors(model, {"before": masked, "after": repaired}, source, values + outputs,
                               batch_size=batch_size)
        for cons in consumers:
            name = cons.node.outputs[0].name or ""
            entries[cons.name].error_before = errors["before"][name].relative
            entries[cons.name].error_after = errors["after"][name].relative
        for name in outputs:
            report.output_error_before[name] = errors["before"][name].relative
            report.output_error_after[name] = errors["after"][name].relative
        report.timings["measure_s"] = time.perf_counter() - t
    report.timings["total_s"] = time.perf_counter() - start
    return rec
