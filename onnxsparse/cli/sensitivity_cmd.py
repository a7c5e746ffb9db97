"""``onnxsparse sensitivity MODEL --calib DATA``: how much each prunable group hurts when pruned alone.

For every prunable group (channels, heads, KV groups, FFN neurons) and every ratio of
``--ratios``, the lowest-scoring units of that group alone are masked out and the model is
run with onnxruntime on the calibration samples; the table lists the output error (relative
MSE) per ratio and the MACs the removal saves, least sensitive groups first.  Skipped groups
are listed with their reason.  Every residual block (``x + f(x)``) is also removed whole and
measured (``--no-blocks``: not).  Evaluations run in ``--workers`` local processes or on Ray
(``--executor ray[:ADDRESS]``) and are cached (``--cache DIR``, ``--no-cache``) so an interrupted
sweep resumes.  ``--json`` prints the whole report; ``--report FILE`` writes it.
See docs/sensitivity.md.
"""

from __future__ import annotations

import argparse
import sys

from ..options.cli import add_arguments, from_args
from ..options.sensitivity import SensitivityOptions
from ..report import check_report_paths
from . import SUMMARIES
from ._common import add_report_force, emit, inputs, progress_enabled

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "sensitivity",
        parents=[common],
        help=SUMMARIES["sensitivity"],
        description=(
            "For every prunable group and every ratio, remove that fraction of the group's lowest-scoring "
            "units alone (the rest of the model intact), run the model on the calibration data and report "
            "the output error against the original model (relative MSE; cosine in --json) and the MACs "
            "saved; the same for every residual block removed whole. One onnxruntime session per (group, ratio) "
            "and per block, run in parallel (--workers, --executor) and cached on disk (--cache)."
        ),
    )
    p.add_argument("model", help="the .onnx file to analyse (not modified)")
    add_arguments(p, SensitivityOptions)
    p.add_argument("--report", metavar="FILE", help="also write the report to FILE (.json, .md or .html)")
    add_report_force(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse, check the paths, measure, print: the work is :func:`~onnxsparse.passes.sensitivity.run_sensitivity`."""
    from ..passes.sensitivity import run_sensitivity

    options = from_args(SensitivityOptions, args)
    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    report = run_sensitivity(args.model, options, progress=progress_enabled(args))
    data = report.to_dict()

    def show() -> None:
        print(report.table())
        if args.report:
            print(f"report written to {args.report}", file=sys.stderr)

    emit(args, data, f"onnxsparse sensitivity {args.model}", show)
    return 0
