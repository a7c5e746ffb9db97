"""Run a recipe: each step on the result of the one before, intermediates in a temporary folder.

Before any work: the recipe is validated (:func:`load_recipe`), the output path is checked
(exists without ``force``, is the input), the input model is loaded and its state checked
against the steps (a quantized or sparse-stored input cannot be pruned), and every data file
is checked against the model's inputs.  Then every step runs through the library's own
function (:func:`onnxsparse.passes.prune.prune`, :func:`~onnxsparse.passes.prune_heads.prune_heads`,
:func:`~onnxsparse.passes.sparsify.sparsify`, :func:`onnxsparse.quantize.quantize`,
:func:`~onnxsparse.passes.densify.densify`, :func:`onnxsparse.validate.validate`), its model is saved
into the temporary folder, and params/MACs/bytes are measured.  Only when every step and gate
passed is the final model written, atomically, never over the input.  A failing gate returns a
result with ``passed == False`` and writes nothing; a failing step raises :class:`StepError`
naming the step; the temporary folder is removed either way.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeGuard

import onnx_ir as ir

from .._progress import progress_bar
from .._workdir import owned_temp_dir
from .. import guard
from ..errors import DataError, OnnxSparseError, UsageError
from ..io import ModelSource, check_output, load_model, model_file_bytes
from ..model_state import model_state
from .config import (
    PruneStep,
    QuantizeStep,
    Recipe,
    RecipeError,
    SparsifyStep,
    Step,
    ValidateStep,
    check_order,
)
from .loader import RecipeSpec, load_recipe

__all__ = [
    "run_recipe",
    "prepare_run",
    "plan_recipe",
    "RecipeResult",
    "StepResult",
    "Stats",
    "StepError",
    "StepOutcome",
    "RunContext",
    "EXECUTORS",
    "register_executor",
    "SCHEMA",
]

logger = logging.getLogger(__name__)

#: ``schema`` of the JSON report; changes when a key is renamed or removed.
SCHEMA = "onnxsparse.run/1"

class StepError(OnnxSparseError):
    """A step failed; ``index``/``kind`` say which, ``result`` holds the steps that ran before it.

    Exit code 2 when the step's own error was a user error, 1 when it was anything else.
    """

    def __init__(self, message: str, *, index: int, kind: str, exit_code: int, result: RecipeResult) -> None:
        super().__init__(message)
        self.index = index
        self.kind = kind
        self.exit_code = exit_code
        self.result = result


@dataclass(frozen=True)
class Stats:
    """Size of the model after a step: parameters, MACs per run of the recipe's shapes, bytes on disk."""

    params: int | None
    macs: int | None
    bytes: int | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "macs": self.macs, "bytes": self.bytes, "note": self.note}


@dataclass
class StepOutcome:
    """What an executor reports: the step's own report dict, notes for the table, a gate verdict."""

    report: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    passed: bool | None = None
    validation: Any = None  # ValidationResult of validate steps


@dataclass
class StepResult:
    index: int
    kind: str
    options: dict[str, Any]
    seconds: float
    stats: Stats
    notes: list[str]
    report: dict[str, Any]
    passed: bool | None = None
    validation: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "step": self.kind,
            "options": self.options,
            "seconds": self.seconds,
            **{k: v for k, v in self.stats.to_dict().items() if k != "note"},
            "stats_note": self.stats.note,
            "notes": list(self.notes),
            "passed": self.passed,
            "report": self.report,
        }


@dataclass
class RecipeResult:
    """Everything a run did; ``passed`` is what the exit code reports (0, or 1 for a failed gate)."""

    recipe: Recipe
    input: str
    output: Path | None
    input_stats: Stats
    steps: list[StepResult] = field(default_factory=list)
    mac_dims: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    failed_step: int | None = None
    error: str | None = None
    #: the final model (``None`` when a gate failed); the same one written to ``output``
    model: ir.Model | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.failed_step is None and self.error is None

    @property
    def validation(self):
        """The last validate step's :class:`~onnxsparse.validate.ValidationResult` (or ``None``)."""
        found = [s.validation for s in self.steps if s.validation is not None]
        return found[-1] if found else None

    @property
    def final_stats(self) -> Stats:
        return self.steps[-1].stats if self.steps else self.input_stats

    def ratios(self) -> dict[str, float | None]:
        def ratio(after: int | None, before: int | None) -> float | None:
            return after / before if after is not None and before else None

        final = self.final_stats
        return {
            "params": ratio(final.params, self.input_stats.params),
            "macs": ratio(final.macs, self.input_stats.macs),
            "bytes": ratio(final.bytes, self.input_stats.bytes),
        }

    def to_dict(self) -> dict[str, Any]:
        validation = self.validation
        return {
            "schema": SCHEMA,
            "recipe": self.recipe.to_dict(full=True) | {"source": self.recipe.source},
            "input": self.input,
            "output": str(self.output) if self.output else None,
            "passed": self.passed,
            "failed_step": self.failed_step,
            "error": self.error,
            "seconds": self.seconds,
            "mac_dims": dict(self.mac_dims),
            "input_stats": self.input_stats.to_dict(),
            "final_stats": self.final_stats.to_dict(),
            "ratios": self.ratios(),
            "steps": [s.to_dict() for s in self.steps],
            "validation": validation.to_dict() if validation is not None else None,
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------------------------------ context


class RunContext:
    """The model as it flows through the steps: in memory (``model``) and on disk (``path``)."""

    def __init__(self, recipe: Recipe, model: ir.Model, path: Path, reference: Path, workdir: Path,
                 mac_dims: Mapping[str, int], progress: bool) -> None:
        self.recipe = recipe
        self.model = model
        self.path = path
        self.reference = reference
        self.workdir = workdir
        self.mac_dims = dict(mac_dims)
        self.progress = progress

    @property
    def shapes(self) -> dict[str, tuple[int, ...]] | None:
        return self.recipe.shapes or None

    def next_path(self, index: int, kind: str) -> Path:
        return self.workdir / f"{index:02d}-{kind}.onnx"

    def save(self, index: int, kind: str) -> Path:
        """Write the current model as this step's intermediate file (sparse formats included)."""
        from ..formats import save_model

        self.path = save_model(self.model, self.next_path(index, kind))
        return self.path


Executor = Callable[[Step, RunContext, int], StepOutcome]
#: How each step kind runs; new kinds register with :func:`register_executor`.
EXECUTORS: dict[str, Executor] = {}


def register_executor(kind: str) -> Callable[[Executor], Executor]:
    def wrap(fn: Executor) -> Executor:
        EXECUTORS[kind] = fn
        return fn

    return wrap


class StepRefused(RecipeError, ir.passes.PreconditionError):
    """A step's precondition failed: the model is in a state the step refuses (one line, exit 2)."""


@dataclass
class StepPassResult(ir.passes.PassResult):
    """A step's pass result: the model after the step and what the step reports."""

    outcome: StepOutcome = field(default_factory=lambda: StepOutcome({}))


class StepPass(ir.passes.PassBase):
    """One recipe step as an ``onnx_ir`` pass: its executor (which runs the operation's own pass or
    ``run_<op>`` function and saves the intermediate model: the save hook), with the step's model-state
    refusals as the precondition.  A recipe is the sequence of these passes (validate steps are the
    validate hooks); quantize hands back a new model object, the other steps change the model in place."""

    def __init__(self, step: Step, ctx: RunContext, index: int) -> None:
        self.step, self.ctx, self.index = step, ctx, index
        self._same_model = True

    @property
    def in_place(self) -> bool:
        return self._same_model

    @property
    def changes_input(self) -> bool:
        return self.step.transforms

    def requires(self, model: ir.Model) -> None:
        from ..model_state import model_state

        state = model_state(model)
        for name, reason in self.step.refuses.items():
            if name in state:
                raise StepRefused(f"{reason} ({state[name]})")

    def call(self, model: ir.Model) -> StepPassResult:
        outcome = EXECUTORS[self.step.kind](self.step, self.ctx, self.index)
        self._same_model = self.ctx.model is model
        return StepPassResult(self.ctx.model, self.step.transforms, outcome=outcome)


def _run_step(step_pass: StepPass, model: ir.Model) -> StepOutcome:
    result = step_pass(model)
    if not isinstance(result, StepPassResult):  # pragma: no cover - StepPass.call returns one
        raise TypeError(f"{step_pass.step.kind}: expected a StepPassResult, got {type(result).__name__}")
    return result.outcome


# ------------------------------------------------------------------------------------------ executors


def _heads_notes(report: Mapping[str, Any]) -> list[str]:
    notes = []
    attention = report.get("attention", [])
    if attention:
        kept = sorted({f"{b['heads_kept']}/{b['heads_total']}" for b in attention})
        notes.append(f"heads {', '.join(kept)} in {len(attention)} block(s)")
    ffn = report.get("ffn", [])
    if ffn:
        kept = sorted({f"{b['kept']}/{b['total']}" for b in ffn})
        notes.append(f"ffn {', '.join(kept)} in {len(ffn)} block(s)")
    skipped = report.get("skipped", [])
    if skipped:
        notes.append(f"{len(skipped)} block(s) skipped")
    return notes


@register_executor("prune")
def _run_prune(step: Step, ctx: RunContext, index: int) -> StepOutcome:
    from ..passes.prune import run_prune

    assert isinstance(step, PruneStep)
    if step.calib is None and ctx.recipe.calib is not None:
        step = replace(step, calib=ctx.recipe.calib)
    if step.max_accuracy_drop is not None:
        return _run_budget(step, ctx, index)
    result = run_prune(ctx.model, step, shapes=ctx.shapes if not step.shape else None)
    channel_report = result.report
    channel_report.file_bytes_before = model_file_bytes(ctx.path)
    report: dict[str, Any] = {"heads": None, "channels": None}
    notes: list[str] = []
    for kind, counts in channel_report.kind_counts().items():
        if counts["prunable"]:
            notes.append(f"{kind}: {counts['pruned']}/{counts['prunable']} groups pruned "
                         f"({counts['units_removed']}/{counts['units']} units), {counts['skipped']} skipped")
    if result.heads is not None:
        report["heads"] = result.heads
        notes += _heads_notes(result.heads)
    if channel_report.dead is not None:
        dead = channel_report.dead
        notes.append(f"dead units: {dead.removed_units} removed exactly ({dead.dead} dead, {dead.constant} constant "
                     f"of {dead.units} on {dead.samples} calibration samples)")
    if not channel_report.pruned_groups and not (channel_report.dead and channel_report.dead.removed):
        notes.append("no group was pruned" + (f": {channel_report.no_groups_reason}"
                                              if channel_report.no_groups_reason else ""))
    ctx.save(index, step.kind)
    channel_report.file_bytes_after = model_file_bytes(ctx.path)
    report["channels"] = channel_report.to_dict()
    return StepOutcome(report, notes)


def _run_budget(step: PruneStep, ctx: RunContext, index: int) -> StepOutcome:
    """``prune: {max_accuracy_drop: X, data: D, labels: L}``: the search the ``prune`` command runs; a step
    whose winner breaks the budget on the held-out split (or that finds none) fails like a gate."""
    from ..passes.budget import run_budget

    outcome = run_budget(ctx.model, step)
    search = outcome.search
    notes = [f"{search.metric}: reference {search.reference:.4f}; {len(search.trials)} trial(s)"]
    if outcome.model is None:
        notes.insert(0, f"FAILED: no pruned model kept {search.metric} within {search.max_drop:g}")
        return StepOutcome({"search": search.to_dict()}, notes, passed=False)
    ctx.model = outcome.model
    ctx.save(index, step.kind)
    if search.holdout is not None:
        notes.append(f"held-out {search.metric} drop {search.holdout['drop']:.4f} (budget {search.max_drop:g})")
    if not outcome.passed:
        notes.insert(0, "FAILED: the winner breaks the budget on the held-out split")
    return StepOutcome({"search": search.to_dict(), "validation": outcome.validation.to_dict()}, notes,
                       passed=outcome.passed)


@register_executor("sparsify")
def _run_sparsify(step: Step, ctx: RunContext, index: int) -> StepOutcome:
    from ..passes.sparsify import sparsify

    assert isinstance(step, SparsifyStep)
    config = step
    if step.needs_calibration and step.calib is None and ctx.recipe.calib is not None:
        config = replace(step, calib=ctx.recipe.calib, shapes=step.shapes or ctx.shapes or None)
    report = sparsify(ctx.model, config)
    ctx.save(index, step.kind)
    totals = report.totals
    formats = ", ".join(f"{k} {v}" for k, v in totals["formats"].items()) or "none"
    notes = [f"sparsity {totals['sparsity']:.1%} over {totals['tensors']} tensor(s); formats {formats}"]
    if report.skipped:
        notes.append(f"{len(report.skipped)} skip reason(s), e.g. {report.skipped[0]['name']}: "
                     f"{report.skipped[0]['reason']}")
    return StepOutcome(report.to_dict(), notes)


@register_executor("quantize")
def _run_quantize(step: Step, ctx: RunContext, index: int) -> StepOutcome:
    from ..quantize import run_quantize

    assert isinstance(step, QuantizeStep)
    options = replace(step, calib=step.calib or ctx.recipe.calib, shapes=step.shapes or tuple((ctx.shapes or {}).items()))
    result = run_quantize(str(ctx.path), ctx.next_path(index, step.kind), options)
    assert result.path is not None
    ctx.model, ctx.path = result.model, result.path
    report = result.report
    settings = report.settings
    excluded = len(report.excluded)
    zeros = report.zeros
    notes = [f"{report.mode} ({settings.get('format')}): {len(report.quantized)} node(s) quantized"
             + (f", {excluded} excluded" if excluded else "")
             + ("; zeros exact" if zeros.get("exact") else "; ZEROS NOT EXACT")]
    notes = [f"FAILED: {failure}" for failure in report.failures] + notes + list(report.warnings)
    return StepOutcome(report.as_dict(), notes, passed=report.passed if report.failures else None)


@register_executor("densify")
def _run_densify(step: Step, ctx: RunContext, index: int) -> StepOutcome:
    from ..passes.densify import densify

    expanded = densify(ctx.model)
    ctx.save(index, step.kind)
    note = f"{len(expanded)} tensor(s) decoded to dense" if expanded else "nothing was stored sparse (no change)"
    return StepOutcome({"densified": dict(expanded)}, [note])


@register_executor("validate")
def _run_validate(step: Step, ctx: RunContext, index: int) -> StepOutcome:
    from ..validate import validate

    assert isinstance(step, ValidateStep)
    kwargs = step.validate_kwargs()
    kwargs["shape"] = kwargs["shape"] or ctx.shapes
    result = validate(str(ctx.reference), str(ctx.path), progress=False, **kwargs)
    return StepOutcome(result.to_dict(), _validate_notes(result), passed=result.passed, validation=result)


def _validate_notes(result: Any) -> list[str]:
    """The verdict first (``PASSED (N checks)`` / ``FAILED: gate observed vs limit at where``), then what was
    measured (shorter than ``validate``'s summary line, with the worst cosine)."""
    from ..validate import verdict

    first = verdict(result)
    if result.passed and result.checks:
        first += f" ({len(result.checks)} checks)"
    measured = []
    if result.size_ratio is not None:
        measured.append(f"size {result.size_ratio:.3f}x")
    for p in result.available_providers:
        if p.latency_ratio is not None:
            measured.append(f"p50 {p.latency_ratio:.3f}x on {p.provider}")
    primary = result.primary
    if primary is not None:
        measured += [f"{m.name} {m.reference:.4f} -> {m.candidate:.4f}" for m in primary.metrics]
        cosines = [f.cosine for f in primary.fidelity if f.cosine is not None]
        if cosines:
            measured.append(f"cosine {min(cosines):.4f}")
    unavailable = [p.provider for p in result.providers if not p.available]
    if unavailable:
        measured.append(f"unavailable: {', '.join(unavailable)}")
    return [first] + ([", ".join(measured)] if measured else [])


# ------------------------------------------------------------------------------------------ checks


def _mac_dims(model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Symbolic input dims not fixed by the recipe's shapes count as 1 (MACs per sample, as ``prune``)."""
    dims: dict[str, int] = {}
    for value in model.graph.inputs:
        if value.name in shapes or value.shape is None or value.is_initializer():
            continue
        for dim in value.shape:
            symbol = None if isinstance(dim, int) else getattr(dim, "value", None)
            if symbol:
                dims.setdefault(symbol, 1)
    return dims


def _stats(model: ir.Model, path: Path, shapes: Mapping[str, tuple[int, ...]] | None,
           dims: Mapping[str, int]) -> Stats:
    from ..analysis import model_stats

    size = model_file_bytes(path)
    try:
        stats = model_stats(model, shapes, dims=dims, sparsity=False)
    except Exception as exc:  # noqa: BLE001 - sizes are informative; never fail a run on them
        logger.debug("model_stats failed", exc_info=True)
        return Stats(None, None, size, f"params/MACs not measured: {type(exc).__name__}: {exc}")
    note = None if stats.macs is not None else "MACs unknown (fix dynamic dims with shape)"
    return Stats(stats.params, stats.macs, size, note)


def _data_checks(recipe: Recipe, model: ir.Model) -> list[str]:
    """Check every data file against the model's inputs now, not after an hour of work."""
    from ..calibration.data import load_data

    notes: list[str] = []
    calib_used = False
    checks: list[tuple[str, str]] = []
    for index, step in enumerate(recipe.steps):
        where = recipe.where(index)
        if isinstance(step, QuantizeStep):
            calib = step.calib or recipe.calib
            calib_used = calib_used or step.calib is None and recipe.calib is not None
            if calib is not None and (step.needs_calibration or step.check_fp32):
                checks.append((f"{where}.calib", str(calib)))  # recipe data are paths (or random)
        elif isinstance(step, ValidateStep):
            checks.append((f"{where}.data", step.data))
        elif isinstance(step, SparsifyStep) and step.needs_calibration:
            calib = step.calib or recipe.calib
            calib_used = calib_used or (step.calib is None and recipe.calib is not None)
            if calib is None:
                raise RecipeError(f"{recipe.source}: {where}: criterion {step.criterion} needs calibration data: "
                                  "set calib in the step or the recipe (or --set calib=DATA)")
            checks.append((f"{where}.calib", str(calib)))  # recipe data are paths (or random)
        elif isinstance(step, PruneStep) and (step.channels or step.target) and "calib" in PruneStep.passthrough_keys():
            calib = step.calib or recipe.calib
            calib_used = calib_used or (step.calib is None and recipe.calib is not None)
            if calib is None and step.target:
                raise RecipeError(f"{recipe.source}: {where}: target {step.target} needs calibration data: "
                                  "set calib in the step or the recipe (or --set calib=DATA)")
            if calib is not None:
                checks.append((f"{where}.calib", calib))
    seen: set[str] = set()
    for where, spec in checks:
        if spec in seen:
            continue
        seen.add(spec)
        try:
            load_data(spec, model, shapes=recipe.shapes, samples=1)
        except (DataError, UsageError) as exc:
            message = re.sub(r"give its shape with --shape (\S+)=(\S+)",
                             r"set shape in the recipe ({\1: \2}) or --set shape.\1=\2", str(exc))
            raise RecipeError(f"{recipe.source}: {where}: {message}") from None
    if recipe.calib is not None and not calib_used:
        notes.append("the recipe's calib is not used by any step")
    elif recipe.calib == "random":
        notes.append("calib is random: calibration ranges and pruning repairs will not match real inputs")
    return notes


def prepare_run(recipe: Recipe, model: ir.Model) -> list[str]:
    """Checks that need the input model (state vs step order, data vs inputs); returns notes."""
    check_order(recipe, model_state(model))
    return list(recipe.notes) + _data_checks(recipe, model)


#: Concrete quantization settings shown in a plan (the rest are in ``options``).
_RESOLVED_KEYS = ("format", "per_channel", "reduce_range", "activation_type", "weight_type", "calibration")


def plan_recipe(recipe: RecipeSpec, model: ModelSource, output: str | os.PathLike | None = None, *,
                overrides: Sequence[str] = (), force: bool = False) -> dict[str, Any]:
    """Everything :func:`run_recipe` checks before work, without running anything: the plan as a dict.

    Quantize steps also show the settings this CPU would get (``resolved``, e.g. ``reduce_range``).
    """
    recipe = load_recipe(recipe, overrides=overrides)
    input_path = Path(model) if _is_path(model) else None
    if output is not None:
        check_output(Path(output), protect=(input_path, recipe.calib), force=force)
    ir_model = load_model(model)
    notes = prepare_run(recipe, ir_model)
    mac_dims = _mac_dims(ir_model, recipe.shapes)
    stats = _stats(ir_model, input_path, recipe.shapes or None, mac_dims) if input_path else None
    steps = []
    for index, step in enumerate(recipe.steps):
        entry: dict[str, Any] = {"index": index, "step": step.kind, "options": step.options(full=True)}
        if isinstance(step, QuantizeStep):
            from ..quantize import detect_cpu, resolve

            settings = resolve(step, detect_cpu()).as_dict()
            entry["resolved"] = {k: settings[k] for k in _RESOLVED_KEYS if settings.get(k) is not None}
        steps.append(entry)
    return {
        "schema": "onnxsparse.run.plan/1",
        "recipe": recipe.name,
        "description": recipe.description,
        "source": recipe.source,
        "model": str(input_path) if input_path else "<in-memory model>",
        "output": str(output) if output is not None else None,
        "input_stats": stats.to_dict() if stats else None,
        "mac_dims": mac_dims,
        "calib": recipe.calib,
        "shape": {k: list(v) for k, v in recipe.shape},
        "steps": steps,
        "notes": notes,
    }


# ------------------------------------------------------------------------------------------ run


def _is_path(model: Any) -> TypeGuard[str | os.PathLike[str]]:
    return isinstance(model, (str, os.PathLike))


def run_recipe(
    recipe: RecipeSpec,
    model: ModelSource,
    output: str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] = (),
    force: bool = False,
    progress: bool = False,
) -> RecipeResult:
    """Run ``recipe`` on ``model``; write the final model to ``output`` if every gate passed.

    ``recipe`` is anything :func:`load_recipe` takes (``overrides`` are ``--set`` items).
    ``model`` is a path (kept as the validation reference and never overwritten) or an
    in-memory model.  Without ``output`` nothing is written; the final model is ``result.model``.
    Raises :class:`RecipeError` (before any work) and :class:`StepError` (a step failed);
    a failed gate returns a result with ``passed == False``.
    """
    with guard.command():  # the recipe, model and data it reads are protected from its writes
        return _run_recipe(recipe, model, output, overrides=overrides, force=force, progress=progress)


def _run_recipe(recipe: RecipeSpec, model: ModelSource, output: str | os.PathLike | None, *,
                overrides: Sequence[str], force: bool, progress: bool) -> RecipeResult:
    started = time.perf_counter()
    recipe = load_recipe(recipe, overrides=overrides)
    out = Path(output) if output is not None else None
    input_path = Path(model) if _is_path(model) else None
    if out is not None:
        check_output(out, protect=(input_path, recipe.calib), force=force)
    ir_model = load_model(model)
    notes = prepare_run(recipe, ir_model)
    mac_dims = _mac_dims(ir_model, recipe.shapes)
    workdir_parent = out.resolve().parent if out is not None else None
    with owned_temp_dir(workdir_parent, "run") as workdir:
        if input_path is None:
            from ..io import save_model

            input_path = save_model(ir_model.clone() if hasattr(ir_model, "clone") else ir_model,
                                    workdir / "input.onnx")
        ctx = RunContext(recipe, ir_model, input_path, input_path, workdir, mac_dims, progress)
        result = RecipeResult(recipe, str(input_path if _is_path(model) else "<in-memory model>"), None,
                              _stats(ir_model, input_path, recipe.shapes or None, mac_dims), mac_dims=mac_dims,
                              notes=notes)
        bar = progress_bar(len(recipe.steps), unit="step", enabled=progress)
        for index, step in enumerate(recipe.steps):
            where = recipe.where(index)
            if bar is not None:
                bar.set_description(f"{index} {step.kind}")
            logger.info("%s: running", where)
            t0 = time.perf_counter()
            try:
                outcome = _run_step(StepPass(step, ctx, index), ctx.model)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure names the step that failed
                result.seconds = time.perf_counter() - started
                result.failed_step, result.error = index, f"{where} failed: {exc}"
                if bar is not None:
                    bar.close()
                user = isinstance(exc, OnnxSparseError)
                detail = str(exc) if user else f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
                raise StepError(f"{recipe.source}: {where} failed: {detail}", index=index, kind=step.kind,
                                exit_code=exc.exit_code if isinstance(exc, OnnxSparseError) else 1,
                                result=result) from exc
            seconds = time.perf_counter() - t0
            stats = (_stats(ctx.model, ctx.path, recipe.shapes or None, mac_dims) if step.transforms
                     else result.final_stats)
            result.steps.append(StepResult(index, step.kind, step.options(full=True), seconds, stats, outcome.notes,
                                           outcome.report, outcome.passed, outcome.validation))
            if bar is not None:
                bar.update(1)
            if outcome.passed is False:
                result.failed_step = index
                verdict = outcome.notes[0] if outcome.notes else "gate failed"
                result.error = f"{where}: {verdict.removeprefix('FAILED: ')}"
                break
        if bar is not None:
            bar.close()
        if result.passed:
            result.model = ctx.model
            if out is not None:
                from ..formats import save_model as save_stored

                result.output = save_stored(ctx.model, out, protect=(input_path,) if input_path is not None else (),
                                            force=force, source=input_path)
    result.seconds = time.perf_counter() - started
    return result
