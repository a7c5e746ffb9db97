"""``onnxsparse bench MODEL [MODEL ...]``: latency, throughput, session time and peak memory
across execution providers, thread counts and batch sizes, as one table."""

from __future__ import annotations

import argparse

from . import SUMMARIES
from ..calibration.data import parse_shapes
from ._common import inputs, print_result, progress_enabled
from .validate_cmd import add_run_options

__all__ = ["register", "run"]

DESCRIPTION = """Latency, throughput, session time and peak memory of one or more models across execution
providers, thread counts and batch sizes, timed interleaved."""

EPILOG = """\
examples:
  onnxsparse bench model.onnx pruned.onnx --threads 1,2 --batch 1,8
  onnxsparse bench model.onnx --providers cpu,cuda --report bench.html
"""


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "bench", parents=[common], help=SUMMARIES["bench"],
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="one or more .onnx files (timed interleaved)")
    add_run_options(p, multi=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..validate import bench, render_text, save_report
    from ..validate.reports import check_report_paths

    check_report_paths(args.report, force=args.force, protect=inputs(args))
    result = bench(
        args.models,
        data=args.data,
        shapes=parse_shapes(args.shape),
        samples=args.samples,
        seed=args.seed,
        providers=args.providers,
        threads=args.threads,
        batches=args.batch,
        warmup=args.warmup,
        runs=args.runs,
        budget=args.budget,
        min_runs=args.min_runs,
        max_runs=args.max_runs,
        memory=args.memory,
        session_repeats=args.session_repeats,
        progress=progress_enabled(args),
    )
    for path in args.report:
        save_report(path, result, force=args.force)
    print_result(args, result, render_text, args.report)
    return 0
