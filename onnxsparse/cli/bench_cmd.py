"""``onnxsparse bench MODEL [MODEL ...]``: latency, throughput, session time and peak memory
across execution providers, thread counts and batch sizes, as one table."""

from __future__ import annotations

import argparse

from . import SUMMARIES
from ._common import add_report_options, inputs, print_result, progress_enabled

__all__ = ["register", "run"]

DESCRIPTION = """Latency, throughput, session time and peak memory of one or more models across execution
providers, thread counts and batch sizes, timed interleaved."""

EPILOG = """\
examples:
  onnxsparse bench model.onnx pruned.onnx --threads 1,2 --batch 1,8
  onnxsparse bench model.onnx --providers cpu,cuda --report bench.html
"""


def register(subparsers, common) -> None:
    from ..options.bench import BenchOptions
    from ..options.cli import add_arguments

    p = subparsers.add_parser(
        "bench", parents=[common], help=SUMMARIES["bench"],
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="one or more .onnx files (timed interleaved)")
    add_arguments(p, BenchOptions)  # every option, generated from the one dataclass the API reads too
    add_report_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..options.bench import BenchOptions
    from ..options.cli import from_args
    from ..validate import render_text, save_report
    from ..validate.bench import run_bench
    from ..validate.reports import check_report_paths

    check_report_paths(args.report, force=args.force, protect=inputs(args))
    options = from_args(BenchOptions, args)
    result = run_bench(args.models, options, progress=progress_enabled(args))
    for path in args.report:
        save_report(path, result, force=args.force)
    print_result(args, result, render_text, args.report)
    return 0
