"""``onnxsparse sparsify MODEL -o OUT``: zero weights by a pattern and store them compactly.

Without ``--sparsity`` (and without an N:M pattern or ``--ratio``) nothing is
pruned: the zeros already present are re-encoded, losslessly.  The output runs
unchanged in onnxruntime (decode subgraphs of standard ops, folded at session
creation); ``onnxsparse densify`` turns it back into a plain model.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from . import SUMMARIES
from ..errors import UsageError
from ..report import (
    check_report_paths,
    dump_json,
    format_table,
    human_bytes,
    write_report,
)
from ._common import inputs, progress_enabled

__all__ = ["register", "run", "parse_ratio", "parse_block", "parse_target"]

#: tensors listed in the text table (the full list is in --json / --report)
TEXT_ROWS = 30


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..formats import AUTO_SLACK, FORMATS, format_choices
    from ..calibration.data import DEFAULT_CALIB_SAMPLES
    from ..passes.sparsify import DEFAULT_MIN_SIZE
    from ..criteria import available_criteria
    from ..sparsity import pattern_help
    from ..sparsity.allocate import ALLOCATORS, AUTO, DEFAULT_ALLOCATOR, OWL_LAMBDA, OWL_THRESHOLD

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
    p.add_argument("--sparsity", type=float, metavar="R",
                   help="fraction of weights to zero (0..1): in each tensor, or their parameter-weighted "
                        "average with --allocate; omit for a lossless re-encode")
    p.add_argument("--pattern", default="unstructured", metavar="P", help=f"sparsity pattern: {pattern_help()}")
    p.add_argument("--criterion", default="magnitude", choices=available_criteria("elementwise"),
                   help="how weights are scored (default magnitude)")
    p.add_argument("--format", default="auto", choices=format_choices(),
                   help="storage format (default auto: the smallest per tensor)")
    p.add_argument("--auto-slack", type=float, default=AUTO_SLACK, metavar="F",
                   help=f"auto: take the format cheapest to decode within this fraction of the smallest "
                        f"(default {AUTO_SLACK}; 0.08 picks delta over bitmask near 50%% sparsity: ~6%% larger, "
                        f"session creation ~2x faster)")
    p.add_argument("--global", dest="global_scope", action="store_true",
                   help="one magnitude threshold across all tensors instead of per tensor")
    p.add_argument("--target", metavar="size=R",
                   help="instead of --sparsity: the smallest average sparsity whose written model is at most "
                        "R x the input file (e.g. size=0.3), predicted by encoding each tensor; spread over the "
                        "tensors by --allocate")
    p.add_argument("--allocate", default=DEFAULT_ALLOCATOR, choices=(AUTO, *ALLOCATORS),
                   help="spread --sparsity over the tensors, keeping it the parameter-weighted average: "
                        "uniform (every tensor R), owl (less sparsity where weights/activations have "
                        "outliers; data-free without --calib), sensitivity (measured output error of each "
                        "tensor pruned alone; needs --calib); auto (default): sensitivity with --calib, "
                        "else uniform")
    p.add_argument("--owl-lambda", type=float, default=OWL_LAMBDA, metavar="L",
                   help=f"owl: ratios span 2L around R (default {OWL_LAMBDA})")
    p.add_argument("--owl-threshold", type=float, default=OWL_THRESHOLD, metavar="M",
                   help=f"owl: an outlier scores above M x its tensor's mean (default {OWL_THRESHOLD:g})")
    p.add_argument("--ratio", action="append", default=[], metavar="GLOB=R",
                   help="per-layer sparsity for tensors/nodes matching GLOB (repeatable, first match wins)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave tensors (or tensors read by nodes) matching GLOB dense and unpruned (repeatable)")
    p.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE, metavar="N",
                   help=f"tensors with fewer elements stay dense (default {DEFAULT_MIN_SIZE})")
    p.add_argument("--block", metavar="RxC", help="BSR block shape (default: chosen per tensor)")
    p.add_argument("--decoder", action="append", default=[], metavar="FORMAT=VARIANT",
                   help="decode-graph variant (repeatable): " + ", ".join(
                       f"{name}={'|'.join(FORMATS.get(name).decoders)}" for name in format_choices()[1:]
                       if len(FORMATS.get(name).decoders) > 1))
    cal = p.add_argument_group("calibration (activation-aware criteria: --criterion wanda)")
    cal.add_argument("--calib", metavar="DATA",
                     help="calibration data: .npz keyed by input name (axis 0 = samples), a folder of them, or 'random'")
    cal.add_argument("--calib-samples", type=int, default=DEFAULT_CALIB_SAMPLES, metavar="N",
                     help=f"calibration samples used (default {DEFAULT_CALIB_SAMPLES})")
    cal.add_argument("--shape", action="append", default=[], metavar="NAME=D0xD1x...",
                     help="input shape for dynamic dims of --calib random (repeatable)")
    p.add_argument("--no-raise-opset", action="store_true",
                   help="never raise the model's opset for a decode graph (older decode graphs or dense instead)")
    p.add_argument("--no-normalize", action="store_true",
                   help="do not lift Constant weights / fold ConstantOfShape weights first")
    p.add_argument("--external-data", action="store_true", help="write weights to OUT.data")
    p.add_argument("--report", metavar="FILE", help="also write the full report to FILE (.json, .md or .html)")
    p.set_defaults(func=run)


def parse_ratio(item: str) -> tuple[str, float]:
    glob, sep, value = item.rpartition("=")
    if not sep or not glob:
        raise UsageError(f"bad --ratio {item!r}: expected GLOB=R (e.g. 'layer4.*=0.9')")
    try:
        return glob, float(value)
    except ValueError:
        raise UsageError(f"bad --ratio {item!r}: {value!r} is not a number") from None


def parse_target(text: str | None) -> float | None:
    """``size=R`` -> R (the only target so far: the written file as a fraction of the input)."""
    if text is None:
        return None
    key, sep, value = text.partition("=")
    if not sep or key.strip() != "size":
        raise UsageError(f"bad --target {text!r}: expected size=R (e.g. size=0.3)")
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"bad --target {text!r}: {value!r} is not a number") from None


def parse_block(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"bad --block {text!r}: expected RxC (e.g. 4x4)")
    return int(match.group(1)), int(match.group(2))


def _decoders(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        fmt, sep, variant = item.partition("=")
        if not sep:
            raise UsageError(f"bad --decoder {item!r}: expected FORMAT=VARIANT (e.g. bitmask=gather)")
        out[fmt.strip()] = variant.strip()
    return out


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
    from ..calibration.data import parse_shapes
    from ..formats import save_model
    from ..io import check_output, load_model, model_file_bytes
    from ..passes.sparsify import SparsifyConfig, sparsify

    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    check_output(args.output, protect=inputs(args), force=args.force,
                 external_data=True if args.external_data else None)  # fail before the work, not after
    config = SparsifyConfig(
        sparsity=args.sparsity,
        pattern=args.pattern,
        criterion=args.criterion,
        format=args.format,
        global_scope=args.global_scope,
        allocate=args.allocate,
        target_size=parse_target(args.target),
        owl_lambda=args.owl_lambda,
        owl_threshold=args.owl_threshold,
        ratios=[parse_ratio(item) for item in args.ratio],
        exclude=list(args.exclude),
        min_size=args.min_size,
        block=parse_block(args.block),
        decoders=_decoders(args.decoder),
        auto_slack=args.auto_slack,
        raise_opset=not args.no_raise_opset,
        normalize=not args.no_normalize,
        calib=args.calib,
        calib_samples=args.calib_samples,
        shapes=parse_shapes(args.shape) or None,
        calib_progress=progress_enabled(args),
    )
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
    if args.report:
        write_report(args.report, result, title=f"onnxsparse sparsify {Path(args.model).name}", force=args.force)
    if args.json:
        print(dump_json(result))
    else:
        print(render_text(result))
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
