"""``onnxsparse sparsify MODEL -o OUT``: zero weights by a pattern and store them compactly.

Without ``--sparsity`` (and without an N:M pattern or ``--ratio``) nothing is
pruned: the zeros already present are re-encoded, losslessly.  The output runs
unchanged in onnxruntime (decode subgraphs of standard ops, folded at session
creation); ``onnxsparse densify`` turns it back into a plain model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import SUMMARIES
from ..report import (
    check_report_paths,
    format_table,
    human_bytes,
)
from ._common import emit, inputs, progress_enabled

__all__ = ["register", "run", "render_text"]

#: tensors listed in the text table (the full list is in --json / --report)
TEXT_ROWS = 30


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..formats import FORMATS, format_choices
    from ..options.cli import add_arguments
    from ..options.sparsify import SparsifyOptions

    formats_help = "; ".join(f"{name}: {FORMATS.get(name).summary}" for name in format_choices()[1:])
    p = subparsers.add_parser(
        "sparsify",
        parents=[common],
        help=SUMMARIES["sparsify"],
        description=(
            "Prune weights of MatMul/Gemm/Conv/... to a sparsity pattern (optional) and store every "
            "tensor with at least --min-size elements in a compact format. Without --sparsity the "
            "existing zeros are re-encoded losslessly. Formats other than coo are ordinary "
            "initializers plus a decode subgraph of standard ONNX ops, so any runtime runs the file "
            f"unchanged. Formats: {formats_help}; auto: the smallest per tensor."
        ),
    )
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", required=True, help="where to write the sparse model")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    add_arguments(p, SparsifyOptions)  # every option, generated from the one dataclass
    p.add_argument("--external-data", action="store_true", help="write weights to OUT.data")
    p.add_argument("--report", metavar="FILE", help="also write the full report to FILE (.json, .md or .html)")
    p.set_defaults(func=run)


def _params(model) -> int | None:
    try:
        from ..analysis import count_params
    except ImportError:  # pragma: no cover - analysis is optional for this command
        return None
    try:
        return int(count_params(model))
    except Exception:  # noqa: BLE001 - a count failure must not fail the command
        return None


def _progress(args: argparse.Namespace):
    import sys

    if not progress_enabled(args):
        return None
    from tqdm import tqdm

    return lambda items, total, desc: tqdm(items, total=total, desc=desc, unit="tensor", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..formats import save_model
    from ..io import check_output, load_model, model_file_bytes
    from ..options.cli import from_args
    from ..options.sparsify import SparsifyOptions
    from ..passes.sparsify import sparsify

    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    check_output(args.output, protect=inputs(args), force=args.force,
                 external_data=True if args.external_data else None)  # fail before the work, not after
    config = from_args(SparsifyOptions, args, calib_progress=progress_enabled(args))
    config.resolved()  # fail on bad options before loading the model
    model = load_model(args.model)
    params_before = _params(model)
    report = sparsify(model, config, progress=_progress(args))
    out = save_model(model, args.output, protect=inputs(args), force=args.force,
                     external_data=True if args.external_data else None, source=args.model)
    result: dict[str, Any] = {
        "input": str(args.model),
        "output": str(out),
        "file_bytes_before": model_file_bytes(args.model),
        "file_bytes_after": model_file_bytes(out),
        "params": params_before,
    }
    result.update(report.to_dict())
    emit(args, result, f"onnxsparse sparsify {Path(args.model).name}", lambda: print(render_text(result)))
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render_text(result: dict[str, Any]) -> str:
    rows = sorted(result["tensors"], key=lambda r: -r["bytes_dense"])
    table = [
        [
            r["name"] if len(r["name"]) <= 48 else "..." + r["name"][-45:],
            "x".join(str(d) for d in r["shape"]),
            r["dtype"],
            _pct(r["sparsity"]),
            r["format"] + (f"/{r['decoder']}" if r["decoder"] and r["format"] not in ("dense",) else ""),
            human_bytes(r["bytes_dense"]),
            human_bytes(r["bytes_stored"]),
            f"{r['vs_bound']:.2f}x" if r["vs_bound"] else "-",
        ]
        for r in rows[:TEXT_ROWS]
    ]
    out = [format_table(["tensor", "shape", "dtype", "sparsity", "format", "dense", "stored", "vs bound"], table)]
    if len(rows) > TEXT_ROWS:
        out.append(f"... {len(rows) - TEXT_ROWS} more tensors (see --json or --report)")
    totals = result["totals"]
    out.append("")
    out.append(
        f"tensors {totals['tensors']} (pruned {totals['pruned']})   sparsity {_pct(totals['sparsity'])}   "
        f"formats {', '.join(f'{k} {v}' for k, v in totals['formats'].items()) or '-'}"
    )
    vs_bound = f"{totals['vs_bound']:.3f}x" if totals["vs_bound"] else "-"
    out.append(
        f"weights {human_bytes(totals['bytes_dense'])} dense -> {human_bytes(totals['bytes_stored'])} stored   "
        f"information bound {human_bytes(totals['bound_bytes'])} ({vs_bound})"
    )
    before, after = result["file_bytes_before"], result["file_bytes_after"]
    out.append(
        f"file {human_bytes(before)} -> {human_bytes(after)} ({after / before:.3f}x)   "
        f"opset {result['opset']['before']} -> {result['opset']['after']}   written {result['output']}"
    )
    notes = [r for r in rows if r.get("note")]
    for r in notes[:10]:
        out.append(f"  note: {r['name']}: {r['note']}")
    if len(notes) > 10:
        out.append(f"  ... {len(notes) - 10} more notes")
    for item in result["skipped"][:10]:
        out.append(f"  skipped: {item['name']}: {item['reason']}")
    if len(result["skipped"]) > 10:
        out.append(f"  ... {len(result['skipped']) - 10} more skipped")
    for note in result["notes"]:
        out.append(f"  {note}")
    return "\n".join(out)
