"""Which nodes to leave alone (and why), and which nodes ended up quantized.

Before quantizing we walk the prepared graph once: user exclusions (names or
glob patterns), op types the mode does not handle, mode-specific limits (e.g.
int4 needs a constant 2-D MatMul weight) and too-small weights each get a
reason.  Afterwards we compare the graphs by structure, not by the names the
quantizer gives: a node is quantized if its float weight became a quantized
weight (found and tied to its source by :mod:`.weights`), or, for nodes the
quantizer kept in place, if it reads dequantized or integer data.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import Decline, UsageError
from .weights import QuantizedWeight

__all__ = [
    "mask_fill_readers", "MASK_FILL",
    "Plan", "WeightInput", "weight_inputs", "plan_nodes", "match_excludes", "diff_nodes", "origin_names", "rename_rows",
]

_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)

#: Helper ops quantizers insert; never "the quantized version" of a user's node.
_HELPERS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


@dataclass(frozen=True)
class WeightInput:
    """A float initializer (>= 2-D) a node reads."""

    index: int
    name: str
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass
class Plan:
    """What we ask onnxruntime to skip, and the reasons for the report."""

    exclude: list[str] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def weight_inputs(model: onnx.ModelProto) -> dict[str, list[WeightInput]]:
    """Node name -> the float weight initializers (rank >= 2) it reads."""
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, list[WeightInput]] = {}
    for node in model.graph.node:
        found = [
            WeightInput(i, name, tuple(inits[name].dims))
            for i, name in enumerate(node.input)
            if name in inits and inits[name].data_type in _FLOATS and len(inits[name].dims) >= 2
        ]
        out[node.name] = found
    return out


def origin_names(original: list[str], prepared: list[str]) -> dict[str, str]:
    """Prepared node name -> the user's node it came from.

    Pre-processing keeps most names; onnxruntime's fusions name the fused node
    ``<original>/<Something>Fusion`` (e.g. ``fc1/MatMulAddFusion``).
    """
    known = set(original)
    out: dict[str, str] = {}
    for name in prepared:
        if name in known:
            out[name] = name
            continue
        base = name
        while "/" in base:
            base = base.rpartition("/")[0]
            if base in known:
                out[name] = base
                break
    return out


def match_excludes(
    patterns: Iterable[str], prepared: list[str], origin: Mapping[str, str] | None = None,
    original: list[str] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """(prepared node name -> the ``--exclude`` entry that matched it, warnings).

    Entries are node names or glob patterns, matched against the user's names
    and the prepared graph's; an entry matching nothing is an error.
    """
    origin = dict(origin or {})
    original = list(original or [])
    by_origin: dict[str, list[str]] = {}
    for name, src in origin.items():
        by_origin.setdefault(src, []).append(name)
    every = list(dict.fromkeys(original + prepared))
    matched: dict[str, str] = {}
    warnings: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            hits = fnmatch.filter(every, pattern)
        else:
            hits = [pattern] if pattern in every else []
        if not hits:
            close = difflib.get_close_matches(pattern, every, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise UsageError(f"--exclude {pattern!r} matches no node in the model{hint}")
        for hit in hits:
            targets = [hit] if hit in prepared else by_origin.get(hit, [])
            if not targets:
                warnings.append(f"--exclude {hit!r}: pre-processing merged this node into another; nothing to exclude")
            for target in targets:
                matched.setdefault(target, pattern)
    return matched, warnings


#: A float constant this large (or not finite) is a mask fill (``finfo.min``, ``-1e4``, ``-inf``), not data.
MASK_FILL = 1e4

#: Ops that carry a mask fill on to the scores it is added to (shape and element-wise ops).
_CARRIES = frozenset({
    "Where", "Add", "Sub", "Mul", "Cast", "Expand", "Unsqueeze", "Squeeze", "Reshape", "Slice", "Concat",
    "Transpose", "Min", "Max", "Identity", "Tile", "Gather",
})


def mask_fill_readers(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes that read a tensor carrying an attention-mask fill, up to and including the Softmax.

    Static int8 gives such a tensor one scale for ``-3.4e38`` and the scores
    beside it, so every score rounds to the same code and attention becomes
    uniform: all-MiniLM-L6-v2 token cosine 0.46 static, 0.80 with these nodes
    left float.  Found by value, never by name.
    """
    from onnx import numpy_helper

    def fill(array: np.ndarray) -> float | None:
        if array.dtype.kind != "f" or not array.size:
            return None
        finite = np.isfinite(array)
        if not finite.all():
            return float(array[~finite][0])
        peak = float(np.abs(array).max())
        return float(array.flat[int(np.abs(array).argmax())]) if peak >= MASK_FILL else None

    tainted: dict[str, float] = {}
    for init in model.graph.initializer:
        if init.data_type in _FLOATS and init.dims and np.prod(init.dims) > 1 << 16:
            continue  # weights, not fills
        value = fill(numpy_helper.to_array(init)) if init.data_type in _FLOATS else None
        if value is not None:
            tainted[init.name] = value
    reasons: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            value = fill(numpy_helper.to_array(attr.t)) if attr is not None and attr.t.data_type in _FLOATS else None
            if value is not None:
                tainted[node.output[0]] = value
            continue
        source = next((tainted[i] for i in node.input if i in tainted), None)
        if source is None:
            continue
        reasons[node.name] = (f"reads an attention-mask fill ({source:.3g}): int8 cannot hold it beside the scores, "
                              "so this path stays float")
        if node.op_type in _CARRIES:
            tainted.update({out: source for out in node.output})
    return reasons


def plan_nodes(
    model: onnx.ModelProto,
    *,
    mode_name: str,
    supported: frozenset[str],
    check_node: Callable[[onnx.NodeProto, dict[str, onnx.TensorProto]], None],
    excludes: Iterable[str],
    min_weight_elements: int,
    origin: Mapping[str, str] | None = None,
    original: list[str] | None = None,
    graph_reasons: Mapping[str, str] | None = None,
) -> Plan:
    """Decide, node by node, what onnxruntime should not touch and why."""
    inits = {i.name: i for i in model.graph.initializer}
    weights = weight_inputs(model)
    user, warnings = match_excludes(excludes, [n.name for n in model.graph.node], origin, original)
    plan = Plan(warnings=warnings)
    for node in model.graph.node:
        w = weights.get(node.name, [])
        row = {"node": node.name, "op_type": node.op_type, "weight": w[0].name if w else None}
        if node.name in user:
            plan.exclude.append(node.name)
            plan.excluded.append({**row, "reason": f"excluded by the user (--exclude {user[node.name]})"})
            continue
        if graph_reasons and node.name in graph_reasons:
            plan.exclude.append(node.name)
            plan.excluded.append({**row, "reason": graph_reasons[node.name]})
            continue
        if node.op_type not in supported:
            if w:
                plan.excluded.append({**row, "reason": f"{node.op_type} is not quantized in {mode_name} mode"})
            continue
        try:
            check_node(node, inits)
        except Decline as exc:
            plan.exclude.append(node.name)
            plan.excluded.append({**row, "reason": exc.reason})
            continue
        if min_weight_elements and w and max(x.elements for x in w) < min_weight_elements:
            plan.exclude.append(node.name)
            biggest = max(x.elements for x in w)
            plan.excluded.append(
                {**row, "reason": f"weight has {biggest} elements < --min-weight-elements {min_weight_elements}"}
            )
            continue
        if w:
            plan.candidates.append(node.name)
    return plan


def rename_rows(rows: list[dict], origin: Mapping[str, str]) -> list[dict]:
    """Report rows under the user's node names; the prepared graph's name goes to ``graph_node``."""
    out = []
    for row in rows:
        src = origin.get(row["node"], row["node"])
        out.append({**row, "node": src, **({"graph_node": row["node"]} if src != row["node"] else {})})
    return out


def _is_quant_op(op_type: str) -> bool:
    return op_type not in _HELPERS and (
        op_type.startswith(("QLinear", "QGemm", "QAttention", "QEmbed", "DynamicQuantize"))
        or op_type.endswith(("Integer", "NBits", "BlockQuantized"))
        or op_type == "MatMulIntegerToFloat"
    )


def diff_nodes(
    before: onnx.ModelProto, after: onnx.ModelProto, supported: frozenset[str] | None = None,
    weights: Iterable[QuantizedWeight] = (),
) -> tuple[list[dict], list[dict]]:
    """(quantized, removed) rows for the nodes of ``before`` (the quantizer's input).

    A node whose float weight became a quantized weight (``weights``, tied to
    their float sources by :func:`~onnxsparse.quantize.weights.match_sources`)
    is quantized as the operator that now reads it (``DequantizeLinear``: the
    node itself runs on dequantized values, QDQ).  A node the quantizer kept
    (QDQ and QOperator keep a node's identity when they leave it in place) is
    quantized if it reads a dequantized activation *and* its output is
    quantized again (a ``Shape`` reading a dequantized tensor is not), or runs
    on integer data (Reshape, MaxPool in QOperator).  Only op types in
    ``supported`` count as quantized in place.
    """
    after_nodes = {n.name: n for n in after.graph.node if n.name}
    producer = {out: n for n in after.graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in after.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    inits = {i.name for i in after.graph.initializer}
    int_inits = {i.name for i in after.graph.initializer if i.data_type not in _FLOATS}

    readers: dict[str, list[str]] = {}
    for node in before.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    replaced_by: dict[str, set[str]] = {}
    for weight in weights:
        for reader in readers.get(weight.source or "", []):
            replaced_by.setdefault(reader, set()).add(weight.consumer_op)

    def dq_inputs(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [producer[i] for i in node.input if i in producer and producer[i].op_type == "DequantizeLinear"]

    quantized: list[dict] = []
    removed: list[dict] = []
    for node in before.graph.node:
        same = after_nodes.get(node.name)
        ops = replaced_by.get(node.name, set())
        if ops and (supported is None or node.op_type in supported or ops - {"DequantizeLinear"}):
            if ops == {"DequantizeLinear"}:
                how = "QDQ" if same is not None and same.op_type == node.op_type else "DequantizeLinear -> weights"
            else:
                how = "+".join(sorted(ops - {"DequantizeLinear"}))
            quantized.append({"node": node.name, "op_type": node.op_type, "as": how})
        elif same is not None and same.op_type == node.op_type and (supported is None or node.op_type in supported):
            dqs = dq_inputs(same)
            weight_dq = any(dq.input[0] in inits for dq in dqs)
            requantized = any(c.op_type == "QuantizeLinear" for out in same.output for c in consumers.get(out, []))
            int_in = [
                i for i in same.input
                if (i in int_inits and i not in node.input)
                or (i in producer and (producer[i].op_type == "QuantizeLinear" or _is_quant_op(producer[i].op_type)))
            ]
            if weight_dq or (dqs and requantized):
                quantized.append({"node": node.name, "op_type": node.op_type, "as": "QDQ"})
            elif int_in:
                quantized.append({"node": node.name, "op_type": node.op_type, "as": "integer data"})
        elif same is None and not ops:
            removed.append({"node": node.name, "op_type": node.op_type})
    return quantized, removed


def count_by_op(rows: Iterable[dict]) -> dict[str, int]:
    return dict(sorted(Counter(r["op_type"] for r in rows).items()))
