"""``onnxsparse densify MODEL -o OUT``: turn every sparse-stored tensor back into a dense initializer.

Recognises onnxsparse decode subgraphs (by their markers) and ONNX COO
``sparse_initializer`` entries; the output is a plain model, bit-exact with the
sparse one.
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
from ._common import emit, inputs

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..options.cli import add_arguments
    from ..options.densify import DensifyOptions

    p = subparsers.add_parser(
        "densify",
        parents=[common],
        help=SUMMARIES["densify"],
        description=(
            "Replace every onnxsparse decode subgraph (csr, bsr, bitmask, delta, coo) and every ONNX "
            "sparse_initializer by an ordinary dense initializer. The result is bit-exact."
        ),
    )
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", required=True, help="where to write the dense model")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    add_arguments(p, DensifyOptions)  # the operation's options (none yet), generated from the one dataclass
    p.add_argument("--external-data", action="store_true", help="write weights to OUT.data")
    p.add_argument("--report", metavar="FILE", help="also write the result to FILE (.json, .md or .html)")
    p.set_defaults(func=run)


def _coo_count(path: str) -> int:
    import onnx

    proto = onnx.load(path, load_external_data=False)
    return len(proto.graph.sparse_initializer)


def run(args: argparse.Namespace) -> int:
    from ..io import check_output, load_model, load_proto, model_file_bytes, save_model
    from ..options.cli import from_args
    from ..options.densify import DensifyOptions
    from ..passes.densify import DensifyPass, DensifyResult

    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    check_output(args.output, protect=inputs(args), force=args.force,
                 external_data=True if args.external_data else None)  # fail before the work, not after
    load_proto(args.model)  # vet the file first (clear errors for broken input)
    coo = _coo_count(args.model)
    model = load_model(args.model)
    outcome = DensifyPass(from_args(DensifyOptions, args))(model)
    assert isinstance(outcome, DensifyResult)
    expanded = outcome.expanded
    out = save_model(model, args.output, protect=inputs(args), force=args.force,
                     external_data=True if args.external_data else None, source=args.model)
    formats: dict[str, int] = {}
    for fmt in expanded.values():
        formats[fmt] = formats.get(fmt, 0) + 1
    if coo:
        formats["coo (sparse_initializer)"] = coo
    result: dict[str, Any] = {
        "input": str(args.model),
        "output": str(out),
        "densified": len(expanded) + coo,
        "formats": formats,
        "tensors": sorted(expanded),
        "file_bytes_before": model_file_bytes(args.model),
        "file_bytes_after": model_file_bytes(out),
    }

    def show() -> None:
        rows = [[fmt, count] for fmt, count in formats.items()]
        text = format_table(["format", "tensors"], rows) if rows else "no sparse-stored tensors found"
        print(text)
        before, after = result["file_bytes_before"], result["file_bytes_after"]
        print(f"file {human_bytes(before)} -> {human_bytes(after)}   written {out}")

    emit(args, result, f"onnxsparse densify {Path(args.model).name}", show)
    return 0
