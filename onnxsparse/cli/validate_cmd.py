"""``onnxsparse validate REFERENCE CANDIDATE``: does the candidate still do the job, and is it
really smaller and faster where it runs?  Exit 0 when every gate holds, 1 when one fails,
2 on bad input."""

from __future__ import annotations

import argparse

from . import SUMMARIES
from ._common import add_report_force, inputs, print_result, progress_enabled

__all__ = ["register", "run", "add_run_options"]

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


def add_run_options(p: argparse.ArgumentParser, *, multi: bool) -> None:
    """The run options of ``bench`` (``multi``: comma lists for threads/batch).

``validate`` generates its flags from :class:`onnxsparse.options.validate.ValidateOptions`.
"""
    from ..validate.latency import DEFAULT_BUDGET, DEFAULT_MAX_RUNS, DEFAULT_MIN_RUNS
    from ..validate.providers import provider_names

    p.add_argument("--data", default="random",
                   help="an .npz keyed by input name (axis 0 = samples), a folder of them, or 'random' (default)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0xD1...",
                   help="shape of an input with dynamic dims, for random data (repeatable)")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="random data: how many samples (default 8 for validate); files: use at most N")
    p.add_argument("--seed", type=int, default=0, help="seed for random data (default 0)")
    p.add_argument("--providers", default="cpu", metavar="LIST",
                   help=f"execution providers, comma-separated (default cpu): {', '.join(provider_names())}")
    if multi:
        p.add_argument("--threads", default=None, metavar="LIST",
                       help="intra-op thread counts, comma-separated, e.g. 1,2 (default: onnxruntime's)")
        p.add_argument("--batch", default=None, metavar="LIST",
                       help="batch sizes, comma-separated, e.g. 1,8 (default: the model's fixed batch or 1)")
    else:
        p.add_argument("--threads", type=int, default=None, metavar="N",
                       help="intra-op threads (default: onnxruntime's choice)")
        p.add_argument("--batch", type=int, default=None, metavar="N",
                       help="samples per run, for outputs and latency (default: the model's fixed batch or 1)")
    p.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed runs per model first (default 10)")
    timing = p.add_argument_group(
        "timing (default: interleaved rounds until --budget seconds per model, within --min-runs..--max-runs)")
    timing.add_argument("--runs", type=int, default=None, metavar="N",
                        help="exactly N timed runs per model instead of a time budget")
    timing.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="keep timing until the interleaved runs took SECONDS per model "
                             f"(default {DEFAULT_BUDGET:g})")
    timing.add_argument("--min-runs", type=int, default=None, metavar="N",
                        help=f"with the budget: at least N timed runs per model (default {DEFAULT_MIN_RUNS})")
    timing.add_argument("--max-runs", type=int, default=None, metavar="N",
                        help=f"with the budget: at most N timed runs per model (default {DEFAULT_MAX_RUNS})")
    p.add_argument("--session-repeats", type=int, default=3, metavar="N",
                   help="create each session N times, interleaved, and report the fastest (default 3)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory probe (a child process per model and provider, ~0.3 s each)")
    p.add_argument("--report", action="append", default=[], metavar="FILE",
                   help="write a report: .json (stable keys), .md, or .html (charts); repeatable")
    add_report_force(p)


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
    p.add_argument("--report", action="append", default=[], metavar="FILE",
                   help="write a report: .json (stable keys), .md, or .html (charts); repeatable")
    add_report_force(p)
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
