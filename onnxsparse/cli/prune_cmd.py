"""``onnxsparse prune MODEL -o OUT --channels RATIO``: structured channel pruning.

Removes the lowest-scoring ``RATIO`` of the channels of every prunable group
(conv filters / linear output channels and everything tied to them), writes a
smaller dense model with the same input/output signature, and prints params,
MACs and bytes before/after, the groups pruned and the groups skipped with the
reason.  ``--json`` prints the report instead; ``--report FILE`` writes it.

With ``--calib DATA`` activations are captured with onnxruntime: the
data-driven criteria (``activation``, ``wanda``, ``flap``) can score channels,
and the layers that lost inputs are repaired (``--repair bias|lstsq``,
sequentially by default), with per-layer errors in the report.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import SUMMARIES
from ..report import check_report_paths
from ..options.cli import add_arguments, from_args
from ..options.prune import PruneOptions, criteria
from ._common import emit, inputs, progress_enabled

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..criteria import get_criterion

    p = subparsers.add_parser(
        "prune",
        parents=[common],
        help=SUMMARIES["prune"],
        description=(
            "Structured pruning across the whole graph: channels tied together (BatchNorm, residual "
            "adds, Concat, Flatten->Gemm, grouped convs, ...) are removed together. RATIO is the "
            "fraction of channels removed from every prunable group. Groups touching a graph "
            "input/output or an op without a rule are skipped, with the reason."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="criteria:\n" + "\n".join(f"  {n:10s} {get_criterion(n).description}" for n in criteria())
        + "\n\nrepairs (--repair, need --calib):\n"
        "  none       remove channels only\n"
        "  bias       add W[:, removed] @ mean(x_removed) to the consumer's bias (FLAP)\n"
        "  lstsq      least-squares re-fit of the consumer's kept weights and bias (default with --calib)",
    )
    p.add_argument("model", help="the .onnx file to prune")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.add_argument("--report", metavar="FILE", help="also write the report to FILE (.json, .md or .html)")
    add_arguments(p, PruneOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse, check the paths, prune, save, print: the work is :func:`~onnxsparse.passes.prune.run_prune`."""
    from ..io import check_output, model_file_bytes, save_model
    from ..passes.prune import run_prune

    options = from_args(PruneOptions, args)
    if options.max_accuracy_drop is not None:
        return _run_budget(args, options)
    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    check_output(args.output, protect=inputs(args), force=args.force)  # fail before the work, not after
    # a path: when nothing is removed, the input is handed back exactly as it was
    result = run_prune(args.model, options, progress=progress_enabled(args))
    report = result.report
    out = save_model(result.model, args.output, protect=inputs(args), force=args.force, source=args.model)
    report.file_bytes_before = model_file_bytes(args.model)
    report.file_bytes_after = model_file_bytes(out)
    data: dict[str, Any] = {"input": str(args.model), "output": str(out), **report.to_dict()}
    if options.threshold is not None:
        data["threshold"] = options.threshold
    if result.heads is not None:
        data["heads"] = result.heads

    def show() -> None:
        print(f"pruned {args.model} -> {out} ({report.criterion}; {'; '.join(_what(options))})")
        print(report.summary())
        if result.heads is not None:
            from ..passes.prune_heads import report_table

            print()
            print(report_table(result.heads))

    emit(args, data, f"onnxsparse prune {args.model}", show)
    return 0


def _what(options: PruneOptions) -> list[str]:
    """What was asked for, in words: ``channels 0.3, global; heads 0.25``."""
    what = ["dead units first"] if options.dead else []
    if options.channels is not None:
        what.append(f"channels {options.channels:g}" + (", global" if options.global_ranking else ""))
    what += [f"{k} {r:g}" for k, r in (("heads", options.heads), ("ffn", options.ffn)) if r]
    what += [f"score < {options.threshold:g}"] if options.threshold is not None else []
    if options.target is not None:
        what.append(f"target {options.target}")
    return what


def _run_budget(args: argparse.Namespace, options: PruneOptions) -> int:
    """``--max-accuracy-drop``: :func:`~onnxsparse.passes.budget.run_budget`, then save and print."""
    from ..io import check_output, save_model
    from ..passes.budget import run_budget
    from ..validate import render_text as validation_text

    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    check_output(args.output, protect=inputs(args), force=args.force)
    outcome = run_budget(args.model, options, validate_progress=progress_enabled(args), progress=(lambda t: print(
        f"  fraction {t.fraction:.3f}: {options.metric} {t.metric:.4f} (drop {t.drop:+.4f})", file=sys.stderr))
        if progress_enabled(args) else None)
    found = outcome.search
    data: dict[str, Any] = {"input": str(args.model), "objective": options.target or "macs",
                            "search": found.to_dict()}
    held = len(found.held_out[1]) if found.held_out is not None else 0
    if outcome.model is not None:
        out = save_model(outcome.model, args.output, protect=inputs(args), force=args.force, source=args.model)
        data.update(output=str(out), validation=outcome.validation.to_dict())

    def show() -> None:
        print(found.table())
        if outcome.validation is not None:
            print()
            print(f"wrote {data['output']}; checked on the {held} held-out samples:")
            print(validation_text(outcome.validation))

    emit(args, data, f"onnxsparse prune {args.model} --max-accuracy-drop", show)
    if outcome.model is None:
        print(f"onnxsparse: no pruned model kept {options.metric} within {options.max_accuracy_drop:g}; nothing written",
              file=sys.stderr)
        return 1
    if not outcome.passed:  # the search split promised more than the unseen data keeps
        assert found.holdout is not None  # measured with the kept model's validation
        print(f"onnxsparse: the winner loses {found.holdout['drop']:.4f} {options.metric} on the "
              f"{held} held-out samples, over the budget {options.max_accuracy_drop:g} it kept on the "
              "search split: give more labelled data or a smaller budget", file=sys.stderr)
        return 1
    return 0
