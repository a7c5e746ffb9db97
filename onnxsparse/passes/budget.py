"""Prune as far as an accuracy budget allows: ``prune --max-accuracy-drop X --data D --labels L``.

Users want "as fast as possible, at most one point lost", not a ratio.  The search walks one knob
``f`` (the fraction of MACs, params or latency kept, fed to the allocation of ``prune --target``):
``f = 1`` is the input (always within budget); it tries the most aggressive ``f`` first and bisects
between the best fraction known to keep the budget and the least aggressive one known to break it.
Every trial prunes the input afresh and scores the task metric on the search split of the user's
data; the winner is then checked on the held-out split (never seen by the search), so the
reported drop is an honest estimate.  Accuracy is not exactly monotone in ``f``: the winner is the
most aggressive trial that kept the budget, whatever its order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from ..calibration.data import DataSource
from ..errors import UsageError
from ..validate.batch_axis import batch_axis, batch_symbols, samples_first
from ..validate.metrics import Metric

__all__ = ["Trial", "BudgetSearch", "search_budget", "task_metric", "split_holdout"]


@dataclass
class Trial:
    """One pruned candidate: the fraction asked for, what it measured, and whether it kept the budget."""

    fraction: float
    metric: float
    drop: float
    within_budget: bool
    measured: dict[str, float] = field(default_factory=dict)  # e.g. macs_ratio, params_ratio
    seconds: float = 0.0
    note: str | None = None  # why the fraction could not be pruned to


@dataclass
class BudgetSearch:
    """The trials in the order run, the winner (``None``: nothing beyond the input kept the budget)."""

    metric: str
    reference: float
    max_drop: float
    trials: list[Trial]
    best: Trial | None
    model: ir.Model | None = None
    holdout: dict[str, float] | None = None  # reference / candidate metric and drop on the held-out split
    reason: str | None = None
    held_out: tuple[DataSource, np.ndarray] | None = None  # the split the search never saw (for validate)

    @property
    def holdout_within_budget(self) -> bool | None:
        """Whether the winner also keeps the budget on the held-out split (``None``: no winner)."""
        return None if self.holdout is None else self.holdout["drop"] <= self.max_drop + 1e-12

    def to_dict(self) -> dict[str, Any]:
        return {
            "holdout_within_budget": self.holdout_within_budget,
            "metric": self.metric,
            "reference": self.reference,
            "max_drop": self.max_drop,
            "trials": [asdict(t) for t in self.trials],
            "best": None if self.best is None else asdict(self.best),
            "holdout": self.holdout,
            "reason": self.reason,
        }

    def table(self) -> str:
        """The frontier tried, most aggressive first."""
        keys = sorted({k for t in self.trials for k in t.measured})
        head = ["fraction", self.metric, "drop", "ok", *keys]
        rows = [head]
        for t in sorted(self.trials, key=lambda t: t.fraction):
            rows.append([f"{t.fraction:.3f}", f"{t.metric:.4f}", f"{t.drop:+.4f}", "yes" if t.within_budget else "no",
                         *(f"{t.measured[k]:.3f}" if k in t.measured else "-" for k in keys)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
        summary = (f"reference {self.metric} {self.reference:.4f}, budget {self.max_drop:g}: "
                   + (f"best fraction {self.best.fraction:.3f} (drop {self.best.drop:+.4f})" if self.best
                      else f"no pruned model kept the budget{': ' + self.reason if self.reason else ''}"))
        if self.holdout is not None:
            summary += (f"; held-out {self.metric} {self.holdout['reference']:.4f} -> {self.holdout['candidate']:.4f}"
                        f" (drop {self.holdout['drop']:+.4f})")
        return "\n".join([*lines, summary])


def split_holdout(source: DataSource, labels: np.ndarray, fraction: float) -> tuple[tuple[DataSource, np.ndarray],
                                                                                      tuple[DataSource, np.ndarray]]:
    """(search split, held-out split): the last ``fraction`` of the samples are held out."""
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"--holdout must be in (0, 1), got {fraction}")
    count = len(source)
    held = int(round(count * fraction))
    if held < 1 or count - held < 1:
        raise UsageError(f"{count} labelled samples cannot be split {1 - fraction:g}/{fraction:g} into a search and a "
                         "held-out part; give more data")
    cut = count - held
    first = DataSource({k: v[:cut] for k, v in source.arrays.items()}, source.origin)
    rest = DataSource({k: v[cut:] for k, v in source.arrays.items()}, source.origin)
    return (first, labels[:cut]), (rest, labels[cut:])


def task_metric(model: ir.Model, source: DataSource, labels: np.ndarray, metric: Metric, *,
                output: str | None = None, batch: int = 32) -> float:
    """``metric`` of ``model``'s ``output`` (default: the first) over every sample of ``source``.

    The output's samples axis is found as ``validate`` finds it (a time-major CTC output works).
    """
    from .sensitivity import _session

    sess = _session(model)
    outputs = sess.get_outputs()
    name = output or outputs[0].name
    declared = next((o.shape for o in outputs if o.name == name), None)
    symbols = batch_symbols([i.shape for i in sess.get_inputs()])
    wanted = {i.name for i in sess.get_inputs()}
    parts: list[np.ndarray] = []
    for feeds in source.batches(batch):
        (value,) = sess.run([name], {k: v for k, v in feeds.items() if k in wanted})
        fed = len(next(iter(feeds.values())))
        parts.append(samples_first(np.asarray(value), batch_axis(declared, np.shape(value), fed, symbols)))
    return float(metric(np.concatenate(parts), labels))


def _drop(metric: Metric, reference: float, value: float) -> float:
    return float(metric.drop(reference, value))


def search_budget(
    prune_at: Callable[[float], tuple[ir.Model, dict[str, float]]],
    evaluate: Callable[[ir.Model], float],
    metric: Metric,
    reference: float,
    max_drop: float,
    *,
    lowest: float = 0.25,
    steps: int = 6,
    tolerance: float = 0.02,
    progress: Callable[[Trial], None] | None = None,
) -> BudgetSearch:
    """Bisect the kept fraction ``f`` in ``[lowest, 1)`` for the most aggressive candidate within ``max_drop``.

    ``prune_at(f)`` returns a pruned model and what was measured on it (``macs_ratio``, ...);
    ``evaluate(model)`` its task metric on the search split.  Stops after ``steps`` trials or when
    the bracket is narrower than ``tolerance``.
    """
    if not max_drop >= 0:
        raise UsageError(f"--max-accuracy-drop must be >= 0, got {max_drop}")
    if not 0.0 < lowest < 1.0:
        raise UsageError(f"the lowest fraction searched must be in (0, 1), got {lowest}")
    trials: list[Trial] = []
    best: tuple[Trial, ir.Model] | None = None
    # ok_hi: least aggressive known fraction within budget; bad_lo: most aggressive failing
    ok_hi: float = 1.0
    bad_lo: float | None = None
    fraction = lowest
    for _ in range(steps):
        start = time.perf_counter()
        model: ir.Model | None = None
        try:
            pruned, measured = prune_at(fraction)
        except UsageError as exc:  # the target cannot be met at this fraction: treat it as out of budget
            trial = Trial(fraction, float("nan"), float("inf"), False, {}, time.perf_counter() - start, str(exc))
        else:
            model = pruned
            value = evaluate(pruned)
            drop = _drop(metric, reference, value)
            trial = Trial(fraction, value, drop, drop <= max_drop + 1e-12, measured, time.perf_counter() - start)
        trials.append(trial)
        if progress is not None:
            progress(trial)
        if trial.within_budget and model is not None:
            if best is None or trial.fraction < best[0].fraction:
                best = (trial, model)
            ok_hi = min(ok_hi, fraction)
        else:
            bad_lo = fraction if bad_lo is None else max(bad_lo, fraction)
        if best is not None and best[0].fraction <= lowest:
            break
        low = bad_lo if bad_lo is not None else lowest
        if ok_hi - low < tolerance:
            break
        fraction = (low + ok_hi) / 2
    if best is None:
        return BudgetSearch(metric.name, reference, max_drop, trials, None,
                            reason=f"every fraction tried ({', '.join(f'{t.fraction:.3f}' for t in trials)}) "
                                   f"lost more than {max_drop:g} {metric.name}")
    return BudgetSearch(metric.name, reference, max_drop, trials, best[0], best[1])


OBJECTIVES = ("macs", "params", "latency")


def prune_within_budget(
    model,
    *,
    max_drop: float,
    data,
    labels,
    metric: str | Metric = "top1",
    objective: str = "macs",
    calib=None,
    holdout: float = 0.3,
    label_output: str | None = None,
    batch: int = 32,
    lowest: float = 0.25,
    steps: int = 6,
    progress: Callable[[Trial], None] | None = None,
    **prune_kwargs: Any,
) -> BudgetSearch:
    """The most pruned model (``objective`` kept smallest: ``prune --target OBJECTIVE=f``) whose task
    ``metric`` on ``data``/``labels`` drops by at most ``max_drop``.

    The last ``holdout`` of the labelled samples is held out: the search never sees it and the winner's
    drop on it is reported (``result.holdout``).  ``calib`` feeds the loss table and the repair (default:
    the search split).  Other keyword arguments go to :func:`onnxsparse.prune` (criterion, repair, ...).
    """
    from ..calibration.data import load_data
    from ..io import load_model
    from ..validate.metrics import resolve_metric
    from ..validate.runner import load_labels
    from .prune import prune

    if objective not in OBJECTIVES:
        raise UsageError(f"--max-accuracy-drop searches a target of {', '.join(OBJECTIVES)}, not {objective!r}")
    for key in ("channels", "heads", "ffn", "threshold", "target"):
        if prune_kwargs.get(key):
            raise UsageError(f"--max-accuracy-drop chooses how much to prune itself: drop --{key}")
    scorer = resolve_metric(metric)
    original = load_model(model)
    source = load_data(data, original)
    label_array = load_labels(labels)
    if len(label_array) != len(source):
        raise UsageError(f"{len(label_array)} labels for {len(source)} data samples; they must match one to one")
    (search, search_labels), (held, held_labels) = split_holdout(source, label_array, holdout)
    calib_source = search if calib is None else calib

    def score(m: ir.Model, split: DataSource, split_labels: np.ndarray) -> float:
        return task_metric(m, split, split_labels, scorer, output=label_output, batch=batch)

    reference = score(original, search, search_labels)

    def prune_at(fraction: float) -> tuple[ir.Model, dict[str, float]]:
        result = prune(original.clone(), target=f"{objective}={fraction:.6g}", calib=calib_source, **prune_kwargs)
        r = result.report
        measured = {"params_ratio": r.params_after / r.params_before if r.params_before else 1.0}
        if r.macs_before:
            measured["macs_ratio"] = (r.macs_after or 0) / r.macs_before
        latency = getattr(r.target, "measured", None) if r.target is not None else None
        if latency is not None and objective == "latency":
            measured["latency_ratio"] = float(latency)
        return result.model, measured

    found = search_budget(prune_at, lambda m: score(m, search, search_labels), scorer, reference, max_drop,
                          lowest=lowest, steps=steps, progress=progress)
    if found.model is not None:
        held_reference, held_candidate = score(original, held, held_labels), score(found.model, held, held_labels)
        found.holdout = {"reference": held_reference, "candidate": held_candidate,
                         "drop": float(scorer.drop(held_reference, held_candidate)), "samples": float(len(held))}
    found.held_out = (held, held_labels)
    return found


@dataclass
class BudgetOutcome:
    """``prune --max-accuracy-drop``: the search, and the winner validated on the held-out split."""

    search: BudgetSearch
    validation: Any = None  # ValidationResult of the winner on the held-out split (None: no winner)

    @property
    def model(self) -> ir.Model | None:
        return self.search.model

    @property
    def passed(self) -> bool:
        """A winner exists and keeps the budget on the data the search never saw."""
        return self.search.model is not None and bool(self.search.holdout_within_budget)


def run_budget(model: Any, options: Any, *, progress: Callable[[Trial], None] | None = None,
               validate_progress: bool = False) -> BudgetOutcome:
    """What ``prune --max-accuracy-drop`` runs, for every front end: search, then validate the winner
    (in memory) against ``model`` on the held-out split.  ``options`` is a
    :class:`~onnxsparse.options.prune.PruneOptions` with ``max_accuracy_drop``, ``data`` and ``labels``."""
    from ..calibration.data import parse_shapes
    from ..validate import validate
    from .prune import default_repair

    if options.max_accuracy_drop is None:
        raise UsageError("run_budget needs max_accuracy_drop")
    found = prune_within_budget(
        model, max_drop=options.max_accuracy_drop, data=options.data, labels=options.labels,
        metric=options.metric, objective=options.target or "macs", calib=options.calib, holdout=options.holdout,
        label_output=options.label_output, criterion=options.criterion, round_to=options.round_to,
        min_keep=options.min_keep, exclude=options.exclude, seed=options.seed,
        shapes=parse_shapes(list(options.shape)) or None, repair=options.repair or default_repair(True),
        damp=options.damp, calib_samples=options.calib_samples, progress=progress,
    )
    if found.model is None:
        return BudgetOutcome(found)
    if found.held_out is None:  # pragma: no cover - the search sets it with every model it keeps
        raise AssertionError("budget search kept a model without its held-out split")
    held, held_labels = found.held_out
    validation = validate(model, found.model, data=held.arrays, labels=held_labels, metric=options.metric,
                          label_output=options.label_output, memory=False, progress=validate_progress)
    return BudgetOutcome(found, validation)
