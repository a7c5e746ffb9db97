"""``onnxsparse quantize``: int8 (dynamic/static) or int4 weights, keeping pruned zeros exact."""

from __future__ import annotations

import argparse
import sys

from . import SUMMARIES
from ..options.cli import add_arguments, from_args
from ..quantize import QuantizeConfig, format_summary, get_mode, mode_names, run_quantize
from ..report import check_report_paths
from ._common import emit, inputs, progress_enabled

__all__ = ["register", "run"]

_EPILOG = """\
examples:
  onnxsparse quantize model.onnx -o q.onnx --mode dynamic
  onnxsparse quantize model.onnx -o q.onnx --mode static --calib calib.npz
  onnxsparse quantize model.onnx -o q.onnx --mode static --calib random --shape input=1x3x224x224
  onnxsparse quantize model.onnx -o q.onnx --mode int4 --block-size 32
  onnxsparse quantize pruned.onnx -o q.onnx --mode static --calib calib.npz --report q.md

Weights are quantized symmetrically by default, so pruned zeros stay exact zeros
(checked after every run).  --reduce-range turns on by itself on x86 CPUs without VNNI.
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    modes = "; ".join(f"{name}: {get_mode(name).help}" for name in mode_names())
    p = subparsers.add_parser(
        "quantize",
        parents=[common],
        help=SUMMARIES["quantize"],
        description="Quantize with onnxruntime.quantization. Modes: " + modes,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="input .onnx model")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized model")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    groups = {name: p.add_argument_group(name) for name in ("data", "quantization", "output")}
    add_arguments(p, QuantizeConfig, groups=groups)  # every option, generated from the one dataclass
    groups["output"].add_argument("--report", metavar="FILE", help="write the report (.json, .md or .html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    result = run_quantize(args.model, args.output, from_args(QuantizeConfig, args), force=args.force,
                          progress=progress_enabled(args))
    report = result.report
    data = report.as_dict()
    emit(args, data, f"onnxsparse quantize: {report.mode}", lambda: print(format_summary(report)))
    if not report.passed:
        for failure in report.failures:
            print(f"onnxsparse quantize: {failure} (the model was written for inspection)"
                  if report.output else f"onnxsparse quantize: {failure}", file=sys.stderr)
        return 1
    return 0
