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
from ..errors import UsageError
from ..report import check_report_paths, dump_json, write_report
from ._common import inputs, progress_enabled

__all__ = ["register", "run"]


def _parse(text: str, kind: type, what: str):
    """``kind(text)``, or the argparse error ``not <what>: 'text'``."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def _ratio(text: str) -> float:
    value = _parse(text, float, "a number")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _positive(text: str) -> int:
    value = _parse(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _round_to(text: str) -> int | str:
    """``auto`` or an integer >= 1 (the prune pass checks the same; this keeps argparse's one-line error)."""
    return "auto" if text.strip().lower() == "auto" else _positive(text)


def _damp(text: str) -> float:
    value = _parse(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _threshold(text: str) -> float:
    value = _damp(text)
    if value == float("inf"):
        raise argparse.ArgumentTypeError("must be finite")
    return value




def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..criteria import available_criteria, get_criterion
    from ..passes.prune import DEFAULT_CALIB_SAMPLES, DEFAULT_CRITERION, DEFAULT_DATA_CRITERION
    from ..passes.reconstruct import DEFAULT_DAMP, REPAIRS

    criteria = available_criteria("structured")
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
        epilog="criteria:\n" + "\n".join(f"  {n:10s} {get_criterion(n).description}" for n in criteria)
        + "\n\nrepairs (--repair, need --calib):\n"
        "  none       remove channels only\n"
        "  bias       add W[:, removed] @ mean(x_removed) to the consumer's bias (FLAP)\n"
        "  lstsq      least-squares re-fit of the consumer's kept weights and bias (default with --calib)",
    )
    p.add_argument("model", help="the .onnx file to prune")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.add_argument("--channels", type=_ratio, metavar="RATIO", help="fraction of channels to remove per group, in [0, 1)")
    p.add_argument("--threshold", type=_threshold, metavar="T",
                   help="instead of a ratio: remove every unit whose raw criterion score is below T in every "
                        "prunable group (after group-lasso training: 1e-8; `inspect` shows the score histogram)")
    p.add_argument("--target", metavar="METRIC=R",
                   help="instead of ratios: keep fraction R of the original's macs, params or latency (e.g. "
                        "macs=0.7), with per-group widths allocated on a loss table measured on --calib and the "
                        "result verified by measuring it (see docs/prune.md, Targets)")
    p.add_argument("--criterion", choices=criteria, default=None,
                   help=f"importance criterion (default {DEFAULT_CRITERION}; {DEFAULT_DATA_CRITERION} with --calib)")
    p.add_argument("--global", dest="global_ranking", action="store_true",
                   help="rank channels across groups (scores normalised per group) instead of the same ratio everywhere")
    p.add_argument("--round-to", type=_round_to, default="auto", metavar="N|auto",
                   help="keep channel counts multiples of N; auto (default): multiples of this CPU's blocked "
                        "Conv kernel width (16 with AVX-512, 8 with AVX2) for the groups that width already, "
                        "so the pruned model stays on onnxruntime's fast kernels")
    p.add_argument("--min-keep", type=_positive, default=1, metavar="N", help="channels every group keeps (default 1)")
    p.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="NODE",
                   help="node names whose outputs keep every channel")
    p.add_argument("--seed", type=int, default=0, help="seed for the random criterion (default 0)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0xD1x...",
                   help="input shape for the MAC count (symbolic dims count as 1 otherwise)")
    p.add_argument("--report", metavar="FILE", help="also write the report to FILE (.json, .md or .html)")
    cal = p.add_argument_group("calibration (activation-aware criteria and repairs)")
    cal.add_argument("--calib", metavar="DATA",
                     help="calibration data: .npz keyed by input name (axis 0 = samples), a folder of them, or 'random'")
    cal.add_argument("--calib-samples", type=_positive, default=DEFAULT_CALIB_SAMPLES, metavar="N",
                     help=f"calibration samples used (default {DEFAULT_CALIB_SAMPLES})")
    cal.add_argument("--repair", choices=REPAIRS, default=None,
                     help="repair the layers that lost inputs (default lstsq with --calib, none without)")
    order = cal.add_mutually_exclusive_group()
    order.add_argument("--sequential", dest="sequential", action="store_true", default=None,
                       help="repair layer by layer on the already-repaired model's activations (default; "
                            "one calibration pass per stage)")
    order.add_argument("--one-shot", dest="sequential", action="store_false",
                       help="repair every layer from the original activations (one pass; faster, less accurate)")
    cal.add_argument("--dead", action="store_true",
                     help="first remove the units that are dead (always 0) or constant on --calib, exactly: "
                          "constants are folded into the consumers' biases (docs/activations.md); --channels "
                          "then applies to what remains")
    cal.add_argument("--damp", type=_damp, default=DEFAULT_DAMP, metavar="F",
                     help=f"lstsq ridge: lambda = F * mean(diag(X X^T)) (default {DEFAULT_DAMP:g})")
    budget = p.add_argument_group("accuracy budget (instead of a ratio or a target fraction)")
    budget.add_argument("--max-accuracy-drop", type=_damp, metavar="X", default=None,
                        help="prune as far as the task metric on --data/--labels drops by at most X (e.g. 0.01): "
                             "bisects --target OBJECTIVE=f (OBJECTIVE from --target macs|params|latency, default "
                             "macs) and checks the winner on a held-out part of the data")
    budget.add_argument("--data", metavar="DATA", help="labelled data for --max-accuracy-drop (.npz, folder)")
    budget.add_argument("--labels", metavar="LABELS", help="labels of --data (.npy or .npz), one per sample")
    budget.add_argument("--metric", default="top1", metavar="NAME",
                        help="task metric: top1, top5 or module:function (default top1)")
    budget.add_argument("--label-output", metavar="NAME", help="the output the labels score (default: the first)")
    budget.add_argument("--holdout", type=float, default=0.3, metavar="F",
                        help="fraction of --data held out from the search to check the winner (default 0.3)")
    from ..passes.prune_heads import add_cli_arguments

    add_cli_arguments(p)  # --heads / --ffn: groups of the same analysis (onnxsparse/graph/kinds.py)
    p.set_defaults(func=run)


def _check_target(args: argparse.Namespace) -> None:
    """``--target`` allocates every ratio itself and measures its loss table on ``--calib``."""
    if args.target is None:
        return
    from ..passes.prune_target import parse_target

    parse_target(args.target)
    given = [flag for flag, value in (("--channels", args.channels), ("--heads", args.heads or None),
                                      ("--ffn", args.ffn), ("--global", args.global_ranking or None))
             if value is not None]
    if given:
        raise UsageError(f"--target allocates the per-group ratios itself: drop {', '.join(given)}")
    if args.calib is None:
        raise UsageError(f"--target {args.target} needs calibration data (--calib DATA): the per-group loss "
                         "table is measured on it")


def run(args: argparse.Namespace) -> int:
    from ..passes import prune_heads as heads_module
    from ..calibration.data import parse_shapes
    from ..io import check_output, model_file_bytes, save_model
    from ..passes.prune import default_criterion, prune

    wants_heads = bool(args.heads or args.ffn)
    if args.max_accuracy_drop is not None:
        return _run_budget(args)
    if args.data is not None or args.labels is not None:
        raise UsageError("--data/--labels are for --max-accuracy-drop (calibration data is --calib)")
    _check_target(args)
    if args.channels is None and not wants_heads and args.threshold is None and args.target is None and not args.dead:
        raise UsageError("nothing to prune: give --channels RATIO (or --heads / --ffn, --target METRIC=R, "
                         "--threshold T, --dead)")
    if args.threshold is not None and (args.channels is not None or wants_heads or args.target is not None):
        raise UsageError("--threshold replaces the ratios: give --threshold or --channels/--heads/--ffn/--target, "
                         "not both")
    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    check_output(args.output, protect=inputs(args), force=args.force)  # fail before the work, not after
    shapes = parse_shapes(args.shape)
    criterion = args.criterion or default_criterion(args.calib is not None)
    if args.calib is None:
        if args.repair not in (None, "none"):
            raise UsageError(f"--repair {args.repair} needs calibration data: give --calib DATA")
        if args.sequential:
            raise UsageError("--sequential needs calibration data: give --calib DATA")
    repair = args.repair or ("lstsq" if args.calib else "none")
    sequential = None if args.sequential is None else bool(args.sequential)
    progress = progress_enabled(args)
    result = prune(
        args.model,  # a path: when nothing is removed, prune hands back the input exactly as it was
        args.channels or 0.0,
        heads=args.heads,
        ffn=args.ffn,
        criterion=criterion,
        global_ranking=args.global_ranking,
        round_to=args.round_to,
        min_keep=args.min_keep,
        exclude=args.exclude,
        allow_signature_change=args.allow_signature_change,
        seed=args.seed,
        shapes=shapes or None,
        progress=progress,
        calib=args.calib,
        calib_samples=args.calib_samples,
        repair=repair,
        dead=args.dead,
        sequential=sequential,
        damp=args.damp,
        threshold=args.threshold,
        target=args.target,
    )
    heads_report = None
    if wants_heads:
        heads_report = heads_module.heads_report(result, heads=args.heads, ffn=result.report.ffn_ratio,
                                                 criterion=result.report.criterion, round_to=args.round_to)
    report = result.report
    model_out = result.model  # prune() hands back the input as it was when nothing was removed
    out = save_model(model_out, args.output, protect=inputs(args), force=args.force, source=args.model)
    report.file_bytes_before = model_file_bytes(args.model)
    report.file_bytes_after = model_file_bytes(out)
    data: dict[str, Any] = {"input": str(args.model), "output": str(out), **report.to_dict()}
    if args.threshold is not None:
        data["threshold"] = args.threshold
    if heads_report is not None:
        data["heads"] = heads_report
    if args.report:
        write_report(args.report, data, title=f"onnxsparse prune {args.model}", force=args.force)
    if args.json:
        print(dump_json(data))
    else:
        what = ["dead units first"] if args.dead else []
        if args.channels is not None:
            what.append(f"channels {args.channels:g}" + (", global" if args.global_ranking else ""))
        what += [f"{k} {r:g}" for k, r in (("heads", args.heads), ("ffn", args.ffn)) if r]
        what += [f"score < {args.threshold:g}"] if args.threshold is not None else []
        if args.target is not None:
            what.append(f"target {args.target}")
        print(f"pruned {args.model} -> {out} ({report.criterion}; {'; '.join(what)})")
        print(report.summary())
        if heads_report is not None:
            print()
            print(heads_module.report_table(heads_report))
    return 0


def _run_budget(args: argparse.Namespace) -> int:
    """``--max-accuracy-drop``: search, save the winner, validate it on the held-out split."""
    from ..calibration.data import parse_shapes
    from ..io import check_output, save_model
    from ..passes.budget import prune_within_budget
    from ..validate import render_text as validation_text
    from ..validate import validate

    if args.data is None or args.labels is None:
        raise UsageError("--max-accuracy-drop needs labelled data: give --data DATA --labels LABELS")
    objective = args.target or "macs"
    if "=" in objective:
        raise UsageError("with --max-accuracy-drop, --target names what to minimise (macs, params or latency), "
                         "not a fraction")
    given = [flag for flag, value in (("--channels", args.channels), ("--heads", args.heads or None),
                                      ("--ffn", args.ffn), ("--threshold", args.threshold)) if value is not None]
    if given:
        raise UsageError(f"--max-accuracy-drop chooses how much to prune itself: drop {', '.join(given)}")
    check_report_paths([args.report] if args.report else None, force=args.force, protect=inputs(args))
    check_output(args.output, protect=inputs(args), force=args.force)
    repair = args.repair or "lstsq"
    found = prune_within_budget(
        args.model, max_drop=args.max_accuracy_drop, data=args.data, labels=args.labels, metric=args.metric,
        objective=objective, calib=args.calib, holdout=args.holdout, label_output=args.label_output,
        criterion=args.criterion, round_to=args.round_to, min_keep=args.min_keep, exclude=args.exclude,
        seed=args.seed, shapes=parse_shapes(args.shape) or None, repair=repair, damp=args.damp,
        calib_samples=args.calib_samples, progress=(lambda t: print(
            f"  fraction {t.fraction:.3f}: {args.metric} {t.metric:.4f} (drop {t.drop:+.4f})", file=sys.stderr))
        if progress_enabled(args) else None,
    )
    data: dict[str, Any] = {"input": str(args.model), "objective": objective, "search": found.to_dict()}
    validation = None
    if found.model is not None:
        out = save_model(found.model, args.output, protect=inputs(args), force=args.force, source=args.model)
        held, held_labels = found.held_out
        validation = validate(args.model, out, data=held.arrays, labels=held_labels, metrics=args.metric,
                              label_output=args.label_output, memory=False, progress=progress_enabled(args))
        data.update(output=str(out), validation=validation.to_dict())
    if args.report:
        write_report(args.report, data, title=f"onnxsparse prune {args.model} --max-accuracy-drop", force=args.force)
    if args.json:
        print(dump_json(data))
    else:
        print(found.table())
        if validation is not None:
            print()
            print(f"wrote {data['output']}; checked on the {len(held_labels)} held-out samples:")
            print(validation_text(validation))
    if found.model is None:
        print(f"onnxsparse: no pruned model kept {args.metric} within {args.max_accuracy_drop:g}; nothing written",
              file=sys.stderr)
        return 1
    if not found.holdout_within_budget:  # the search split promised more than the unseen data keeps
        print(f"onnxsparse: the winner loses {found.holdout['drop']:.4f} {args.metric} on the "
              f"{len(held_labels)} held-out samples, over the budget {args.max_accuracy_drop:g} it kept on the "
              "search split: give more labelled data or a smaller budget", file=sys.stderr)
        return 1
    return 0
