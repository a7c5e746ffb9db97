"""``onnxsparse quantize``: int8 (dynamic/static) or int4 weights, keeping pruned zeros exact."""

from __future__ import annotations

import argparse
import sys

from . import SUMMARIES
from ..calibration.data import parse_shapes
from ..quantize import (
    ACCURACY_LEVELS,
    BLOCK_SIZES,
    CALIBRATION_METHODS,
    FORMATS,
    QUANT_TYPES,
    TARGETS,
    QuantizeConfig,
    format_summary,
    get_mode,
    mode_names,
    quantize,
)
from ..report import check_report_paths, dump_json, write_report
from ._common import inputs, progress_enabled

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
    p.add_argument("--mode", choices=mode_names(), default="dynamic", help="quantization mode (default: dynamic)")
    data = p.add_argument_group("data")
    data.add_argument(
        "--calib", metavar="DATA",
        help="calibration data: .npz keyed by input name, a folder of .npz, or 'random' (needed by static; "
        "dynamic/int4 use it only for the fp32 check)",
    )
    data.add_argument("--shape", action="append", metavar="NAME=D0xD1...", help="input shape for --calib random")
    data.add_argument("--calib-samples", type=int, metavar="N", help="calibration samples to use (default 256)")
    data.add_argument(
        "--calibrate", choices=tuple(CALIBRATION_METHODS), default="minmax",
        help="how activation ranges are chosen (static; default minmax)",
    )
    q = p.add_argument_group("quantization")
    q.add_argument(
        "--format", choices=tuple(FORMATS),
        help="static: qdq (default) or qoperator; int4: qoperator (MatMulNBits, default) or qdq",
    )
    q.add_argument(
        "--per-channel", action=argparse.BooleanOptionalAction, default=None,
        help="one scale per output channel (default: on; --no-per-channel for one scale per tensor)",
    )
    q.add_argument(
        "--reduce-range", action=argparse.BooleanOptionalAction, default=None,
        help="7-bit weights against u8s8 saturation (default: on only for x86 CPUs without VNNI)",
    )
    q.add_argument("--activation-type", choices=tuple(QUANT_TYPES), help="static activations (default uint8 on x86)")
    q.add_argument("--weight-type", choices=tuple(QUANT_TYPES), default="int8", help="int8 weight type (default int8)")
    q.add_argument(
        "--symmetric", dest="weight_symmetric", action=argparse.BooleanOptionalAction, default=True,
        help="symmetric weights (default; 0.0 -> code 0). --no-symmetric uses zero points",
    )
    q.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=32, help="int4 block size along K (default 32)")
    q.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS, help="int4 MatMulNBits compute type (4 = int8)")
    q.add_argument(
        "--exclude", nargs="+", action="extend", default=[], metavar="NODE",
        help="node names (or glob patterns) to keep in float",
    )
    q.add_argument("--min-weight-elements", type=int, default=0, metavar="N", help="keep weights smaller than N in float")
    q.add_argument("--target", choices=list(TARGETS), default=None, metavar="CPU",
                   help="quantize for this deployment CPU instead of the one running the command "
                        f"({', '.join(TARGETS)}; optimum's preset names): sets reduce_range and the activation type")
    q.add_argument("--max-node-error", type=float, default=None, metavar="E",
                   help="mixed precision: keep in float every node whose quantization adds more than E relative "
                        "L2 error to its output on the check data (measured, then quantized once more)")
    q.add_argument("--no-preprocess", dest="preprocess", action="store_false", help="skip quant_pre_process")
    out = p.add_argument_group("output")
    out.add_argument("--no-check", dest="check", action="store_false", help="do not compare with fp32 on this CPU")
    out.add_argument("--report", metavar="FILE", help="write the report (.json, .md or .html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    config = QuantizeConfig(
        mode=args.mode,
        format=args.format,
        per_channel=args.per_channel,
        reduce_range=args.reduce_range,
        calibrate=args.calibrate,
        calib_samples=args.calib_samples,
        activation_type=args.activation_type,
        weight_type=args.weight_type,
        weight_symmetric=args.weight_symmetric,
        exclude=tuple(args.exclude),
        min_weight_elements=args.min_weight_elements,
        block_size=args.block_size,
        accuracy_level=args.accuracy_level,
        preprocess=args.preprocess,
        max_node_error=args.max_node_error,
        target=args.target,
    )
    result = quantize(
        args.model,
        args.output,
        calib=args.calib,
        shapes=parse_shapes(args.shape),
        config=config,
        force=args.force,
        check=args.check,
        progress=progress_enabled(args),
    )
    report = result.report
    data = report.as_dict()
    if args.report:
        write_report(args.report, data, title=f"onnxsparse quantize: {report.mode}", force=args.force)
    if args.json:
        print(dump_json(data))
    else:
        print(format_summary(report))
    if not report.passed:
        for failure in report.failures:
            print(f"onnxsparse quantize: {failure} (the model was written for inspection)"
                  if report.output else f"onnxsparse quantize: {failure}", file=sys.stderr)
        return 1
    return 0
