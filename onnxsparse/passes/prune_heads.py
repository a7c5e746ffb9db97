"""Remove attention heads and FFN neurons from transformer blocks.

The ratio is the fraction of units removed *per block* (at least one head /
KV group / neuron is kept).  Attention units are KV heads: removing one removes
its query heads too (for plain multi-head attention that is one head; for
grouped-query attention a whole group), i.e. their Q/K/V projection columns and
biases, their output-projection rows, and every head count in Reshape targets
and ``num_heads`` attributes.  FFN units are intermediate neurons.  Blocks whose
structure cannot be proven are skipped and listed with the reason.

The prune command calls :func:`add_cli_arguments` and :func:`apply_from_args`.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnx_ir.passes import PassResult

from ..errors import UsageError
from ..transformer import Block, SkippedBlock, criterion_names, find_blocks, units_to_remove
from ..transformer._shapes import complete_shapes
from .normalize import normalize

__all__ = [
    "HeadPruneResult",
    "PruneHeadsPass",
    "prune_heads",
    "add_cli_arguments",
    "apply_from_args",
    "heads_block_map",
    "report_table",
    "masked_heads_model",
]

logger = logging.getLogger(__name__)


@dataclass
class HeadPruneResult:
    """The pruned model (same object, changed in place) and what happened to every block."""

    model: ir.Model
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def modified(self) -> bool:
        return any(b["removed"] for b in self.report.get("attention", []) + self.report.get("ffn", []))


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1), got {value}")
    return value


def _shape_str(value: ir.Value) -> str:
    shape = value.shape
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape.dims) + "]"


def _excluded(block: Block, patterns: Sequence[str]) -> bool:
    if not patterns:
        return False
    names = {block.name, block.anchor.name or ""}
    for node in block.region.sinks:
        names.add(node.name or "")
    for key in ("projections", "output_projections"):
        names.update(n or "" for n in block.details.get(key, []))
    return any(fnmatch.fnmatchcase(n, p) for n in names if n for p in patterns)


def _prune_kind(
    model: ir.Model,
    kind: str,
    ratio: float,
    *,
    criterion: str,
    round_to: int,
    exclude: Sequence[str],
    allow_signature_change: bool,
    rng: np.random.Generator,
    report: dict[str, Any],
    calibration: Any = None,
) -> None:
    graph = model.graph
    found = find_blocks(graph, kind)
    _uniquify(found)
    done: set[ir.Node] = set()
    for item in found:
        if isinstance(item, SkippedBlock):
            report["skipped"].append(item.as_dict())
            continue
        block = item
        if block.region.touched & done:
            # An earlier block rewrote part of this one: analyse it again on the current graph.
            again = [b for b in find_blocks(graph, kind) if isinstance(b, Block) and b.anchor is block.anchor]
            if not again:
                report["skipped"].append({"name": block.name, "kind": kind, "form": block.form,
                                          "reason": "changed by an earlier block and no longer matches"})
                continue
            block = again[0]
        if _excluded(block, exclude):
            report["skipped"].append({"name": block.name, "kind": kind, "form": block.form, "reason": "excluded"})
            continue
        changes = block.region.signature
        if changes and not allow_signature_change:
            what = ", ".join(f"{c.kind} {c.value.name} {_shape_str(c.value)}" for c in changes)
            report["skipped"].append({
                "name": block.name, "kind": kind, "form": block.form,
                "reason": f"pruning changes graph {what}; pass allow_signature_change=True "
                          "(--allow-signature-change) to allow it",
            })
            continue
        n_remove = units_to_remove(block.n_units, ratio, round_to if kind == "ffn" else 1)
        if calibration is not None:  # data-driven scores (onnxsparse.passes.reconstruct.HeadCalibration)
            scores, used = calibration.scores(block, criterion, rng)
        else:
            scores, used = block.scores(criterion, rng)
        order = np.argsort(scores, kind="stable")
        removed = sorted(int(u) for u in order[:n_remove])
        removal = block.removal(removed)
        before = {c.value.name: _shape_str(c.value) for c in changes}
        sinks = [
            {"node": node.name, "weight": weight.name, "axis": axis,
             "rows_removed": np.flatnonzero(~removal.keep(track)).tolist()}
            for node, weight, axis, track in block.region.sink_weights
        ]
        repairs = None
        if removed:
            if calibration is not None:  # re-fit the sinks' kept rows and bias before they are sliced
                repairs = calibration.repair(model, block, removal)
            block.region.apply(removal)
            done |= block.region.touched
        entry: dict[str, Any] = {"name": block.name, "form": block.form, "removed": removed, "sinks": sinks}
        if repairs:
            entry["repair"] = [vars(r) for r in repairs]
        if used != criterion:
            entry["criterion"] = used
            report.setdefault("notes", []).append(
                f"{block.name}: criterion {criterion!r} cannot score {kind} units; used {used!r}")
        if kind == "attention":
            q_removed = len(removal.removed.get("q", []))
            entry.update({
                "kept_heads": [q for q in range(block.q_heads) if q not in removal.removed.get("q", [])],
                "kept_kv_heads": [u for u in range(block.kv_heads) if u not in removed],
                "heads_total": block.q_heads, "heads_kept": block.q_heads - q_removed,
                "kv_heads_total": block.kv_heads, "kv_heads_kept": block.kv_heads - len(removed),
                "head_size": block.head_size,
            })
        else:
            entry.update({"total": block.n_units, "kept": block.n_units - len(removed),
                          "gated": bool(block.details.get("gated"))})
        if block.n_units <= 1:
            entry["note"] = "only one unit: nothing to remove"
        elif not removed and ratio > 0 and kind == "attention":  # heads are not rounded: floor(ratio * n) == 0
            unit = "key/value groups" if block.kv_heads < block.q_heads else "heads"
            entry["note"] = (f"{ratio:g} of {block.n_units} {unit} rounds down to none: nothing removed "
                             f"(a ratio of at least {1 / block.n_units:g} removes one)")
        report[kind].append(entry)
        for c in changes:
            if removed:
                report["signature_changes"].append({
                    "block": block.name, "kind": c.kind, "name": c.value.name, "axis": c.axis,
                    "kept": np.flatnonzero(removal.keep(c.track)).tolist(),
                    "old_shape": before[c.value.name], "new_shape": _shape_str(c.value),
                })
        logger.info("%s %s: removed %d of %d units", kind, block.name, len(removed), block.n_units)


def _uniquify(found: Sequence[Block | SkippedBlock]) -> None:
    seen: dict[str, int] = {}
    for item in found:
        n = seen.get(item.name, 0)
        seen[item.name] = n + 1
        if n:
            item.name = f"{item.name}#{n}"


def prune_heads(
    model: ir.Model,
    *,
    heads: float = 0.0,
    ffn: float = 0.0,
    criterion: str = "l2",
    round_to: int = 1,
    exclude: Iterable[str] = (),
    allow_signature_change: bool = False,
    seed: int = 0,
    calibration: Any = None,
) -> HeadPruneResult:
    """Prune ``heads`` of every attention block's KV groups and ``ffn`` of every FFN's neurons, in place.

    ``criterion`` names a criterion of :mod:`onnxsparse.criteria`, scored over the weight slices a
    unit owns (one that cannot score them, e.g. ``bn``, falls back to ``l2`` with a note); ``round_to`` rounds the kept FFN width up to a multiple; ``exclude`` holds
    fnmatch patterns of block or node names to leave alone.  ``calibration``
    (:class:`onnxsparse.passes.reconstruct.HeadCalibration`) enables the
    data-driven criteria and repairs the output projections from calibration data.
    """
    for name, ratio in (("heads", heads), ("ffn", ffn)):
        if not 0.0 <= ratio < 1.0:
            raise UsageError(f"--{name} ratio must be in [0, 1), got {ratio}")
    if criterion not in criterion_names():
        raise UsageError(f"unknown criterion {criterion!r}; choose one of {', '.join(criterion_names())}")
    if round_to < 1:
        raise UsageError(f"round_to must be >= 1, got {round_to}")
    exclude = tuple(exclude)
    from ..criteria import get_criterion

    if get_criterion(criterion).requires_data and calibration is None:
        raise UsageError(f"criterion {criterion!r} needs calibration data: give --calib DATA")
    normalize(model)
    complete_shapes(model)
    if calibration is not None:
        calibration.prepare(model, [k for k, r in (("attention", heads), ("ffn", ffn)) if r > 0])
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {
        "heads_ratio": heads, "ffn_ratio": ffn, "criterion": criterion, "round_to": round_to,
        "attention": [], "ffn": [], "skipped": [], "signature_changes": [],
    }
    opts = dict(criterion=criterion, round_to=round_to, exclude=exclude,
                allow_signature_change=allow_signature_change, rng=rng, report=report, calibration=calibration)
    if heads > 0:
        _prune_kind(model, "attention", heads, **opts)  # type: ignore[arg-type]
    if ffn > 0:
        _prune_kind(model, "ffn", ffn, **opts)  # type: ignore[arg-type]
    common.RemoveUnusedNodesPass()(model)
    if calibration is not None:
        report["calibration"] = calibration.summary()
    return HeadPruneResult(model, report)


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


# ----------------------------------------------------------------------------------------
# CLI glue for ``onnxsparse prune``
# ----------------------------------------------------------------------------------------

def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--heads``, ``--ffn``, ``--head-criterion``, ``--allow-signature-change`` (and
    ``--round-to`` / ``--exclude`` unless the prune command already defines them)."""
    existing = set(getattr(parser, "_option_string_actions", {}))
    group = parser.add_argument_group("transformer heads and FFN neurons")

    def gadd(*flags: str, **kwargs: Any) -> None:
        if not any(f in existing for f in flags):
            group.add_argument(*flags, **kwargs)

    gadd("--heads", type=_ratio, default=0.0, metavar="RATIO",
         help="fraction of attention heads (KV groups for grouped-query attention) removed per block; "
              "at least one is kept")
    gadd("--ffn", type=_ratio, default=0.0, metavar="RATIO",
         help="fraction of FFN intermediate neurons removed per block")
    gadd("--head-criterion", choices=criterion_names(), default=None,
         help="importance of heads/neurons (default: --criterion; criteria that cannot score heads, "
              "e.g. bn, fall back to l2)")
    gadd("--allow-signature-change", action="store_true",
         help="allow pruning heads whose KV cache is a graph input/output (changes those shapes)")
    gadd("--round-to", type=int, default=1, metavar="N", help="keep a multiple of N channels/neurons")
    gadd("--exclude", action="append", default=[], metavar="PATTERN",
        help="leave blocks/nodes whose name matches this fnmatch pattern alone (repeatable)")


def apply_from_args(model: ir.Model, args: argparse.Namespace, calibration: Any = None) -> HeadPruneResult | None:
    """Run :func:`prune_heads` with the options :func:`add_cli_arguments` added; ``None`` if
    neither ``--heads`` nor ``--ffn`` was given.  ``calibration`` is passed through."""
    heads = float(getattr(args, "heads", 0.0) or 0.0)
    ffn = float(getattr(args, "ffn", 0.0) or 0.0)
    if heads <= 0 and ffn <= 0:
        return None
    criterion = getattr(args, "head_criterion", None)
    if criterion is None:
        general = getattr(args, "criterion", None)
        criterion = general if general in criterion_names() else "l2"
    exclude = getattr(args, "exclude", None) or ()
    if isinstance(exclude, str):
        exclude = (exclude,)
    return prune_heads(
        model,
        heads=heads,
        ffn=ffn,
        criterion=criterion,
        round_to=int(getattr(args, "round_to", 1) or 1),
        exclude=tuple(exclude),
        allow_signature_change=bool(getattr(args, "allow_signature_change", False)),
        seed=int(getattr(args, "seed", 0) or 0),
        calibration=calibration,
    )


def heads_block_map(report: Mapping[str, Any], label_prefix: str = "") -> dict[tuple[str, int], str]:
    """Weight axes this pass already pruned, ``(weight, axis) -> reason``: channel pruning must leave them alone.

    The reason reads ``pruned by <label_prefix>heads|ffn (block NAME)``: ``label_prefix="--"`` names the CLI flags.
    """
    block: dict[tuple[str, int], str] = {}
    for kind, key in (("attention", "heads"), ("ffn", "ffn")):
        for entry in report.get(kind, []):
            for sink in entry.get("sinks", []):
                block[(sink["weight"], int(sink["axis"]))] = f"pruned by {label_prefix}{key} (block {entry['name']})"
    return block


def report_table(report: dict[str, Any]) -> str:
    """The per-block summary the prune command prints (heads kept per layer, FFN width kept)."""
    from ..report import format_table

    rows: list[list[Any]] = []
    for b in report.get("attention", []):
        kv = "" if b["kv_heads_total"] == b["heads_total"] else f" (kv {b['kv_heads_kept']}/{b['kv_heads_total']})"
        note = f" -- {b['note']}" if b.get("note") else ""
        rows.append([b["name"], f"attention/{b['form']}", f"{b['heads_kept']}/{b['heads_total']} heads{kv}{note}"])
    for b in report.get("ffn", []):
        note = f" -- {b['note']}" if b.get("note") else ""
        rows.append([b["name"], "ffn" + ("/gated" if b.get("gated") else ""), f"{b['kept']}/{b['total']} neurons{note}"])
    for s in report.get("skipped", []):
        rows.append([s["name"], f"{s['kind']}/{s['form']}", f"skipped: {s['reason']}"])
    parts = [format_table(["block", "kind", "kept"], rows, title="Heads and FFN neurons")] if rows else []
    for c in report.get("signature_changes", []):
        parts.append(f"signature: {c['kind']} {c['name']} {c['old_shape']} -> {c['new_shape']}")
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
            w = value.const_value.numpy().copy()
            index = [slice(None)] * w.ndim
            index[sink["axis"]] = sink["rows_removed"]
            w[tuple(index)] = 0
            value.const_value = ir.tensor(w, name=value.name)
    return ref
