"""``onnxsparse validate REFERENCE CANDIDATE``: does the candidate still do the job, and is it
really smaller and faster where it runs?  Exit 0 when every gate holds, 1 when one fails,
2 on bad input."""

from __future__ import annotations

import argparse

from . import SUMMARIES
from ..calibration.data import parse_shapes
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
    """Options ``validate`` and ``bench`` share (``multi``: comma lists for threads/batch)."""
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
    from ..validate.metrics import METRICS
    from ..validate.thresholds import THRESHOLDS

    p = subparsers.add_parser(
        "validate", parents=[common], help=SUMMARIES["validate"],
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("reference", help="the original model (.onnx)")
    p.add_argument("candidate", help="the transformed model (.onnx)")
    add_run_options(p, multi=False)
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="one label per data sample: .npy of ints, or .npz with one array")
    p.add_argument("--metric", action="append", default=None, metavar="NAME",
                   help=f"task metric(s) with --labels: {', '.join(METRICS)} or module:function "
                        "(default top1; comma-separated or repeatable)")
    p.add_argument("--label-output", default=None, metavar="NAME",
                   help="reference output the metrics score (default: the first output)")
    p.add_argument("--output-map", action="append", default=[], metavar="REF=CAND",
                   help="pair a reference output with a differently named candidate output (repeatable)")
    p.add_argument("--noise", type=float, default=None, metavar="SIGMA",
                   help="also run both models on inputs with Gaussian noise of SIGMA x each float input's std "
                        "(fixed --seed) and report fidelity and accuracy under noise beside the clean numbers")
    p.add_argument("--require-providers", action="store_true",
                   help="fail (exit 1) when a requested provider is unavailable instead of only reporting it")
    gates = p.add_argument_group("thresholds (exit 1 when one is not met)")
    for threshold in THRESHOLDS.values():
        gates.add_argument(threshold.flag, dest=f"limit_{threshold.name}", type=float, default=None,
                           metavar="X", help=threshold.help)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..validate import render_text, save_report, validate
    from ..validate.reports import check_report_paths
    from ..validate.thresholds import THRESHOLDS

    check_report_paths(args.report, force=args.force, protect=inputs(args))
    limits = {name: getattr(args, f"limit_{name}") for name in THRESHOLDS}
    result = validate(
        args.reference,
        args.candidate,
        data=args.data,
        labels=args.labels,
        metrics=args.metric,
        label_output=args.label_output,
        providers=args.providers,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        budget=args.budget,
        min_runs=args.min_runs,
        max_runs=args.max_runs,
        batch=args.batch,
        shapes=parse_shapes(args.shape),
        samples=args.samples,
        seed=args.seed,
        output_map=args.output_map,
        memory=args.memory,
        session_repeats=args.session_repeats,
        thresholds={k: v for k, v in limits.items() if v is not None},
        require_providers=args.require_providers,
        progress=progress_enabled(args),
        noise=args.noise,
    )
    for path in args.report:
        save_report(path, result, force=args.force)
    print_result(args, result, render_text, args.report)
    return 0 if result.passed else 1
