"""Heads, KV groups and FFN neurons: the transformer view of :func:`onnxsparse.passes.prune.prune`.

There is one pruning engine.  The dependency graph (:mod:`onnxsparse.graph`)
finds heads, KV groups and FFN neurons as groups like any channel group
(:mod:`onnxsparse.graph.kinds`), ``prune(heads=, ffn=)`` removes them, and this
module reads the result per attention block / FFN: heads kept, KV groups kept,
which output-projection rows went (``sinks``, the masked oracle's input), and
every block left alone with its reason.

The ratio is the fraction of units removed *per block* (at least one head /
KV group / neuron is kept).  Removing a KV group removes the query heads that
read it.  ``--heads`` / ``--ffn`` are options of the prune command
(:class:`onnxsparse.options.prune.PruneOptions`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from ..errors import DataError, UsageError
from ..graph import DependencyGraph, Group
from ..graph.kinds import HEAD_KINDS
from ..graph.slots import Role
from .normalize import normalize

if TYPE_CHECKING:
    from .prune import PruneResult

__all__ = [
    "HeadPruneResult",
    "PruneHeadsPass",
    "prune_heads",
    "heads_report",
    "report_table",
    "masked_heads_model",
]

#: fused attention ops (the block's ``form``; decomposed attention otherwise)
_FUSED = ("Attention", "com.microsoft.Attention", "com.microsoft.MultiHeadAttention",
          "com.microsoft.GroupQueryAttention")


@dataclass
class HeadPruneResult:
    """The pruned model (same object, changed in place) and what happened to every block."""

    model: ir.Model
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def modified(self) -> bool:
        return any(b["removed"] for b in self.report.get("attention", []) + self.report.get("ffn", []))


def _prefix(names: Sequence[str]) -> str:
    if not names:
        return ""
    prefix = os.path.commonprefix(list(names)) if len(names) > 1 else names[0]
    cut = max(prefix.rfind("/"), prefix.rfind("."))
    return (prefix[:cut] if cut > 0 else prefix).strip("/._")


def block_name(nodes: Sequence[str], weights: Sequence[str], fallback: str) -> str:
    """A readable block name: the common prefix of its nodes' names (``/layers.0/attn``), or, when
    exporters named nodes generically (dynamo's ``node_MatMul_3``), of its weights' state-dict names."""
    by_nodes = _prefix([n for n in nodes if n])
    if any(c.isdigit() for c in by_nodes):
        return by_nodes
    by_weights = _prefix(sorted(w for w in weights if "." in w))
    if len(by_weights) >= 2:
        return by_weights
    return by_nodes if len(by_nodes) >= 2 else fallback


def _op_names(model: ir.Model) -> dict[str, str]:
    """Node name -> op type, prefixed by its domain outside the default one (``com.microsoft.Attention``)."""
    return {n.name or "": n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in model.graph}


def _describe_group(dg: DependencyGraph, group: Group, ops: Mapping[str, str],
                    softmax_outputs: frozenset[str]) -> dict[str, Any]:
    """Name, form, head size and query heads per unit of a head/neuron group."""
    rows = {m.slot.key: dg.positions(group, m.slot.key).shape[1] for m in group.members}
    shared = dg.shared_names  # one constant of several layers names none of them
    weights = [m.slot.value for m in group.members if m.weight and m.slot.value not in shared]
    fused = sorted({op for n in group.nodes if (op := ops.get(n)) is not None and op in _FUSED})
    per_unit = [r for r in rows.values() if r > 1]
    head_size = min(per_unit) if per_unit else 1
    q_per_unit = dg.queries_per_unit(group) if group.kind == "kv_group" else 1
    linear = [m for m in group.members if m.weight and Role.PRODUCE in m.roles]
    named = [n for n in group.nodes if ops.get(n) not in ("QuantizeLinear", "DequantizeLinear",
                                                         "com.microsoft.QuantizeLinear", "com.microsoft.DequantizeLinear")]
    softmax = {m.slot.value for m in group.members} & softmax_outputs
    return {
        "name": block_name(named, weights, group.nodes[0] if group.nodes else f"group {group.id}"),
        "form": fused[0] if fused else ("decomposed" if group.kind in HEAD_KINDS else "ffn"),
        "head_size": head_size,
        "q_per_unit": q_per_unit,
        "gated": len({m.slot.value for m in linear}) > 1 and group.kind == "neuron",
        # attentions whose heads this group holds: one, or several sharing per-head weights (T5's
        # relative-position bias is computed once and added in every layer: their heads are tied)
        "attentions": max(len(softmax), sum(ops.get(n) in _FUSED for n in group.nodes), 1),
    }


def _sinks(dg: DependencyGraph, group: Group, removed: Sequence[int]) -> list[dict[str, Any]]:
    """The weights that read the group's units (output/down projections) and the rows removed from them."""
    out = []
    for ws in dg.weights(group):
        if Role.CONSUME not in ws.roles:
            continue
        rows = np.sort(ws.positions[np.asarray(removed, dtype=np.int64)].reshape(-1)).tolist() if removed else []
        out.append({"node": ws.nodes[0] if ws.nodes else "", "weight": ws.slot.value, "axis": ws.slot.axis,
                    "rows_removed": rows})
    return out


def _shape_str(value: ir.Value) -> str:
    shape = value.shape
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape.dims) + "]"


def _signature_changes(dg: DependencyGraph, group: Group, removed: Sequence[int], block: str) -> list[dict[str, Any]]:
    """Graph inputs/outputs the group changed (a KV cache when signature changes were allowed)."""
    graph = dg.model.graph
    io = {v.name: "input" for v in graph.inputs} | {v.name: "output" for v in graph.outputs}
    out = []
    for m in group.members:
        kind = io.get(m.slot.value)
        if kind is None:
            continue
        value = dg.value(m.slot.value)
        if value is None:  # a graph input/output is always a value of the graph
            raise ValueError(f"group {group.id} member {m.slot.value!r} is not a value of the graph")
        table = dg.positions(group, m.slot.key)
        gone = set(table[np.asarray(removed, dtype=np.int64)].reshape(-1).tolist())
        new = _shape_str(value)
        old = list(value.shape.dims) if value.shape is not None else []
        if old:
            old[m.slot.axis] = m.slot.size
        out.append({"block": block, "kind": kind, "name": m.slot.value, "axis": m.slot.axis,
                    "kept": [p for p in range(m.slot.size) if p not in gone],
                    "old_shape": "[" + ", ".join(str(d) for d in old) + "]" if old else "?", "new_shape": new})
    return out


def heads_report(result: PruneResult, *, heads: float, ffn: float, criterion: str, round_to: Any) -> dict[str, Any]:
    """Per attention block and FFN: what ``prune`` removed, read off its plan; skipped blocks with reasons."""
    plan = result.plan
    dg = plan.graph
    report: dict[str, Any] = {
        "heads_ratio": heads, "ffn_ratio": ffn, "criterion": criterion, "round_to": round_to,
        "attention": [], "ffn": [], "skipped": [], "signature_changes": [],
    }
    used = {g.id: g.criterion for g in result.report.groups}
    ops = _op_names(dg.model)
    softmax_outputs = frozenset(o.name for n in dg.model.graph if n.op_type == "Softmax" for o in n.outputs if o.name)
    for group in dg.groups:
        attention = group.kind in HEAD_KINDS
        if group.kind not in ("head", "kv_group", "neuron") or (attention and not heads) or (not attention and not ffn):
            continue
        info = _describe_group(dg, group, ops, softmax_outputs)
        kind = "attention" if attention else "ffn"
        if not any(c.isdigit() for c in info["name"]):  # generic node names (dynamo): number the blocks
            info["name"] = f"{kind} {len(report[kind]) + sum(s['kind'] == kind for s in report['skipped'])}"
        if not group.prunable:
            report["skipped"].append({"name": info["name"], "kind": kind, "form": info["form"],
                                      "reason": group.reason or "not prunable"})
            continue
        removed = sorted(int(u) for u in plan.removed.get(group.id, ()))
        entry: dict[str, Any] = {"name": info["name"], "form": info["form"], "group": group.id, "removed": removed,
                                 "sinks": _sinks(dg, group, removed)}
        if used.get(group.id, criterion) != criterion:
            entry["criterion"] = used[group.id]
        if attention:
            g = info["q_per_unit"]
            kept_units = [u for u in range(group.size) if u not in removed]
            entry.update({
                "kept_heads": [u * g + j for u in kept_units for j in range(g)],
                "kept_kv_heads": kept_units,
                "heads_total": group.size * g, "heads_kept": len(kept_units) * g,
                "kv_heads_total": group.size, "kv_heads_kept": len(kept_units),
                "head_size": info["head_size"], "attentions": info["attentions"],
            })
            if not removed and heads > 0:
                unit = "key/value groups" if g > 1 else "heads"
                entry["note"] = (f"{heads:g} of {group.size} {unit} rounds down to none: nothing removed "
                                 f"(a ratio of at least {1 / group.size:g} removes one)")
        else:
            entry.update({"total": group.size, "kept": group.size - len(removed), "gated": info["gated"]})
        report[kind].append(entry)
        if removed:
            report["signature_changes"] += _signature_changes(dg, group, removed, info["name"])
    if heads:
        for value, reasons in dg.unattached_heads():
            report["skipped"].append({"name": value, "kind": "attention", "form": "decomposed",
                                      "reason": f"the heads reach no projection weight: {reasons[0]}"})
        if not report["attention"] and not any(s["kind"] == "attention" for s in report["skipped"]):
            report["notes"] = ["no attention heads found: no rule declared a head axis (no MatMul between two "
                               "activations with a heads axis, no fused attention op)"]
    return report


def prune_heads(
    model: ir.Model,
    *,
    heads: float = 0.0,
    ffn: float = 0.0,
    criterion: str | None = None,
    round_to: int | str = 1,
    exclude: Iterable[str] = (),
    allow_signature_change: bool = False,
    seed: int = 0,
    calib: object | None = None,
    repair: str | None = None,
) -> HeadPruneResult:
    """Prune ``heads`` of every attention block's heads (KV groups) and ``ffn`` of every FFN's neurons,
    in place, with the one engine (:func:`onnxsparse.passes.prune.prune` with ``channels=0``).

    ``criterion`` names a criterion of :mod:`onnxsparse.criteria`; ``round_to`` rounds the kept FFN
    width to a multiple (heads are never rounded); ``exclude`` holds node names / fnmatch patterns
    whose outputs keep every unit; ``allow_signature_change`` prunes heads whose KV cache is a graph
    input/output (``report["signature_changes"]`` lists the new shapes); ``calib``/``repair`` as for ``prune``.
    """
    from .prune import prune

    for name, ratio in (("heads", heads), ("ffn", ffn)):
        if not 0.0 <= ratio < 1.0:
            raise UsageError(f"--{name} ratio must be in [0, 1), got {ratio}")
    result = prune(model, 0.0, heads=heads, ffn=ffn, criterion=criterion, round_to=round_to, exclude=exclude,
                   allow_signature_change=allow_signature_change, seed=seed, measure=False, calib=calib,
                   repair=repair)
    report = heads_report(result, heads=heads, ffn=ffn, criterion=result.report.criterion, round_to=round_to)
    return HeadPruneResult(result.model, report)


class PruneHeadsPass(ir.passes.InPlacePass):
    """:func:`prune_heads` as an onnx_ir pass; the report is kept on ``self.report``."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options
        self.report: dict[str, Any] = {}

    def call(self, model: ir.Model) -> PassResult:
        result = prune_heads(model, **self.options)
        self.report = result.report
        return PassResult(model, modified=result.modified)


def report_table(report: dict[str, Any]) -> str:
    """The per-block summary the prune command prints (heads kept per layer, FFN width kept)."""
    from ..report import format_table

    rows: list[list[Any]] = []
    for b in report.get("attention", []):
        kv = "" if b["kv_heads_total"] == b["heads_total"] else f" (kv {b['kv_heads_kept']}/{b['kv_heads_total']})"
        note = f" -- {b['note']}" if b.get("note") else ""
        rows.append([b["name"], f"attention/{b['form']}", f"{b['heads_kept']}/{b['heads_total']} heads{kv}{note}"])
    for b in report.get("ffn", []):
        rows.append([b["name"], "ffn" + ("/gated" if b.get("gated") else ""), f"{b['kept']}/{b['total']} neurons"])
    for s in report.get("skipped", []):
        rows.append([s["name"], f"{s['kind']}/{s['form']}", f"skipped: {s['reason']}"])
    parts = [format_table(["block", "kind", "kept"], rows, title="Heads and FFN neurons")] if rows else []
    for c in report.get("signature_changes", []):
        parts.append(f"signature: {c['kind']} {c['name']} {c['old_shape']} -> {c['new_shape']}")
    parts += report.get("notes", [])
    return "\n".join(parts)


def masked_heads_model(source: Any, report: Mapping[str, Any]) -> ir.Model:
    """The correctness oracle of a heads/FFN prune: the original model (normalised) with the output
    rows the report removed (``sinks``) zeroed.  The pruned model must compute what this one does.

    ``source``: a path, bytes, ``ModelProto`` or ``onnx_ir`` model (copied, never changed).
    """
    import onnx

    from ..io import load_model

    if isinstance(source, onnx.ModelProto):
        source = source.SerializeToString()
    elif isinstance(source, ir.Model):
        source = ir.to_proto(source).SerializeToString()
    ref = load_model(source)
    normalize(ref)
    for entry in (*report["attention"], *report["ffn"]):
        for sink in entry["sinks"]:
            value = ref.graph.initializers[sink["weight"]]
            if value.const_value is None:
                raise DataError(f"initializer {value.name!r} has no data to mask")
            w = value.const_value.numpy().copy()
            index = [slice(None)] * w.ndim
            index[sink["axis"]] = sink["rows_removed"]
            w[tuple(index)] = 0
            value.const_value = ir.tensor(w, name=value.name)
    return ref
