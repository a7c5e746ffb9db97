"""Structured channel pruning: remove filters/channels so the model becomes a smaller dense model.

``prune(model, channels=0.3)`` normalises the model, builds the dependency
groups (:func:`onnxsparse.graph.build_groups`), scores every prunable group
with a criterion (:mod:`onnxsparse.criteria`), removes the lowest-scoring
``channels`` fraction of each group (or globally with ``global_ranking``) and
rewrites the graph (:func:`onnxsparse.graph.apply_plan`).  Inputs and outputs
keep their names and shapes.  The options are :class:`~onnxsparse.options.prune.PruneOptions`
(the command's flags, the recipe step's keys, ``prune()``'s keywords); :func:`run_prune` does the
work for every front end and :class:`PrunePass` is the same as an ``onnx_ir`` pass.

With calibration data (``calib=``), activations are captured with onnxruntime
(:mod:`onnxsparse.calibration.capture`) for the data-driven criteria
(``activation``, ``wanda``, ``flap``) and the consumers of removed channels are
repaired (:mod:`onnxsparse.passes.reconstruct`: ``bias`` compensation or an
``lstsq`` re-fit, one-shot or ``sequential``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from ..criteria import CALIBRATION_KEY, Criterion, ScoringContext, get_criterion
from ..calibration.data import DEFAULT_CALIB_SAMPLES
from ..errors import Decline, UsageError
from ..graph import DependencyGraph, Group, PrunePlan, RuleRegistry, apply_plan, build_groups
from ..graph.dependency import internal_error
from ..graph.kinds import HEAD_KINDS
from ..io import ModelSource, load_model, own_weights
from .attention_rewrites import rewrite_attention
from .normalize import normalize
from .prune_report import GroupReport, PruneReport, SkippedGroup
from ..options.prune import PruneOptions
from .prune_select import select, select_threshold, unit_multiple

__all__ = ["prune", "run_prune", "PrunePass", "PruneResult", "PruneOptions", "API_ONLY", "PruneReport", "plan_pruning", "score_groups", "DEFAULT_CALIB_SAMPLES",
           "default_repair", "default_criterion", "ROUND_TO_AUTO", "auto_round_to", "kind_ratios",
           "prepare_for_analysis"]

logger = logging.getLogger(__name__)

_FALLBACK = "l2"

#: ``round_to="auto"``: what the CPU's kernels want (see :func:`auto_round_to`).
ROUND_TO_AUTO = "auto"


#: the criterion used when none is asked for: weights alone, or weights times activations with data
DEFAULT_CRITERION = "l2"
DEFAULT_DATA_CRITERION = "wanda"


def default_criterion(has_data: bool) -> str:
    """``wanda`` with calibration data (scores by weight x activation), ``l2`` without."""
    return DEFAULT_DATA_CRITERION if has_data else DEFAULT_CRITERION


def default_repair(has_data: bool) -> str:
    """The repair used when none is asked for: see docs/prune.md ("Calibration") for the measurements."""
    return "lstsq" if has_data else "none"


@dataclass
class PruneResult(PassResult):
    """What a prune run did: the model (``modified`` when units were removed), its report, the plan
    and, when heads or FFN neurons were asked for, the per-block heads report."""

    report: PruneReport
    plan: PrunePlan
    heads: dict[str, Any] | None = None


def score_groups(
    dg: DependencyGraph,
    criterion: str = "l2",
    *,
    seed: int = 0,
    extras: Mapping[str, object] | None = None,
    only: set[int] | None = None,
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Scores per prunable group id (those in ``only`` if given), and the criterion actually used for each."""
    crit = get_criterion(criterion, "structured")
    fallback = get_criterion(_FALLBACK)
    extras = dict(extras or {})
    if crit.requires_data and extras.get(CALIBRATION_KEY) is None:
        raise UsageError(
            f"criterion {crit.name!r} needs calibration data: give --calib DATA "
            "(an .npz keyed by input name, a folder of them, or 'random')"
        )
    ctx = ScoringContext(dg, np.random.default_rng(seed), extras)
    scores: dict[int, np.ndarray] = {}
    used: dict[int, str] = {}
    for group in dg.prunable:
        if only is not None and group.id not in only:
            continue
        # -- begin: a criterion that raises on one group skips that group (dg.skip), the run goes on --
        try:
            s, name = _score_one(group, ctx, crit, fallback)
            s = np.asarray(s, dtype=np.float64).reshape(-1)
            if s.size != group.size:
                raise ValueError(f"criterion {crit.name} returned {s.size} scores for a group of {group.size}")
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001
            logger.debug("criterion %s failed on group %d", crit.name, group.id, exc_info=True)
            dg.skip(group.id, internal_error("criterion", crit.name, exc))
            continue
        # -- end --
        scores[group.id] = s
        used[group.id] = name
    return scores, used


def _score_one(group: Group, ctx: ScoringContext, crit: Criterion, fallback: Criterion) -> tuple[np.ndarray, str]:
    """``crit``'s scores and its name; where it declines the group, the fallback's, then zeros."""
    try:
        return crit.score(group, ctx), crit.name
    except Decline:
        pass
    try:
        return fallback.score(group, ctx), f"{fallback.name} ({crit.name}: not applicable)"
    except Decline:
        return np.zeros(group.size), "none (no weights)"


def kind_ratios(channels: float, heads: float = 0.0, ffn: float | None = None) -> dict[str, float]:
    """The fraction of units removed per group, by group kind (:mod:`onnxsparse.graph.kinds`).

    ``heads`` covers heads and KV groups; ``ffn=None`` prunes FFN neurons like channels.
    """
    for name, ratio in (("channels", channels), ("heads", heads), ("ffn", 0.0 if ffn is None else ffn)):
        if not 0.0 <= ratio < 1.0:
            raise UsageError(f"--{name} must be in [0, 1), got {ratio}")
    return {"channel": channels, "neuron": channels if ffn is None else ffn, "head": heads, "kv_group": heads}


def plan_pruning(
    dg: DependencyGraph,
    channels: float,
    *,
    heads: float = 0.0,
    ffn: float | None = None,
    criterion: str = "l2",
    global_ranking: bool = False,
    round_to: int | str = ROUND_TO_AUTO,
    min_keep: int = 1,
    seed: int = 0,
    extras: Mapping[str, object] | None = None,
    threshold: float | None = None,
    group_ratios: Mapping[int, float] | None = None,
) -> tuple[PrunePlan, dict[int, str]]:
    """Score and select: the plan for removing, from every prunable group, its kind's ratio of units
    (``channels``, ``heads`` for heads and KV groups, ``ffn`` for FFN neurons: :func:`kind_ratios`).

    ``global_ranking`` ranks the groups of one kind together.  ``extras`` reaches the criteria
    (``{"calibration": Capture}`` for the data-driven ones).  ``threshold`` instead removes, from every
    prunable group of any kind, the units whose raw score is below it (:func:`select_threshold`);
    ``group_ratios`` (group id -> ratio, ``prune(target=...)``'s allocation) replaces the kind ratios.
    """
    name = get_criterion(criterion).name
    if threshold is not None:
        scores, used = score_groups(dg, criterion, seed=seed, extras=extras)
        below = select_threshold(scores, threshold, round_to=_unit_round(dg, round_to), min_keep=min_keep)
        return PrunePlan.create(dg, below), {**{g.id: name for g in dg.prunable}, **used}
    if group_ratios is not None:
        return _plan_per_group(dg, group_ratios, criterion, round_to, min_keep, seed, extras)
    ratios = kind_ratios(channels, heads, ffn)
    wanted = {g.id for g in dg.prunable if ratios.get(g.kind, 0.0) > 0}
    if not wanted:  # nothing to remove: no scores needed (data-driven criteria may have no data)
        return PrunePlan.create(dg, {}), {g.id: name for g in dg.prunable}
    scores, used = score_groups(dg, criterion, seed=seed, extras=extras, only=wanted)
    multiples = _unit_round(dg, round_to)
    removed: dict[int, np.ndarray] = {}
    for kind, ratio in ratios.items():
        ids = [g.id for g in dg.prunable if g.kind == kind and g.id in scores]
        if ratio <= 0 or not ids:
            continue
        removed.update(select({i: scores[i] for i in ids}, ratio, global_ranking=global_ranking,
                              round_to={i: multiples[i] for i in ids}, min_keep=min_keep,
                              norm=get_criterion(criterion).global_norm))
    used.update({g.id: name for g in dg.prunable if g.id not in used})
    return PrunePlan.create(dg, removed), used


def _plan_per_group(dg: DependencyGraph, group_ratios: Mapping[int, float], criterion: str, round_to: int | str,
                    min_keep: int, seed: int, extras: Mapping[str, object] | None) -> tuple[PrunePlan, dict[int, str]]:
    name = get_criterion(criterion).name
    wanted = {g.id for g in dg.prunable if group_ratios.get(g.id, 0.0) > 0}
    scores, used = score_groups(dg, criterion, seed=seed, extras=extras, only=wanted) if wanted else ({}, {})
    removed = select(scores, 0.0, round_to=_unit_round(dg, round_to), min_keep=min_keep, group_ratios=group_ratios)
    used.update({g.id: name for g in dg.prunable if g.id not in used})
    return PrunePlan.create(dg, removed), used


def auto_round_to() -> tuple[int, str]:
    """(channel multiple, why) for this machine's onnxruntime CPU kernels.

    onnxruntime runs a Conv in its fast blocked layout (NCHWc) only when the
    channel counts are multiples of the SIMD block: a Paddle detector pruned to
    0.50x MACs ran at 0.95x latency with odd widths and 0.52x with multiples of 16.
    """
    from ..quantize.cpu import detect_cpu

    cpu = detect_cpu()
    if cpu.nchwc_block > 1:
        return cpu.nchwc_block, f"auto: onnxruntime's blocked NCHWc Conv kernels use {cpu.nchwc_block}-channel blocks on this CPU"
    return 1, "auto: no blocked Conv kernels on this CPU, every width runs alike"


def _unit_round(dg: DependencyGraph, round_to: int | str) -> dict[int, int]:
    """``round_to`` counts channels; a unit may hold several (grouped convs, shuffles, norm groups).

    ``"auto"`` rounds only the groups whose width is a multiple of the CPU's
    block (those the blocked kernels run today), to that block; other groups
    are not in blocked layout anyway and are pruned freely.  Heads and KV groups
    are never rounded: their width is a head count, not a kernel's channel block.
    """
    if round_to == ROUND_TO_AUTO:
        block, _ = auto_round_to()
        multiples = {g.id: block if block > 1 and g.channels % block == 0 else 1 for g in dg.prunable}
    elif isinstance(round_to, int) and round_to >= 1:
        multiples = {g.id: round_to for g in dg.prunable}
    else:
        raise UsageError(f"round-to must be 'auto' or an integer >= 1, got {round_to!r}")
    return {g.id: 1 if g.kind in HEAD_KINDS else unit_multiple(multiples[g.id], g.channels // max(g.size, 1))
            for g in dg.prunable}


def prepare_for_analysis(model: ir.Model, *, normalized: bool = False) -> ir.Model:
    """The model as the dependency analysis reads it, in place: normalised (unless ``normalized``),
    and the exporter forms that hide the head axis rewritten exactly (:mod:`.attention_rewrites`)."""
    if not normalized:
        normalize(model)
    # Initializers are no longer graph inputs after normalisation: IR >= 4 allows that.
    model.ir_version = max(int(model.ir_version), 4)
    rewrite_attention(model)
    return model


def _mac_dims(model: ir.Model, shapes: Mapping[str, tuple[int, ...]] | None) -> dict[str, int]:
    """Symbolic input dims bound to 1 (per-sample MACs) unless ``shapes`` fixes them."""
    fixed = set(shapes or ())
    dims: dict[str, int] = {}
    for v in model.graph.inputs:
        if v.name in fixed or v.shape is None:
            continue
        for d in v.shape:
            symbol = None if isinstance(d, int) else getattr(d, "value", None)
            if symbol:
                dims.setdefault(symbol, 1)
    return dims


def _measure(model: ir.Model, shapes, dims) -> tuple[int, int | None, int]:
    from ..analysis import count_macs, count_params, weight_bytes

    try:
        macs = count_macs(model, shapes, dims=dims)
    except Exception:  # noqa: BLE001 - MACs are informative; never fail pruning on them
        logger.debug("MAC count failed", exc_info=True)
        macs = None
    return count_params(model), macs, weight_bytes(model)


def _prune(
    model: ModelSource,
    channels: float,
    *,
    heads: float = 0.0,
    ffn: float | None = None,
    criterion: str | None = None,
    global_ranking: bool = False,
    round_to: int | str = ROUND_TO_AUTO,
    min_keep: int = 1,
    exclude: Iterable[str] = (),
    block: Mapping[tuple[str, int], str] | None = None,
    allow_signature_change: bool = False,
    seed: int = 0,
    registry: RuleRegistry | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    normalized: bool = False,
    measure: bool = True,
    progress: bool = False,
    dead: bool = False,
    calib: object | None = None,
    calib_samples: int | None = DEFAULT_CALIB_SAMPLES,
    repair: str | None = None,
    sequential: bool | None = None,
    damp: float | None = None,
    calib_batch: int = 32,
    threshold: float | None = None,
    target: str | None = None,
) -> PruneResult:
    """The work of :func:`run_prune`: remove ``channels`` (a fraction) of the channels of every prunable group, ``heads`` of the heads
    (KV groups under grouped-query attention) of every attention block and ``ffn`` of the neurons of
    every FFN (``None``: ``channels``).  All three are groups of one dependency analysis
    (:mod:`onnxsparse.graph.kinds`); a block that cannot be pruned is a skipped group with its reason.

    ``model`` is a path, bytes, ``ModelProto`` or ``onnx_ir.Model`` (modified in
    place).  ``criterion`` names a registered criterion; ``global_ranking``
    ranks all groups together; ``round_to`` keeps channel counts multiples of
    N (``"auto"``: of the CPU's blocked-kernel width, for the groups already that wide); ``min_keep`` channels always stay per group; ``exclude`` names nodes
    (or fnmatch patterns, of node or weight names) whose outputs keep every channel;
    ``allow_signature_change`` lets heads whose KV cache is a graph input/output go (their shapes
    change, see ``prune_heads``' ``signature_changes``); ``block`` maps
    ``(tensor name, axis)`` slots to a reason they must not change.  ``shapes`` fixes input shapes for the
    MAC count (symbolic dims count as 1 otherwise).  ``normalized=True`` skips
    :func:`~onnxsparse.normalize` when the caller already ran it.

    ``dead=True`` first removes the units that are dead or constant on ``calib`` exactly
    (:mod:`.dead_units`: constants folded into the consumers' biases); ``channels`` etc. then apply
    to what remains.

    Calibration: ``calib`` is anything :func:`onnxsparse.calibration.load_data`
    accepts (``.npz`` path, folder, ``"random"``, dict of arrays, ``DataSource``);
    the first ``calib_samples`` samples are used.  It feeds the data-driven
    criteria and the ``repair`` of the layers that lost inputs (``"none"``,
    ``"bias"``, ``"lstsq"``; ``None``: ``lstsq`` with data, else ``none``),
    ``sequential`` (default when repairing) or one-shot (``sequential=False``),
    with ridge ``damp`` (default 0.01).

    ``threshold``: instead of ratios, remove every unit whose raw criterion score is below it
    (``inspect`` shows the l2 scores' histogram); the ratios must then be 0.

    ``target`` (``"macs=R"``, ``"params=R"`` or ``"latency=R"``, R the fraction of the original kept)
    replaces the ratios: per-group widths are allocated on a loss table measured on ``calib`` so that
    the pruned model meets the target, verified by measuring it (:mod:`.prune_target`); ``channels``
    is then not used and ``heads``/``ffn`` must stay unset.
    """
    from .._progress import progress_bar
    from .reconstruct import DEFAULT_DAMP, REPAIRS

    given, model = model, own_weights(load_model(model))  # an ir.Model built from a proto reads weights once
    criterion = default_criterion(calib is not None) if criterion is None else criterion

    target = None if target is None else _check_target(target, calib, heads, ffn)
    if target is not None and channels > 0:
        raise UsageError("--target allocates every group's ratio itself: drop --channels")
    ratios = kind_ratios(channels, heads, ffn)
    removing = target is not None or threshold is not None or any(r > 0 for r in ratios.values())
    if threshold is not None and (target is not None or any(r > 0 for r in ratios.values())):
        raise UsageError("--threshold replaces the ratios: give --threshold or --channels/--heads/--ffn/--target, "
                         "not both")
    crit = get_criterion(criterion, "structured")  # fail fast on unknown names
    repair = default_repair(calib is not None) if repair is None else repair
    if repair not in REPAIRS:
        raise UsageError(f"unknown repair {repair!r} (choose from {', '.join(REPAIRS)})")
    if calib is None and removing:
        if crit.requires_data:
            raise UsageError(f"criterion {crit.name!r} needs calibration data: give --calib DATA "
                             "(an .npz keyed by input name, a folder of them, or 'random')")
        if repair != "none":
            raise UsageError(f"--repair {repair} needs calibration data: give --calib DATA")
        if sequential:
            raise UsageError("--sequential needs calibration data (--calib) and a repair")
    sequential = (repair != "none") if sequential is None else bool(sequential)
    if dead and calib is None:
        raise UsageError("--dead needs calibration data: give --calib DATA (dead units are found on it)")
    if calib_samples is not None and calib_samples < 1:
        raise UsageError(f"--calib-samples must be >= 1, got {calib_samples}")
    damp = DEFAULT_DAMP if damp is None else float(damp)
    exclude = tuple(exclude)
    timings: dict[str, float] = {}
    wants_data = calib is not None and removing and (crit.requires_data or repair != "none" or target is not None)
    steps = ["normalise", "measure", "analyse", *(["calibrate"] if wants_data else []),
             *(["target"] if target is not None else []), "score",
             *(["repair"] if wants_data and repair != "none" else []), "rewrite", "measure"]
    steps += ["dead units"] if dead else []
    bar = progress_bar(len(steps), "prune", unit="step", enabled=progress)

    def stage(name: str) -> None:
        if bar is not None:
            bar.set_postfix_str(name)

    def step(name: str, start: float) -> float:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - start
        if bar is not None:
            bar.update(1)
        return now

    t = time.perf_counter()
    if not normalized:
        stage("normalise")
    prepare_for_analysis(model, normalized=normalized)
    t = step("normalize_s", t)
    dims = _mac_dims(model, shapes)
    before = _measure(model, shapes, dims) if measure else (0, None, 0)
    t = step("measure_s", t)
    dead_report = None
    if dead:
        from .dead_units import remove_dead_units

        stage("dead units")
        dead_report = remove_dead_units(
            model, _calibration_source(calib, model, shapes, calib_samples, seed), batch_size=calib_batch, seed=seed,
            min_keep=min_keep, round_to=round_to, build=dict(registry=registry, exclude=exclude, block=block,
                                          allow_signature_change=allow_signature_change))
        t = step("dead_s", t)
    dg = build_groups(model, registry=registry, exclude=exclude, block=block,
                      allow_signature_change=allow_signature_change)
    t = step("analysis_s", t)
    extras: dict[str, object] = {}
    source = cap = None
    if wants_data:
        from ..calibration.capture import capture
        from .reconstruct import candidate_requests

        stage("calibrate")
        source = _calibration_source(calib, model, shapes, calib_samples, seed)
        probe_channels, probe_layers = candidate_requests(dg)
        cap = capture(model, source, channels=probe_channels if crit.requires_data else (),
                      layers=probe_layers if repair == "bias" and not sequential else (),
                      batch_size=calib_batch, seed=seed)
        extras[CALIBRATION_KEY] = cap
        t = step("calibration_s", t)
    group_ratios = target_report = None
    if target is not None:
        from .prune_target import allocate_target

        if source is None:  # the options' check() asks for calibration data with a target
            raise UsageError(f"--target {target} needs calibration data (--calib DATA)")
        stage("target")
        group_ratios, target_report = allocate_target(
            model, dg, target, calib=source, multiples=_unit_round(dg, round_to), min_keep=min_keep,
            criterion=criterion, samples=len(source), shapes=shapes, dims=dims, seed=seed, repair=repair, damp=damp,
            sequential=sequential,
            build=lambda m: build_groups(m, registry=registry, exclude=exclude, block=block,
                                         allow_signature_change=allow_signature_change))
        t = step("target_s", t)
    plan, used = plan_pruning(
        dg, channels, heads=heads, ffn=ffn, criterion=criterion, global_ranking=global_ranking, round_to=round_to, min_keep=min_keep,
        seed=seed, extras=extras, threshold=threshold, group_ratios=group_ratios,
    )
    t = step("scoring_s", t)
    repair_report = None
    if source is not None and repair != "none":  # source: the calibration data, read when wants_data
        from .reconstruct import reconstruct

        stage("repair")
        rec = reconstruct(dg, plan, source, mode=repair, sequential=sequential, damp=damp, stats=cap,
                          batch_size=calib_batch, seed=seed)
        repair_report = rec.report
        t = step("repair_s", t)
        rec.prune_with(plan, model)
    else:
        apply_plan(plan)
    if target_report is not None and target_report.blocks:  # blocks the allocation removes whole, after the widths
        from .blocks import quiet_folding, remove_by_values

        with quiet_folding():
            remove_by_values(model, [(b["x"], b["branch_output"]) for b in target_report.blocks])
    t = step("rewrite_s", t)
    after = _measure(model, shapes, dims) if measure else (0, None, 0)
    step("measure_s", t)
    if bar is not None:
        bar.close()
    timings["prune_s"] = sum(timings.get(k, 0.0) for k in ("analysis_s", "calibration_s", "target_s", "scoring_s",
                                                              "repair_s", "rewrite_s"))
    timings["total_s"] = sum(v for k, v in timings.items() if k != "prune_s")
    timings["prune_s"] += timings.get("dead_s", 0.0)

    report = PruneReport(
        channels=channels,
        heads=heads,
        ffn=ffn,
        criterion=get_criterion(criterion).name,
        global_ranking=global_ranking,
        round_to=f"auto ({auto_round_to()[0]})" if round_to == ROUND_TO_AUTO else round_to,
        min_keep=min_keep,
        exclude=exclude,
        params_before=before[0],
        params_after=after[0],
        macs_before=before[1],
        macs_after=after[1],
        weight_bytes_before=before[2],
        weight_bytes_after=after[2],
        mac_dims=dims,
        timings=timings,
        dead=dead_report,
        analysis={k: v for k, v in dg.stats.items() if not k.endswith("_s")},
        calibration=None if source is None else {
            "data": getattr(source, "origin", "") or "data",
            "samples": len(source),
            "capture_s": cap.seconds if cap is not None else 0.0,
        },
        repair=repair_report,
        target=target_report,
    )
    for g in dg.prunable:
        kept = plan.kept(g.id)
        per_unit = g.channels // g.size if g.size else 1
        report.groups.append(
            GroupReport(
                id=g.id,
                root=str(g.root),
                nodes=g.nodes,
                total=g.size,
                kept=kept,
                channels_before=g.channels,
                channels_after=kept * per_unit,
                criterion=used.get(g.id, criterion),
                kind=g.kind,
            )
        )
    for g in dg.skipped:
        report.skipped.append(SkippedGroup(g.id, str(g.root), g.nodes, g.size, g.reason or "", g.reasons[:5], g.kind))
    if not report.groups and not report.skipped:
        report.no_groups_reason = why_no_groups(model)
    logger.info(
        "pruned %d of %d prunable groups (%d skipped)", len(report.pruned_groups), len(report.groups), len(report.skipped)
    )
    if (not report.pruned_groups and not (dead_report and dead_report.removed)
            and not (target_report and target_report.blocks) and isinstance(given, (str, os.PathLike))):
        # Nothing removed: hand back the input as it was, not its normalised form, so a no-op
        # run cannot change what onnxruntime fuses or how big the file is.
        model = load_model(given)
        report.unchanged = True
        report.params_after, report.macs_after, report.weight_bytes_after = (
            report.params_before, report.macs_before, report.weight_bytes_before)
    modified = bool(report.pruned_groups or (dead_report and dead_report.removed))
    return PruneResult(model, modified, report, plan)


#: Ops whose weight input makes channel groups (a weight reaching them through anything else does not).
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def why_no_groups(model: ir.Model) -> str:
    """A reason, read off the graph, for finding no channel group at all ("0 of 0" is never the whole answer)."""
    from ..graph.rules.quantize import UNSLICED_QUANTIZED_OPS  # quantized models: graph/rules/quantize.py

    ops = {n.op_type for n in model.graph}
    if "DynamicQuantizeLinear" in ops:
        return ("the model is dynamically quantized (DynamicQuantizeLinear -> MatMulInteger/ConvInteger): activation "
                "scales are computed over the whole tensor at run time, so removing channels would change the kept "
                "ones; prune the float model, then quantize (or prune a static QDQ / QOperator model)")
    unsliced = sorted(ops & UNSLICED_QUANTIZED_OPS)
    if unsliced:
        return (f"its quantized ops ({', '.join(unsliced)}) are fused QOperator nodes no rule slices "
                "(QLinearConv, QLinearMatMul, QGemm and QDQ are); prune the QDQ or float model")
    weighted = [n for n in model.graph if n.op_type in _WEIGHTED]
    if not weighted:
        return f"the graph has no Conv, Gemm or MatMul (ops: {', '.join(sorted(ops)[:12])})"
    via: dict[str, int] = {}
    for node in weighted:
        for value in node.inputs[1:2]:
            if value is None:
                continue
            producer = value.producer()
            if producer is not None and value.const_value is None:
                via[producer.op_type] = via.get(producer.op_type, 0) + 1
    if via.get("DequantizeLinear"):
        return (f"the weights of {via['DequantizeLinear']} of {len(weighted)} Conv/Gemm/MatMul nodes are quantized "
                "(QDQ) in a form the DequantizeLinear rule does not slice (e.g. blocked quantization, run-time "
                "scales); prune the float model, then quantize")
    if via and sum(via.values()) == len(weighted):
        kinds = ", ".join(f"{op} ({n})" for op, n in sorted(via.items()))
        return f"no Conv/Gemm/MatMul reads a constant weight: they are computed at run time by {kinds}"
    return f"the dependency analysis found no channel axis in the weights of its {len(weighted)} Conv/Gemm/MatMul nodes"


def _check_target(target, calib, heads: float, ffn: float | None):
    """The parsed target; it needs calibration data (the loss table) and replaces the ratios."""
    from .prune_target import parse_target

    parsed = parse_target(target)
    if calib is None:
        raise UsageError(f"--target {parsed} needs calibration data (--calib DATA): the per-group loss table is "
                         "measured on it")
    if heads or ffn is not None:
        raise UsageError("--target allocates channels, heads and FFN neurons itself: drop --heads / --ffn")
    return parsed


def _calibration_source(calib, model: ir.Model, shapes, samples: int | None, seed: int):
    from ..calibration.data import load_data

    source = load_data(calib, model, shapes=shapes, samples=samples or DEFAULT_CALIB_SAMPLES, seed=seed)
    if samples is not None and len(source) > samples:
        source = source.take(samples)
    return source




#: Keywords of :func:`prune` that are Python objects, not options (no flag, no recipe key).
API_ONLY = ("registry", "block", "shapes", "normalized", "measure", "progress")


def run_prune(
    model: ModelSource,
    options: PruneOptions,
    *,
    data: object | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    registry: RuleRegistry | None = None,
    block: Mapping[tuple[str, int], str] | None = None,
    normalized: bool = False,
    measure: bool = True,
    progress: bool = False,
) -> PruneResult:
    """Prune ``model`` as ``options`` say: what the CLI, :func:`prune`, :class:`PrunePass` and a recipe
    step all run, so they write the same model.

    ``data`` is in-memory calibration data (a dict of arrays or ``DataSource``) used instead of
    ``options.calib``; ``shapes`` (input name -> dims) replaces ``options.shape``.  The accuracy-budget
    search (``max_accuracy_drop``) is :func:`onnxsparse.passes.budget.prune_within_budget`: it
    validates a saved model on held-out data, which only the ``prune`` command does.
    """
    from ..calibration.data import parse_shapes
    from .prune_heads import heads_report

    if options.max_accuracy_drop is not None:
        raise UsageError("max_accuracy_drop searches many pruned models and validates the winner: call "
                         "onnxsparse.passes.budget.run_budget(model, options) (the prune command and recipes do)")
    if shapes is None and options.shape:
        shapes = parse_shapes(list(options.shape))
    calib = data if data is not None else options.calib
    result = _prune(
        model, options.channels or 0.0, heads=options.heads, ffn=options.ffn, criterion=options.criterion,
        global_ranking=options.global_ranking, round_to=options.round_to, min_keep=options.min_keep,
        exclude=options.exclude, block=block, allow_signature_change=options.allow_signature_change,
        seed=options.seed, registry=registry, shapes=shapes or None, normalized=normalized, measure=measure,
        progress=progress, dead=options.dead, calib=calib, calib_samples=options.calib_samples,
        repair=options.repair, sequential=options.sequential, damp=options.damp, calib_batch=options.calib_batch,
        threshold=options.threshold, target=options.target,
    )
    if options.heads or options.ffn:
        result.heads = heads_report(result, heads=options.heads, ffn=result.report.ffn_ratio,
                                    criterion=result.report.criterion, round_to=options.round_to)
    return result


def prune(model: ModelSource, channels: float | None = None, **kwargs: Any) -> PruneResult:
    """``onnxsparse prune`` from Python: the keywords are the command's options (:class:`PruneOptions`,
    ``--round-to`` -> ``round_to``, ``--global`` -> ``global_ranking``), checked the same way.

    ``model`` is a path, bytes, ``ModelProto`` or ``onnx_ir.Model`` (modified in place).  Beyond the
    options: ``calib`` may also be in-memory data (a dict of arrays or a ``DataSource``), and
    ``registry``, ``block``, ``shapes``, ``normalized``, ``measure``, ``progress`` go to
    :func:`run_prune`.  ``prune("m.onnx", heads=0.25, ffn=0.25, calib="data.npz")`` writes what
    ``onnxsparse prune m.onnx --heads 0.25 --ffn 0.25 --calib data.npz`` writes.
    """
    extra = {k: kwargs.pop(k) for k in API_ONLY if k in kwargs}
    calib = kwargs.get("calib")
    data = None
    if calib is not None and not isinstance(calib, (str, os.PathLike)):
        data = kwargs.pop("calib")
    if channels is not None:
        kwargs["channels"] = channels
    options = PruneOptions.from_kwargs(kwargs, "prune()")
    return run_prune(model, options, data=data, **extra)


#: Key of the ``ir.Model.meta`` entry a :class:`PrunePass` leaves: the options it applied, and its result.
_APPLIED = "onnxsparse.prune"


class PrunePass(ir.passes.InPlacePass):
    """:func:`run_prune` as an ``onnx_ir`` pass; the result carries the report.

    A ratio is relative to the model it meets, so pruning again would remove it again: the pass
    records what it applied in the model's (in-memory) ``meta`` and a second run of the same options
    on that model changes nothing (``PassManager(steps=3)`` prunes once, then stops).
    """

    def __init__(self, options: PruneOptions | None = None, /, **kwargs: Any) -> None:
        super().__init__()
        if options is not None and kwargs:
            raise UsageError("PrunePass: give a PruneOptions or keywords, not both")
        self.runtime = {k: kwargs.pop(k) for k in API_ONLY if k in kwargs}
        self.options = options if options is not None else PruneOptions.from_kwargs(kwargs, "PrunePass()")

    def requires(self, model: ir.Model) -> None:
        """Sparse-stored weights live in decode subgraphs the dependency analysis cannot slice."""
        from ..formats import is_decode_node, read_storage

        if read_storage(model) or any(is_decode_node(node) for node in model.graph):
            raise ir.passes.PreconditionError(f"PrunePass: {PruneOptions.refuses['sparse']}: densify it first")

    def call(self, model: ir.Model) -> PruneResult:
        applied = model.meta.get(_APPLIED)
        if applied is not None and applied[0] == self.options:
            previous: PruneResult = applied[1]
            return PruneResult(model, False, previous.report, previous.plan, previous.heads)
        result = run_prune(model, self.options, normalized=False, **self.runtime)
        if result.model is not model:  # nothing removed: prune hands back the input unchanged
            result = replace(result, model=model)
        model.meta[_APPLIED] = (self.options, result)
        return result

    def ensures(self, model: ir.Model) -> None:
        applied = model.meta.get(_APPLIED)
        if applied is None or applied[0] != self.options:
            raise ir.passes.PostconditionError("PrunePass: the model does not record the prune it ran")
