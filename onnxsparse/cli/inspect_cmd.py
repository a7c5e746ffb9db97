"""``onnxsparse inspect MODEL``: what a model is made of, before you shrink it.

Header (file, producer, IR, opsets, inputs/outputs), a summary line (params,
MACs, bytes on disk, nodes), the layers with the most MACs, the op histogram
and the existing sparsity.  ``--json`` prints the same with stable keys
(docs/inspect.md); ``--report FILE`` writes it as .json/.md/.html.
``--calib DATA`` adds activation statistics measured on data (zero fraction,
dead and constant units per ReLU-family layer; histograms in the HTML report).
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import SUMMARIES
from ..errors import UsageError
from ..report import (
    atomic_write_text,
    check_report_paths,
    dump_json,
    format_table,
    human_bytes,
    human_count,
    write_report,
)

from ._common import add_report_force, inputs

__all__ = ["register", "run", "inspect_model"]


_DIM_RE = re.compile(r"^(?P<name>[^=]+)=(?P<value>\d+)$")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "inspect",
        parents=[common],
        help=SUMMARIES["inspect"],
        description=(
            "Show a model's producer, IR/opset, inputs/outputs, parameter count, bytes on disk, "
            "MACs per layer and in total, op histogram and existing sparsity (zero fraction, N:M "
            "patterns). Dynamic dims are resolved from --shape/--dim, otherwise MACs are unknown."
        ),
    )
    p.add_argument("model", help="the .onnx file")
    p.add_argument(
        "--shape", action="append", default=[], metavar="NAME=D0xD1x...",
        help="concrete shape of an input, e.g. input=1x3x224x224 (repeatable)",
    )
    p.add_argument(
        "--dim", action="append", default=[], metavar="SYMBOL=N",
        help="value of a symbolic dim in every input, e.g. batch=1 (repeatable)",
    )
    p.add_argument("--top", type=int, default=15, metavar="N", help="layers to list by MACs (default 15)")
    p.add_argument("--all", action="store_true", help="list every node, not just the top N")
    p.add_argument("--no-sparsity", action="store_true", help="do not read weight values (faster on huge models)")
    _add_calib_arguments(p)
    p.add_argument("--report", metavar="FILE", help="also write the full result to FILE (.json, .md or .html)")
    add_report_force(p)
    p.add_argument("--groups", metavar="FILE.json",
                   help="write every prunable group (members, index maps, units) as JSON for a training script "
                        "(group lasso; format in docs/groups.md)")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- --calib: activation statistics


def _add_calib_arguments(p: argparse.ArgumentParser) -> None:
    from ..calibration.data import DEFAULT_CALIB_SAMPLES

    cal = p.add_argument_group("activation statistics (docs/activations.md)")
    cal.add_argument("--calib", metavar="DATA",
                     help="measure ReLU-family activations on DATA (.npz keyed by input name, a folder of them, or "
                          "'random'): zero fraction, dead and constant units per layer, model-level sparsity")
    cal.add_argument("--calib-samples", type=int, default=DEFAULT_CALIB_SAMPLES, metavar="N",
                     help=f"calibration samples used (default {DEFAULT_CALIB_SAMPLES})")


def activations_section(path: str | Path, calib: Any, shapes: dict[str, tuple[int, ...]] | None,
                        samples: int) -> dict[str, Any]:
    """The ``activations`` entry of the result: :func:`onnxsparse.passes.activation_stats.activation_statistics`."""
    from ..passes.activation_stats import activation_statistics

    if samples < 1:
        raise UsageError(f"--calib-samples must be >= 1, got {samples}")
    return activation_statistics(path, calib, shapes=shapes, samples=samples).to_dict()


def activations_text(act: dict[str, Any], top: int | None) -> str:
    """Terminal table: per activation layer its units, mean zero fraction, dead and constant units."""
    leaky = any(layer["op"] == "LeakyRelu" for layer in act["layers"])
    rows = [[layer["node"], layer["op"], f"{layer['value']}[{layer['axis']}]", layer["units"],
             f"{layer['zero_fraction']:.3f}", *([f"{layer['negative_fraction']:.3f}"] if leaky else []),
             layer["dead"], layer["constant"]]
            for layer in (act["layers"] if top is None else act["layers"][: max(top, 1)])]
    title = (f"Activations on {act['samples']} samples of {act['data']}: sparsity {100 * act['sparsity']:.2f}% "
             f"(zeros of all ReLU-family outputs), {act['dead']} dead and {act['constant']} constant of "
             f"{act['units']} units")
    out = [format_table(["layer", "op", "tensor[axis]", "units", "zero frac", *(["neg frac"] if leaky else []),
                         "dead", "constant"], rows, title=title) if rows else title + " (no ReLU-family layer)"]
    du = act.get("dead_units")
    if du is not None:
        out.append(f"prune --dead would remove {du['removable']} units exactly ({du['dead']} dead, {du['constant']} "
                   f"constant where the next layers read them, in {len(du['groups'])} groups)")
    return "\n".join(out)


def activations_html(act: dict[str, Any]) -> str:
    """SVG histograms of the per-unit zero fraction: all layers, then each layer."""
    from ..validate.svg import bar_chart

    bins = act["histogram_bins"]
    labels = [f"{i / bins:.1f}-{(i + 1) / bins:.1f}" for i in range(bins)]
    label = "fraction of exact zeros per unit (bars: units)"
    charts = [bar_chart(labels, act["histogram"], xlabel=label,
                        title=f"All {act['units']} units (sparsity {100 * act['sparsity']:.1f}%)")]
    for layer in act["layers"]:
        charts.append(bar_chart(labels, layer["histogram"], xlabel=label,
                                title=f"{layer['node']} ({layer['op']}): {layer['units']} units, {layer['dead']} dead"))
    return "<h2>Activation sparsity</h2>\n<div>\n" + "\n".join(charts) + "\n</div>\n"


def parse_dims(items: list[str] | None) -> dict[str, int]:
    """Parse ``SYMBOL=N`` options."""
    dims: dict[str, int] = {}
    for item in items or []:
        match = _DIM_RE.match(item.strip())
        if not match:
            raise UsageError(f"bad --dim {item!r}: expected SYMBOL=N (e.g. batch=1)")
        dims[match["name"]] = int(match["value"])
    return dims


def inspect_model(
    path: str | Path,
    shapes: dict[str, tuple[int, ...]] | None = None,
    dims: dict[str, int] | None = None,
    *,
    calib: Any = None,  # with activation statistics measured on this data (``--calib``)
    calib_samples: int | None = None,
    sparsity: bool = True,
    analysis: GroupAnalysis | None = None,
) -> dict[str, Any]:
    """The full ``inspect`` result for a model file, as a JSON-ready dict (``analysis``: the groups
    when the caller already analysed them, see :func:`analyse_groups`)."""
    from ..analysis import model_stats
    from ..io import load_model, model_file_bytes

    model = load_model(path)
    _check_dims(model, dims or {})
    stats = model_stats(model, shapes, dims=dims, sparsity=sparsity)
    result: dict[str, Any] = {"file": str(path), "bytes": model_file_bytes(path)}
    body = stats.to_dict()
    # Key order: identity first, then the headline numbers, then the detail lists.
    for key in ("producer", "ir_version", "opsets", "inputs", "outputs", "dims"):
        result[key] = body.pop(key)
    for key in ("params", "macs", "attention_macs", "weight_bytes", "nodes"):
        result[key] = body.pop(key)
    if calib is not None:
        from ..calibration.data import DEFAULT_CALIB_SAMPLES

        body["activations"] = activations_section(path, calib, shapes, calib_samples or DEFAULT_CALIB_SAMPLES)
    result.update(body)
    try:
        analysis = analysis or analyse_groups(path)
        groups = prunable_groups(analysis.graph)
    except Exception as exc:  # noqa: BLE001 - a secondary section must not hide the numbers above
        logging.getLogger(__name__).debug("prunable groups failed", exc_info=True)
        result["prunable_groups_error"] = f"{type(exc).__name__}: {exc}"
    else:
        result["prunable_groups"] = groups
        result["group_scores"] = group_scores(analysis.graph)
    try:
        blocks = residual_blocks(analysis.graph.model if analysis is not None else _analysed(path), shapes)
    except Exception as exc:  # noqa: BLE001 - a secondary section must not hide the numbers above
        logging.getLogger(__name__).debug("residual blocks failed", exc_info=True)
        result["residual_blocks_error"] = f"{type(exc).__name__}: {exc}"
    else:
        result["residual_blocks"] = blocks
    return result


@dataclass(frozen=True)
class GroupAnalysis:
    """The dependency analysis of a model file, and the initializer names the file itself holds."""

    graph: Any  # onnxsparse.graph.DependencyGraph
    in_file: frozenset[str]


def analyse_groups(path: str | Path) -> GroupAnalysis:
    """The groups as ``prune`` analyses the model (normalised, attention rewritten)."""
    from ..graph import build_groups
    from ..io import load_model
    from ..passes.prune import prepare_for_analysis

    model = load_model(path)
    in_file = frozenset(model.graph.initializers)
    return GroupAnalysis(build_groups(prepare_for_analysis(model)), in_file)


def group_scores(dg: Any, criterion: str = "l2") -> dict[str, Any]:
    """Raw ``criterion`` scores of every unit of the prunable groups, as a log-bucket histogram:
    ``prune --threshold T`` removes the units below ``T`` (see docs/prune.md, "Threshold")."""
    from ..criteria.histogram import log_histogram
    from ..passes.prune import score_groups

    scores, _ = score_groups(dg, criterion)
    values = [float(v) for s in scores.values() for v in s]
    return {"criterion": criterion, "histogram": log_histogram(values)}


def _analysed(path: str | Path):
    """The model as ``prune`` and ``sensitivity`` analyse it (normalised, attention rewritten)."""
    from ..io import load_model
    from ..passes.prune import prepare_for_analysis

    return prepare_for_analysis(load_model(path))


def residual_blocks(model, shapes: dict[str, tuple[int, ...]] | None = None) -> list[dict[str, Any]]:
    """Residual blocks ``x + f(x)`` found in the analysed model: removable whole, or declined with the reason."""
    from ..passes.blocks import find_blocks

    return [b.to_dict() for b in find_blocks(model, shapes)]


def _check_dims(model, dims: dict[str, int]) -> None:
    symbols = {
        d.value
        for v in model.graph.inputs
        if not v.is_initializer() and v.shape is not None
        for d in v.shape
        if not isinstance(d, int) and d.value is not None
    }
    unknown = sorted(set(dims) - symbols)
    if unknown:
        have = ", ".join(sorted(symbols)) or "none"
        raise UsageError(f"--dim names unknown dim(s) {unknown}; the inputs' symbolic dims are: {have}")


def prunable_groups(analysis: Any) -> list[dict[str, Any]]:
    """The structured-pruning groups of a :class:`~onnxsparse.graph.DependencyGraph`: channels, heads,
    KV groups and FFN neurons, each with its kind and reasons."""
    return [
        {
            "id": g.id,
            "kind": g.kind,
            "units": g.size,
            "channels": g.channels,
            "root": str(g.root),
            "prunable": g.prunable,
            "reasons": list(g.reasons),
            "nodes": list(g.nodes),
        }
        for g in analysis.groups
    ]


def run(args: argparse.Namespace) -> int:
    from ..calibration.data import parse_shapes

    if args.top < 0:
        raise UsageError("--top must be >= 0")
    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    if args.groups and Path(args.groups).suffix.lower() != ".json":
        raise UsageError(f"--groups writes JSON: give a .json file, got {args.groups!r}")
    if args.groups:
        check_report_paths([args.groups], force=args.force, protect=inputs(args))
    shapes = parse_shapes(args.shape)
    dims = parse_dims(args.dim)
    analysis = None
    if args.groups:
        from ..graph.export_groups import groups_document

        analysis = analyse_groups(args.model)
        doc = groups_document(analysis.graph, model=str(args.model), in_file=set(analysis.in_file))
        atomic_write_text(Path(args.groups), dump_json(doc) + "\n")
    result = inspect_model(args.model, shapes, dims, sparsity=not args.no_sparsity, analysis=analysis,
                           calib=args.calib, calib_samples=args.calib_samples)
    if args.report:
        write_report(args.report, result, title=f"onnxsparse inspect {Path(args.model).name}", force=args.force,
                     html_extra=_score_chart(result) + (activations_html(result["activations"])
                                                         if "activations" in result else ""))
    if args.json:
        print(dump_json(result))
    else:
        print(render_text(result, top=None if args.all else args.top))
    return 0


# --------------------------------------------------------------------------- text


def _dims(shape: list | None) -> str:
    if shape is None:
        return "?"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _io_lines(label: str, tensors: list[dict[str, Any]]) -> list[str]:
    lines = []
    for i, t in enumerate(tensors):
        declared, shape = t["declared_shape"], t["shape"]
        text = f"{t['name']}  {t['dtype']}{_dims(declared)}"
        resolved = shape is not None and declared is not None and any(
            not isinstance(d, int) and s is not None for d, s in zip(declared, shape)
        )
        if resolved:
            text += f" -> {_dims(shape)}"
        lines.append(f"{label if i == 0 else '':<10} {text}")
    if not tensors:
        lines.append(f"{label:<10} (none)")
    return lines


def _pct(part: int | None, total: int | None) -> float | None:
    if part is None or not total:
        return None
    return round(100.0 * part / total, 2)


def render_text(result: dict[str, Any], top: int | None = 15) -> str:
    """Human-readable report: header, summary, top layers, op histogram, sparsity."""
    out: list[str] = []
    opsets = ", ".join(f"{d} {v}" for d, v in result["opsets"].items())
    out.append(f"{'model':<10} {result['file']}")
    out.append(f"{'producer':<10} {result['producer'] or '?'}")
    out.append(f"{'IR':<10} {result['ir_version']}   opsets: {opsets}")
    out += _io_lines("inputs", result["inputs"])
    out += _io_lines("outputs", result["outputs"])
    out.append("")
    macs = result["macs"]
    summary = (
        f"params {human_count(result['params'])} ({result['params']:,})   "
        f"MACs {human_count(macs) if macs is not None else 'unknown'}"
        + (f" ({macs:,})" if macs is not None else "")
        + f"   on disk {human_bytes(result['bytes'])} (weights {human_bytes(result['weight_bytes'])})"
        + f"   nodes {result['nodes']}"
    )
    out.append(summary)
    if result.get("attention_macs"):
        out.append(
            f"attention MACs (products of two activations): {human_count(result['attention_macs'])}"
            f" ({_pct(result['attention_macs'], macs) or 0:.1f}% of total)"
        )
    unknown = result["unknown_macs"]
    symbols = list(
        dict.fromkeys(
            d
            for t in result["inputs"]
            for d, s in zip(t["declared_shape"] or [], t["shape"] or t["declared_shape"] or [])
            if isinstance(d, str) and s is None
        )
    )
    if unknown and symbols:
        out.append(
            f"MACs unknown for {len(unknown)} node(s): dynamic dims {', '.join(symbols)}; "
            f"fix them with --dim {symbols[0]}=N (or --shape NAME=D0xD1x...)"
        )
    elif unknown:
        first = unknown[0]
        out.append(
            f"MACs unknown for {len(unknown)} node(s), e.g. {first['name'] or first['op_type']}: {first['reason']}"
        )

    rows = [r for r in result["per_node"]]
    if top is not None:
        # Known MACs first (largest first), then counted nodes with unknown MACs, then
        # nodes that only hold weights.
        rows = sorted(
            (r for r in rows if r["macs"] is None or r["macs"] > 0 or r["params"] > 0),
            key=lambda r: (0 if r["macs"] else 1 if r["macs"] is None else 2, -(r["macs"] or 0), -r["params"]),
        )
        shown = rows[:top]
        title = f"Top {len(shown)} of {len(rows)} layers by MACs"
    else:
        shown = rows
        title = f"All {len(rows)} nodes"
    if shown:
        table = [
            [
                r["name"] or "-",
                r["op_type"],
                r["macs"],
                _pct(r["macs"], macs),
                r["params"],
                " ".join(_dims(s) for s in r["output_shapes"]),
            ]
            for r in shown
        ]
        out += ["", format_table(["node", "op", "MACs", "%", "params", "output"], table, title=title)]

    macs_by_op: dict[str, int | None] = {}
    for r in result["per_node"]:
        key = r["op_type"] if r["domain"] in ("", "ai.onnx") else f"{r['domain']}.{r['op_type']}"
        prev = macs_by_op.get(key, 0)
        macs_by_op[key] = None if prev is None or r["macs"] is None else prev + r["macs"]
    hist = [[op, count, macs_by_op.get(op)] for op, count in result["op_histogram"].items()]
    out += ["", format_table(["op", "count", "MACs"], hist, title="Op histogram")]

    sp = result["sparsity"]
    out.append("")
    if sp["zeros"] is None:
        out.append("Sparsity: not measured (--no-sparsity)")
    else:
        patterns = ", ".join(f"{p} x{n}" for p, n in sp["nm_patterns"].items()) or "none"
        out.append(
            f"Sparsity: {100 * (sp['zero_fraction'] or 0):.2f}% of parameters are zero "
            f"({sp['zeros']:,} of {sp['measured_params']:,}); "
            f"{sp['weights_with_zeros']} weight(s) hold zeros; N:M patterns: {patterns}"
        )
        if sp["unmeasured_weights"]:
            out.append(f"  not measured (computed weights too large to evaluate): {len(sp['unmeasured_weights'])}")
        sparse = sorted((w for w in result["per_weight"] if w["zeros"]), key=lambda w: (-w["sparsity"], w["name"]))
        if sparse:
            limit = len(sparse) if top is None else min(len(sparse), max(top, 1))
            table = [
                [w["name"], _dims(w["shape"]), w["dtype"], w["params"], round(100 * w["sparsity"], 2), w["nm_pattern"] or "-"]
                for w in sparse[:limit]
            ]
            out.append(
                format_table(
                    ["weight", "shape", "dtype", "params", "zero %", "N:M"], table,
                    title=f"Sparsest weights ({limit} of {len(sparse)})",
                )
            )
    storage = result.get("storage") or {}
    if storage.get("tensors"):
        formats = Counter(t["format"] for t in storage["tensors"])
        dense, stored = storage["bytes_dense"], storage["bytes_stored"]
        out.append(
            f"Sparse storage: {len(storage['tensors'])} weight(s) "
            f"({', '.join(f'{f} {n}' for f, n in sorted(formats.items()))}), "
            f"{human_bytes(dense)} dense -> {human_bytes(stored)} stored ({stored / dense if dense else 0:.3f}x); "
            f"{storage['decode_nodes']} decode nodes (not counted above) that onnxruntime folds at session creation"
        )
    if "activations" in result:
        out += ["", activations_text(result["activations"], top)]
    if "prunable_groups_error" in result:
        out += ["", f"Prunable groups: not available ({result['prunable_groups_error']})"]
    if "prunable_groups" in result:
        groups = result["prunable_groups"]
        prunable = [g for g in groups if g["prunable"]]
        kinds: dict[str, list[int]] = {}
        for g in groups:
            kinds.setdefault(g["kind"], [0, 0])[0 if g["prunable"] else 1] += 1
        by_kind = ", ".join(f"{k} {p}/{p + b}" for k, (p, b) in kinds.items())
        out += ["", f"Prunable groups: {len(prunable)} of {len(groups)}" + (f" ({by_kind})" if by_kind else "")]
        shown_groups = groups if top is None else groups[: max(top, 1)]
        table = [
            [g["id"], g["kind"], g["root"], g["units"], g["channels"], "yes" if g["prunable"] else "no",
             "; ".join(g["reasons"][:1]) or "-"]
            for g in shown_groups
        ]
        if table:
            out.append(format_table(["group", "kind", "root", "units", "channels", "prunable", "reason"], table))
    if result.get("group_scores") and result["group_scores"]["histogram"]["units"]:
        from ..criteria.histogram import histogram_line

        scores = result["group_scores"]
        out.append(f"{scores['criterion']} scores of {scores['histogram']['units']} units (count per decade; "
                   f"prune --threshold T removes those below T): {histogram_line(scores['histogram'])}")
    out += _blocks_section(result, top)
    return "\n".join(out)


def _score_chart(result: dict[str, Any]) -> str:
    """The score histogram as an SVG bar chart (HTML reports), or nothing without scores."""
    from ..validate.svg import bar_chart

    scores = result.get("group_scores")
    if not scores or not scores["histogram"]["units"]:
        return ""
    hist = scores["histogram"]
    labels = (["0"] if hist["zero"] else []) + [f"{b['lo']:.0e}" for b in hist["buckets"]]
    counts = ([hist["zero"]] if hist["zero"] else []) + [b["count"] for b in hist["buckets"]]
    return bar_chart(labels, counts, title=f"{scores['criterion']} score per unit of the prunable groups",
                     xlabel="score decade (lower edge); prune --threshold T removes the units below T")


def _blocks_section(result: dict[str, Any], top: int | None) -> list[str]:
    if "residual_blocks_error" in result:
        return ["", f"Residual blocks: not available ({result['residual_blocks_error']})"]
    blocks = result.get("residual_blocks")
    if not blocks:
        return [] if blocks is None else ["", "Residual blocks: none (no Add joins x and a weighted branch f(x))"]
    removable = sum(1 for b in blocks if b["removable"])
    out = ["", f"Residual blocks (x + f(x), removable whole): {removable} of {len(blocks)}"]
    shown = blocks if top is None else blocks[: max(top, 1)]
    out.append(format_table(
        ["block", "residual Add", "branch nodes", "params", "MACs", "removable", "reason"],
        [[b["id"], b["add"], b["nodes"] or "-", human_count(b["params"]) if b["removable"] else "-",
          human_count(b["macs"]) if b["removable"] else "-", "yes" if b["removable"] else "no",
          _clip(b.get("reason") or "-", 110)] for b in shown]))
    return out


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
