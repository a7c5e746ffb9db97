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

from ..errors import UsageError
from ..report import check_report_paths, dump_json, write_report
from . import SUMMARIES
from ._common import add_report_force, inputs, progress_enabled

__all__ = ["register", "run"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..criteria import available_criteria
    from ..executor import default_cache_dir, default_workers
    from ..passes.sensitivity import DEFAULT_RATIOS, DEFAULT_SAMPLES

    default_ratios = ",".join(f"{r:g}" for r in DEFAULT_RATIOS)
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
    p.add_argument("--calib", required=True, metavar="DATA",
                   help="calibration data: .npz keyed by input name (axis 0 = samples), a folder of them, or 'random'")
    p.add_argument("--ratios", default=default_ratios, metavar="R1,R2,...",
                   help=f"fractions of each group's units to remove, each in (0, 1) (default {default_ratios})")
    p.add_argument("--heads", action="store_true", help="only attention head and KV groups")
    p.add_argument("--criterion", choices=available_criteria("structured"), default="l2",
                   help="importance criterion choosing the units removed (default l2)")
    p.add_argument("--calib-samples", type=_positive, default=DEFAULT_SAMPLES, metavar="N",
                   help=f"calibration samples used (default {DEFAULT_SAMPLES})")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0xD1x...",
                   help="input shape for 'random' data and the MAC count (e.g. input_ids=1x128)")
    p.add_argument("--repair", choices=("none", "bias", "lstsq"), default="none",
                   help="measure each entry after the repair prune would apply to that group's consumers "
                        "(prune --target measures its loss table with prune's repair; default none: masked only)")
    p.add_argument("--no-blocks", action="store_true",
                   help="do not measure removing each residual block (x + f(x) -> x) whole")
    p.add_argument("--workers", type=_positive, default=None, metavar="N",
                   help=f"parallel evaluations (local processes, or Ray actors); 1 = in this process "
                        f"(default: up to min(cores, 4) = {default_workers()} processes when the sweep is long "
                        "enough to pay for their start-up; on Ray, the cluster's CPUs)")
    p.add_argument("--executor", default="local", metavar="local|ray[:ADDRESS]",
                   help="where evaluations run: local processes, or Ray (pip install 'onnxsparse[ray]'; "
                        "ray:ADDRESS joins a cluster) (default local)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", metavar="DIR", default=None,
                       help="keep every evaluation in DIR so an interrupted sweep resumes "
                            f"(default {default_cache_dir() / 'sensitivity'})")
    cache.add_argument("--no-cache", action="store_true", help="do not read or write the evaluation cache")
    p.add_argument("--seed", type=int, default=0, help="seed for random data and the random criterion (default 0)")
    p.add_argument("--report", metavar="FILE", help="also write the report to FILE (.json, .md or .html)")
    add_report_force(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..calibration.data import parse_shapes
    from ..executor import default_cache_dir, parse_executor
    from ..graph.kinds import HEAD_KINDS
    from ..passes.sensitivity import parse_ratios, sensitivity

    ratios = parse_ratios(args.ratios)  # one-line UsageError before any work
    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    shapes = parse_shapes(args.shape)

    executor = parse_executor(args.executor)
    cache = None if args.no_cache else (args.cache or default_cache_dir() / "sensitivity")
    report = sensitivity(
        args.model,
        args.calib,
        ratios=ratios,
        criterion=args.criterion,
        samples=args.calib_samples,
        kinds=sorted(HEAD_KINDS) if args.heads else None,
        shapes=shapes or None,
        seed=args.seed,
        progress=progress_enabled(args),
        blocks=not args.no_blocks,
        repair=args.repair,
        workers=args.workers,
        executor=executor,
        cache=cache,
    )
    if args.heads and not report.groups and not any(s.kind in HEAD_KINDS for s in report.skipped):
        raise UsageError(f"--heads: {args.model} has no attention head group")
    data = report.to_dict()
    if args.report:
        write_report(args.report, data, title=f"onnxsparse sensitivity {args.model}", force=args.force)
    if args.json:
        print(dump_json(data))
    else:
        print(report.table())
        if args.report:
            print(f"report written to {args.report}", file=sys.stderr)
    return 0
