"""``onnxsparse run RECIPE MODEL -o OUT``: prune, sparsify, quantize and validate from one recipe.

The recipe (YAML/JSON file or ``preset:NAME``) is validated completely before any work;
intermediate models live in a temporary folder; the output is written only when every step
and gate passed.  Exit 0: written; 1: a validate gate failed or a step crashed (nothing
written); 2: bad recipe, model, data or options (nothing run).
"""

from __future__ import annotations

import argparse
import textwrap

from . import SUMMARIES
from ..errors import UsageError
from ..report import dump_json, write_report
from ._common import inputs, print_result, progress_enabled

__all__ = ["register", "run"]

DESCRIPTION = """Run a recipe: a validated chain of prune, sparsify, quantize, densify and validate steps.
The recipe is checked completely (keys, types, ranges, registry names, data files, step order)
before anything runs; only the final model is written, and only if every validate gate passed."""


def _epilog() -> str:
    from ..recipe import PRESETS, STEP_TYPES
    from ..recipe.overrides import OVERRIDE_HELP

    def wrap(text: str, indent: int) -> list[str]:
        return textwrap.wrap(text, width=100, initial_indent=" " * indent, subsequent_indent=" " * (indent + 2))

    lines = ["presets (RECIPE = preset:NAME):"]
    for preset in PRESETS.values():
        lines.append(f"  {preset.name}")
        lines += wrap(preset.description, 4)
        if preset.needs:
            lines += wrap(f"needs: {preset.needs}", 4)
    lines.append("")
    lines.append("steps and their keys (docs/recipes.md):")
    for kind, cls in STEP_TYPES.items():
        lines.append(f"  {kind}: {cls.help}")
        lines += wrap("keys: " + (", ".join(cls.keys()) or "(none)"), 4)
    lines += [
        "",
        f"--set {OVERRIDE_HELP}",
        "",
        "exit codes: 0 every step and gate passed (output written); 1 a validate gate failed or a step",
        "crashed (nothing written); 2 bad recipe, model, data or options (nothing run).",
        "examples:",
        "  onnxsparse run recipes/cnn-edge.yaml model.onnx -o small.onnx --report run.html",
        "  onnxsparse run preset:cnn-edge model.onnx -o small.onnx --set calib=calib.npz --set prune.channels=0.2",
        "  onnxsparse run recipes/transformer-cpu.yaml model.onnx --dry-run",
    ]
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "run", parents=[common], help=SUMMARIES["run"],
        description=DESCRIPTION, epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="recipe file (.yaml, .yml or .json) or preset:NAME")
    p.add_argument("model", help="the .onnx model to transform (never modified)")
    p.add_argument("-o", "--output", help="where to write the final model (required unless --dry-run)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a recipe key (repeatable): steps.N.KIND.KEY, KIND.KEY, calib, shape.INPUT")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the recipe against the model and print the plan; run nothing")
    p.add_argument("--report", action="append", default=[], metavar="FILE",
                   help="also write the run report: .json, .md or .html (repeatable; written on gate failures too; "
                        "with --dry-run: the plan)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..recipe import StepError, load_recipe, plan_recipe, run_recipe
    from ..recipe.render import render_plan, render_text, write_run_report
    from ..validate.reports import check_report_paths

    check_report_paths(args.report, force=args.force, protect=inputs(args))
    recipe = load_recipe(args.recipe, overrides=args.overrides)
    if args.dry_run:
        plan = plan_recipe(recipe, args.model, args.output, force=args.force)
        for path in args.report:
            write_report(path, plan, title=f"onnxsparse run {recipe.name}: plan (dry run)", force=args.force)
        print(dump_json(plan) if args.json else render_plan(plan, recipe))
        return 0
    if not args.output:
        raise UsageError("-o/--output is required (or use --dry-run)")
    try:
        result = run_recipe(recipe, args.model, args.output, force=args.force,
                            progress=progress_enabled(args))
    except StepError as exc:
        for path in args.report:
            write_run_report(path, exc.result, force=args.force)
        raise
    for path in args.report:
        write_run_report(path, result, force=args.force)
    print_result(args, result, render_text, args.report)
    return 0 if result.passed else 1
