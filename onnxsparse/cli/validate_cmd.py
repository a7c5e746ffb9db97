"""``onnxsparse validate REFERENCE CANDIDATE``: does the candidate still do the job, and is it
really smaller and faster where it runs?  Exit 0 when every gate holds, 1 when one fails,
2 on bad input."""

from __future__ import annotations

import argparse

from . import SUMMARIES
from ._common import add_report_options, inputs, print_result, progress_enabled

__all__ = ["register", "run"]

DESCRIPTION = """Compare a transformed model (candidate) with the original (reference): output fidelity,
task accuracy, latency, session time, memory and size on each execution provider.
Exit 0 when every threshold holds, 1 when one fails, 2 on bad input."""

EPILOG = """\
exit codes: 0 the candidate meets every threshold, 1 it does not, 2 bad input.
examples:
  onnxsparse validate model.onnx pruned.onnx --data test.npz --labels labels.npy \\
      --max-accuracy-drop 0.01 --max-latency-ratio 0.9 --report report.html
  onnxsparse validate model.onnx q.onnx --providers cpu,cuda --min-cosine 0.99 --json
"""


def register(subparsers, common) -> None:
    from ..options.cli import add_arguments
    from ..options.validate import ValidateOptions

    p = subparsers.add_parser(
        "validate", parents=[common], help=SUMMARIES["validate"],
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("reference", help="the original model (.onnx)")
    p.add_argument("candidate", help="the transformed model (.onnx)")
    add_arguments(p, ValidateOptions)  # every option and gate, generated from the one dataclass (= recipe step)
    add_report_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..options.cli import from_args
    from ..options.validate import ValidateOptions
    from ..validate import render_text, save_report, validate
    from ..validate.reports import check_report_paths

    check_report_paths(args.report, force=args.force, protect=inputs(args))
    options = from_args(ValidateOptions, args)
    result = validate(args.reference, args.candidate, progress=progress_enabled(args), **options.validate_kwargs())
    for path in args.report:
        save_report(path, result, force=args.force)
    print_result(args, result, render_text, args.report)
    return 0 if result.passed else 1
