"""``prune --target macs=R|params=R|latency=R``: per-group ratios that meet a target at the least predicted loss.

A uniform ratio treats a layer whose removal costs nothing like one that breaks the
model.  Here (docs/prune.md "Targets"):

1. **Loss table** - :func:`onnxsparse.passes.sensitivity.sensitivity` measures, per
   prunable group (channels, heads, KV groups, FFN neurons: all kinds in one allocation)
   and per ratio of a ladder, the relative output error of pruning that group alone.
2. **Options** - each group may keep only the widths ``prune`` would keep (multiples of
   its ``round_to`` unit, at least ``min_keep``): the ladder is snapped to those widths
   and the loss of a width the ladder did not measure is interpolated between measured ones.
3. **Cost table** - per option, the MACs or parameters the group's removed units carry,
   counted exactly from the analysis' keep-masks (MACs: each counted node loses the
   fraction of its pruned axis; params: each weight the fraction of its pruned axes).
   ``latency`` allocates on the MAC cost (widths already limited to the blocked-kernel
   multiples) and corrects by timing.  ``LATENCY_TABLE = True`` allocates instead on a lookup
   table measured on the CPU provider (NetAdapt / HALP): each group pruned alone to each
   width, timed interleaved with the original, the fraction of the latency it saves; cached
   on disk per model, provider and machine (``$XDG_CACHE_HOME/onnxsparse/latency/``, default
   ``~/.cache``).  Not the default: on ResNet-18 and a BERT-width encoder the single-group
   savings are small against timing noise and do not add up, and it missed latency=0.6 where
   the MAC cost met it (docs/prune.md "Targets").
4. **Allocation** - :mod:`onnxsparse.passes.allocate` (a knapsack over the budget), first
   within a window below the budget as wide as the tolerance band (the least loss far below
   the budget would miss the target), then under the budget alone.
5. **Verify and correct** - the chosen widths are applied to a copy and the result is
   measured (MACs / params counted on the pruned copy, latency timed with onnxruntime
   interleaved with the original).  The costs of several groups do not add exactly (a
   Conv between two pruned groups loses the product of their fractions), so when the
   measurement misses the target the budget is scaled by ``target / measured`` (or
   bisected, when that leaves the bracket of budgets known to remove too much and too
   little) and the knapsack re-solved, for a few rounds; every measured round is reported.

**Whole blocks** (:mod:`.blocks`): every removable residual block ``x + f(x)`` is an action of the
same knapsack, with the loss the sensitivity table measured for dropping its branch and the cost its
branch carries (MACs or params of the branch nodes; the lookup table: timed alone).  The groups that
lie wholly inside the branch and the block form one item: its options are the Pareto-optimal widths
of those groups (:func:`~onnxsparse.passes.allocate.pareto_merge`) plus "remove the block", so a
removed block's groups add no further cost or loss.  Groups reaching outside the branch (the residual
stream's channels) stay items of their own; the part of their cost inside a removed branch is
counted twice in the prediction and corrected by the measured rounds.  Blocks whose branches overlap
are offered only once (the first).  The plan applies the widths, then removes the blocks (found
again by their value names, which width pruning keeps).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from ..errors import UsageError
from .allocate import min_cost, pareto_merge, solve
from .blocks import Block
from .prune_report import TargetReport, TargetRound

if TYPE_CHECKING:
    from ..graph import DependencyGraph

__all__ = ["TARGET_METRICS", "LADDER", "TOLERANCE", "Target", "parse_target", "GroupOptions", "group_options",
           "offered_widths", "allocate_target"]

logger = logging.getLogger(__name__)

#: what a target can bound: the fraction of the original's MACs, parameters or CPU latency kept
TARGET_METRICS = ("macs", "params", "latency")
#: removal ratios the loss table measures per group (snapped to the widths each group may keep)
LADDER: tuple[float, ...] = tuple(i / 8 for i in range(1, 8))
#: a result within this fraction of the target meets it (``|measured - R| <= TOLERANCE * R``; latency: ``<=``)
TOLERANCE = 0.02
#: correction rounds at most (latency: each round times two models)
MAX_ROUNDS = {"macs": 6, "params": 6, "latency": 4}
#: seconds of timed runs per model per latency round
LATENCY_BUDGET_S = 1.0
#: seconds of timed runs per model per entry of the latency lookup table
TABLE_BUDGET_S = 0.25
#: allocate ``latency`` targets on the measured lookup table instead of MACs (see the module docstring)
LATENCY_TABLE = False
#: warm-up runs and timed rounds at least per table entry (a 0.5 s model then costs ~3 s per entry)
TABLE_WARMUP, TABLE_MIN_RUNS = 2, 3
#: in-band allocations the verification round prunes, repairs and measures whole (the least loss is kept)
VERIFY_CANDIDATES = 3
#: target measurements the verification round may spend looking for in-band alternatives
VERIFY_MEASUREMENTS = 6
#: a block whose removal alone leaves this relative output error (1.0: as far off as an all-zero output) is
#: not offered: removing it meets a target on paper with a broken model (digits_resnet's first block: 2.83)
RUIN_LOSS = 1.0


@dataclass(frozen=True)
class Target:
    metric: str
    ratio: float

    def __str__(self) -> str:
        return f"{self.metric}={self.ratio:g}"


def parse_target(text: str | Target) -> Target:
    """``"macs=0.7"`` -> ``Target("macs", 0.7)``; :class:`UsageError` on anything else."""
    if isinstance(text, Target):
        return text
    metric, sep, value = str(text).partition("=")
    metric = metric.strip().lower()
    if not sep or metric not in TARGET_METRICS:
        raise UsageError(f"bad --target {text!r}: expected {'|'.join(f'{m}=R' for m in TARGET_METRICS)} "
                         "(R = fraction of the original kept, e.g. macs=0.7)")
    try:
        ratio = float(value)
    except ValueError:
        raise UsageError(f"bad --target {text!r}: {value.strip()!r} is not a number") from None
    if not 0.0 < ratio < 1.0 or not math.isfinite(ratio):
        raise UsageError(f"bad --target {text!r}: R must be in (0, 1), the fraction of the original kept")
    return Target(metric, ratio)


@dataclass
class GroupOptions:
    """The widths one group may keep, with the predicted loss and the cost saved of each (option 0: keep all)."""

    gid: int
    kind: str
    size: int
    keep: list[int]
    loss: list[float]
    saved: list[float] | None = None


def _allowed(size: int, multiple: int, min_keep: int) -> list[int]:
    """Kept counts ``prune`` can produce for a group (see ``prune_select.round_keep``), below ``size``."""
    floor = min(max(min_keep, 1), size)
    if multiple <= 1 or size < multiple:
        return list(range(floor, size))
    return [k for k in range(multiple, size, multiple) if k >= floor]


def group_options(size: int, multiple: int, min_keep: int, measured: Mapping[int, float],
                  ladder: Sequence[float] = LADDER) -> tuple[list[int], list[float]]:
    """(kept widths, predicted losses) of one group: the ladder snapped to the allowed widths.

    ``measured`` maps units removed -> loss.  A width whose removal was not measured gets the
    loss interpolated linearly in units removed (0 removed: no loss); widths beyond the
    largest measured removal are not offered.
    """
    allowed = _allowed(size, multiple, min_keep)
    points = sorted((int(n), float(v)) for n, v in measured.items() if n > 0)
    if not allowed or not points:
        return [size], [0.0]
    xs = np.array([0] + [n for n, _ in points], dtype=np.float64)
    ys = np.array([0.0] + [v for _, v in points])
    ys = np.where(np.isfinite(ys), ys, 1e30)
    widths = {size}
    for ratio in ladder:
        want = size - math.floor(ratio * size + 1e-9)
        widths.add(min(allowed, key=lambda k: (abs(k - want), -k)))
    keep = sorted((k for k in widths if size - k <= xs[-1]), reverse=True)
    loss = [0.0 if k == size else float(np.interp(size - k, xs, ys)) for k in keep]
    return keep, loss


def offered_widths(gid: int, keep: Sequence[int], loss: Sequence[float],
                   not_offered: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """``keep``/``loss`` without the widths whose predicted loss alone is >= :data:`RUIN_LOSS`.

    Such a width meets a target on paper with a broken model, as a ruinous block removal would; each
    one left out is appended to ``not_offered`` (group, kept, loss) so the report can say so.
    """
    kept: list[int] = []
    losses: list[float] = []
    for k, v in zip(keep, loss):
        if v >= RUIN_LOSS:
            not_offered.append({"group": gid, "kept": k, "loss": v})
        else:
            kept.append(k)
            losses.append(v)
    return kept, losses


def snapped_ratios(sizes: Sequence[tuple[int, int, int]], ladder: Sequence[float] = LADDER,
                   limit: int = 16) -> tuple[float, ...]:
    """The ladder plus the exact removal ratios the snapped widths need, when that stays within ``limit``
    ratios (``sizes``: (size, multiple, min_keep) per group); else the ladder (the rest is interpolated)."""
    extra: set[float] = set()
    for size, multiple, min_keep in sizes:
        allowed = _allowed(size, multiple, min_keep)
        for ratio in ladder:
            if not allowed:
                break
            want = size - math.floor(ratio * size + 1e-9)
            k = min(allowed, key=lambda w: (abs(w - want), -w))
            extra.add(round((size - k) / size, 12))
    ratios = sorted(set(ladder) | extra)
    return tuple(ratios) if len(ratios) <= limit else tuple(ladder)


# -- cost tables ------------------------------------------------------------------------------

def _node_macs(model: ir.Model, shapes, dims) -> dict[str, tuple[ir.Node, int]]:
    from ..analysis import infer_shapes
    from ..analysis.macs import macs_table

    rows, _ = macs_table(model, infer_shapes(model, shapes, dims=dims))
    nodes = {n.name: n for n in model.graph}
    return {r.name: (nodes[r.name], int(r.macs)) for r in rows
            if r.graph == "main" and r.macs and r.name in nodes}


def _saved(metric: str, masks: Mapping[tuple[str, int], np.ndarray], macs, weights) -> float:
    if metric == "params":
        total = 0.0
        for name, shape, numel in weights:
            kept = 1.0
            for axis in range(len(shape)):
                mask = masks.get((name, axis))
                if mask is not None and mask.size:
                    kept *= float(mask.mean())
            total += numel * (1.0 - kept)
        return total
    from .sensitivity import macs_removed

    return macs_removed(macs.values(), masks)


@dataclass(frozen=True)
class _Choice:
    """One option of a knapsack item: the narrowed groups' widths and the blocks it removes."""

    keep: tuple[tuple[int, int], ...]
    blocks: tuple[int, ...]
    loss: float
    saved: float


@dataclass
class BlockCandidate:
    """A removable residual block offered to the allocation, with the groups wholly inside its branch."""

    block: Block
    loss: float
    inner: tuple[int, ...]
    saved: float = 0.0


def block_candidates(model: ir.Model, dg, block_losses: Mapping[str, float | None],
                     options: Sequence[GroupOptions],
                     declined: list[dict[str, Any]] | None = None) -> list[BlockCandidate]:
    """Removable blocks of ``model`` with a measured loss (``block_losses``: Add label -> rel. error) below
    :data:`RUIN_LOSS`, branches pairwise disjoint (a block overlapping an earlier one is left out), and the
    option groups all of whose nodes are inside each branch.  Removable blocks left out are appended to
    ``declined`` (``add``, ``reason``); blocks that are not removable carry their reason already."""
    from .blocks import find_blocks, quiet_folding

    with quiet_folding():
        found = find_blocks(model)
    used: set[str] = set()
    out: list[BlockCandidate] = []
    for block in found:
        loss = block_losses.get(block.add)
        nodes = set(block.nodes)
        if not block.removable:
            continue
        if loss is None or not math.isfinite(loss):
            reason = "its removal was not measured"
        elif loss >= RUIN_LOSS:
            reason = f"removing it alone leaves rel. output error {loss:.4g} >= {RUIN_LOSS:g} (a broken model)"
        elif nodes & used:
            reason = "its branch overlaps a block offered before it"
        else:
            used |= nodes | {block.add}
            inner = tuple(o.gid for o in options if set(dg.groups[o.gid].nodes) <= nodes)
            out.append(BlockCandidate(block, float(loss), inner))
            continue
        if declined is not None:
            declined.append({"add": block.add, "reason": reason})
    return out


def _block_saved(model: ir.Model, candidates: Sequence[BlockCandidate], metric: str, shapes) -> None:
    """Fill ``saved`` of every candidate: the MACs (per sample) or the weights only its branch carries."""
    from .blocks import _node_macs, node_label

    per_node = _node_macs(model, shapes) if metric != "params" else {}
    order = {id(n): i for i, n in enumerate(model.graph)}
    labels = {node_label(n, order): id(n) for n in model.graph}
    for c in candidates:
        if metric == "params":
            c.saved = float(c.block.params)
        else:
            c.saved = float(sum(per_node.get(labels[name], 0) for name in c.block.nodes if name in labels))


def _items(options: Sequence[GroupOptions], candidates: Sequence[BlockCandidate]) -> list[list[_Choice]]:
    """Knapsack items: one per group outside every candidate block; one per block (its inner groups'
    Pareto-optimal widths, or the block removed)."""
    inner = {gid for c in candidates for gid in c.inner}
    by_gid = {o.gid: o for o in options}
    items: list[list[_Choice]] = []
    for o in options:
        if o.gid in inner:
            continue
        items.append([_Choice(((o.gid, k),) if k < o.size else (), (), loss, saved)
                      for k, loss, saved in zip(o.keep, o.loss, o.saved or [])])
    for c in candidates:
        groups = [by_gid[g] for g in c.inner]
        full = [max(o.saved or [0.0]) for o in groups]
        front = pareto_merge([o.loss for o in groups], [[f - s for s in o.saved or []] for o, f in zip(groups, full)])
        choices = [_Choice(tuple((o.gid, o.keep[i]) for o, i in zip(groups, pick) if o.keep[i] < o.size), (),
                           loss, sum(full) - cost) for loss, cost, pick in front]
        items.append([*choices, _Choice((), (c.block.id,), c.loss, c.saved)])
    return items


def _cost_tables(model: ir.Model, dg, options: Sequence[GroupOptions], metric: str, shapes, dims) -> None:
    """Fill ``saved`` of every option: the cost the group's removed units carry, the group pruned alone."""
    from ..analysis.params import iter_weights

    macs = _node_macs(model, shapes, dims) if metric != "params" else {}
    weights = [(w.name, w.shape, w.numel) for w in iter_weights(model)] if metric == "params" else []
    for opt in options:
        opt.saved = [0.0 if k == opt.size else
                     _saved(metric, dg.keep_masks({opt.gid: np.arange(opt.size - k)}), macs, weights)
                     for k in opt.keep]


# -- measurement ------------------------------------------------------------------------------

def _pruned_copy(model: ir.Model, build: Callable[[ir.Model], DependencyGraph], keep: Mapping[int, int],
                 sizes: Mapping[int, int], blocks: Sequence[tuple[str, str]] = ()) -> ir.Model:
    """A copy with the widths ``keep`` applied, then the blocks ``(x, branch_output)`` removed."""
    from ..graph import PrunePlan, apply_plan
    from .blocks import quiet_folding, remove_by_values

    copy = model.clone()
    dg = build(copy)
    removed = {gid: np.arange(sizes[gid] - k) for gid, k in keep.items() if k < sizes[gid]}
    apply_plan(PrunePlan.create(dg, removed))
    if blocks:
        with quiet_folding():
            remove_by_values(copy, blocks)
    return copy


def _session(model: ir.Model):
    from .._ort import make_session, session_options
    from ..io import max_runtime_ir_version, to_proto

    proto = to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    return make_session(proto, session_options())


class _Meter:
    """The target metric of the original and of candidates (counted, or timed interleaved with the original)."""

    def __init__(self, metric: str, model: ir.Model, shapes, dims, feeds: Mapping[str, np.ndarray]) -> None:
        self.metric, self.shapes, self.dims, self.feeds = metric, shapes, dims, dict(feeds)
        self.reference_session = _session(model) if metric == "latency" else None
        self.before = self._count(model) if metric != "latency" else None

    def _count(self, model: ir.Model) -> float:
        from ..analysis import count_macs, count_params

        if self.metric == "params":
            return float(count_params(model))
        macs = count_macs(model, self.shapes, dims=self.dims)
        if macs is None:
            raise UsageError("--target macs: the MACs of this model cannot be counted (unknown dims); "
                             "fix the input shapes with --shape NAME=D0xD1x...")
        return float(macs)

    def ratio(self, candidate: ir.Model, budget: float | None = None, *, warmup: int = 10,
              min_runs: int | None = None) -> tuple[float, dict[str, float]]:
        if self.before is not None:  # counted (MACs, params); None: timed
            return self._count(candidate) / self.before, {}
        from ..validate.latency import measure_interleaved

        sess = _session(candidate)
        ref, cand = measure_interleaved([self.reference_session, sess], [self.feeds, self.feeds], batches=[1, 1],
                                        warmup=warmup, budget=LATENCY_BUDGET_S if budget is None else budget,
                                        min_runs=min_runs)
        return cand.p50_ms / ref.p50_ms, {"reference_p50_ms": ref.p50_ms, "candidate_p50_ms": cand.p50_ms}


def cache_dir() -> Path:
    """Where latency lookup tables are kept: ``$XDG_CACHE_HOME/onnxsparse/latency`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxsparse" / "latency"


def _machine() -> str:
    import onnxruntime as ort

    from ..quantize.cpu import detect_cpu

    return f"{platform.machine()}|{detect_cpu().model_name}|{os.cpu_count()}|onnxruntime {ort.__version__}|CPU"


def _table_key(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> str:
    from ..io import to_proto

    digest = hashlib.sha256(to_proto(model).SerializeToString(deterministic=True))
    digest.update(_machine().encode())
    for name in sorted(feeds):
        digest.update(f"{name}{tuple(feeds[name].shape)}{feeds[name].dtype}".encode())
    return digest.hexdigest()[:32]


def _latency_costs(model: ir.Model, dg, options: Sequence[GroupOptions], build, sizes, meter: _Meter,
                   candidates: Sequence[BlockCandidate] = ()) -> tuple[int, int]:
    """Fill ``saved`` with the fraction of the original's latency each option saves, measured alone
    (cached on disk); returns (entries measured now, entries read from the cache)."""
    path = cache_dir() / f"{_table_key(model, meter.feeds)}.json"
    try:
        cache = json.loads(path.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        cache = {}
    measured = hits = 0
    for opt in options:
        saved = []
        root = str(dg.groups[opt.gid].root)
        for k in opt.keep:
            key = f"{opt.gid}|{root}|{k}"
            if k == opt.size:
                saved.append(0.0)
            elif key in cache:
                saved.append(float(cache[key]))
                hits += 1
            else:
                ratio, _ = meter.ratio(_pruned_copy(model, build, {opt.gid: k}, sizes), TABLE_BUDGET_S,
                                       warmup=TABLE_WARMUP, min_runs=TABLE_MIN_RUNS)
                cache[key] = 1.0 - ratio
                saved.append(1.0 - ratio)
                measured += 1
        opt.saved = saved
    for c in candidates:
        key = f"block|{c.block.x}|{c.block.branch_output}"
        if key in cache:
            hits += 1
        else:
            ratio, _ = meter.ratio(_pruned_copy(model, build, {}, sizes, [(c.block.x, c.block.branch_output)]),
                                   TABLE_BUDGET_S, warmup=TABLE_WARMUP, min_runs=TABLE_MIN_RUNS)
            cache[key] = 1.0 - ratio
            measured += 1
        c.saved = float(cache[key])
    if measured:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"machine": _machine(), "entries": cache}, indent=0))
            tmp.replace(path)
        except OSError as exc:  # a cache that cannot be written only costs time next run
            logger.warning("latency table not cached at %s: %s", path, exc)
    return measured, hits


# -- the allocation ---------------------------------------------------------------------------

def _met(metric: str, measured: float, ratio: float) -> bool:
    if metric == "latency":
        return measured <= ratio * (1 + TOLERANCE)
    return abs(measured - ratio) <= TOLERANCE * ratio


def allocate_target(
    model: ir.Model,
    dg,
    target: Target,
    *,
    calib,
    build: Callable[[ir.Model], DependencyGraph],
    multiples: Mapping[int, int],
    min_keep: int,
    criterion: str,
    samples: int,
    shapes=None,
    dims=None,
    seed: int = 0,
    solver: str = "dp",
    latency_table: bool | None = None,
    repair: str = "none",
    damp: float | None = None,
    blocks: bool = True,
    verify: int | None = None,
    sequential: bool | None = None,
) -> tuple[dict[int, float], TargetReport]:
    """Per-group removal ratios meeting ``target`` on ``model`` (prepared for analysis, not modified),
    whose groups are ``dg``; ``build(copy)`` makes the same analysis of a copy (for verification).
    ``calib`` is the calibration :class:`~onnxsparse.calibration.data.DataSource` (keys: input names).
    ``blocks``: also offer every removable residual block whole (the report lists those removed; the caller
    removes them after applying the widths, :func:`~onnxsparse.passes.blocks.remove_by_values`).
    ``verify`` (default :data:`VERIFY_CANDIDATES`): how many in-band allocations the verification round
    prunes, repairs (``repair``, ``damp``, ``sequential``; default: sequential when repairing, as ``prune``)
    and measures whole (:func:`verify_round`; 1: keep the table's pick)."""
    from .reconstruct import DEFAULT_DAMP
    from .sensitivity import sensitivity

    start = time.perf_counter()
    groups = {g.id: g for g in dg.prunable}
    sizes = {gid: g.size for gid, g in groups.items()}
    ratios = snapped_ratios([(g.size, multiples.get(gid, 1), min_keep) for gid, g in groups.items()])
    table = sensitivity(model.clone(), calib, ratios=ratios, criterion=criterion, samples=samples,
                        shapes=shapes, seed=seed, blocks=blocks, repair=repair, damp=damp)
    by_nodes = {(g.kind, tuple(g.nodes)): g.id for g in dg.prunable}
    options: list[GroupOptions] = []
    widths_not_offered: list[dict[str, Any]] = []
    for entry in table.groups:
        gid = by_nodes.get((entry.kind, tuple(entry.nodes)))
        if gid is None or gid not in groups:
            continue
        by_removed = {r.units_removed: (r.rel_mse if r.rel_mse is not None else math.inf)
                      for r in entry.results if r.units_removed > 0}
        widths, width_losses = group_options(sizes[gid], multiples.get(gid, 1), min_keep, by_removed)
        widths, width_losses = offered_widths(gid, widths, width_losses, widths_not_offered)
        if len(widths) > 1:
            options.append(GroupOptions(gid, entry.kind, sizes[gid], widths, width_losses))
    feeds = {k: np.ascontiguousarray(v[:1]) for k, v in calib.arrays.items()} if target.metric == "latency" else {}
    meter = _Meter(target.metric, model, shapes, dims, feeds)
    not_offered: list[dict[str, Any]] = []
    candidates = (block_candidates(model, dg, {b.add: b.rel_mse for b in table.blocks}, options, not_offered)
                  if blocks else [])
    report = TargetReport(metric=target.metric, ratio=target.ratio, tolerance=TOLERANCE, solver=solver,
                          ladder=tuple(ratios), cost_basis=target.metric, sensitivity_sessions=table.sessions,
                          block_candidates=len(candidates), blocks_not_offered=not_offered,
                          widths_not_offered=widths_not_offered)
    if target.metric == "latency" and (LATENCY_TABLE if latency_table is None else latency_table):
        report.cost_basis = "latency table"
        report.table_measured, report.table_cached = _latency_costs(model, dg, options, build, sizes, meter,
                                                                    candidates)
        total = 1.0
    else:
        cost_metric = "macs" if target.metric == "latency" else target.metric
        report.cost_basis = cost_metric
        _cost_tables(model, dg, options, cost_metric, shapes, dims)
        _block_saved(model, candidates, cost_metric, shapes)
        total = _model_cost(model, cost_metric, shapes, dims)
    if not (options or candidates) or not total:
        report.note = "no prunable group has a width to choose" if not options else "the model has no cost to cut"
        report.seconds = time.perf_counter() - start
        return {}, report
    items = _items(options, candidates)
    by_id = {c.block.id: c for c in candidates}
    inside = {gid: c.block.id for c in candidates for gid in c.inner}
    full = [max(ch.saved for ch in item) for item in items]
    costs = [[f - ch.saved for ch in item] for item, f in zip(items, full)]
    losses = [[ch.loss for ch in item] for item in items]

    def measure(keep: dict[int, int], removed: tuple[int, ...]) -> tuple[float, dict[str, float]]:
        pairs = [(by_id[b].block.x, by_id[b].block.branch_output) for b in removed]
        return meter.ratio(_pruned_copy(model, build, keep, sizes, pairs))

    tried: dict[tuple[int, ...], int] = {}
    met_rounds: list[int] = []
    # Two searches, each correcting its budget by measuring: the least predicted loss within the budget
    # (costs of several groups overlap, so a spread allocation may land under the target), then the
    # least loss inside a window as wide as the tolerance band below it (lands near the target). The
    # met round with the least predicted loss wins: landing near the target must not cost accuracy.
    # A latency target is met anywhere below it, so it needs no window (and each round is timed).
    for windowed in ((False,) if target.metric == "latency" else (False, True)):
        budget, lo, hi = target.ratio, 0.0, 1.0  # budgets known to remove too much / too little
        first = len(report.rounds)
        for _ in range(4 * MAX_ROUNDS[target.metric]):
            if len(report.rounds) - first >= MAX_ROUNDS[target.metric] or hi - lo < 1e-4:
                break
            cap = sum(full) - (1.0 - budget) * total  # the summed option costs allowed (see the docstring)
            floor = cap - 2 * TOLERANCE * target.ratio * total if windowed else None
            alloc = None
            if cap >= min_cost(costs) - 1e-9:
                if floor is not None:
                    alloc = solve(losses, costs, max(cap, 0.0), solver, floor=max(floor, 0.0))
                alloc = alloc or solve(losses, costs, max(cap, 0.0), solver)
            if alloc is None:
                alloc = solve(losses, costs, min_cost(costs), solver)  # the most the ladder removes
            if alloc is None:  # the DP's rounded costs overshoot even the cheapest choice
                logger.info("target %s: no allocation fits budget %.4f", target, budget)
                break
            if alloc.choice in tried:  # widths measured before: no need to measure them again
                index = tried[alloc.choice]
                measured = report.rounds[index].measured
                logger.info("target %s: budget %.4f gives the widths of round %d", target, budget, index + 1)
            else:
                picks = [item[c] for item, c in zip(items, alloc.choice)]
                keep = {gid: k for ch in picks for gid, k in ch.keep}
                removed = tuple(sorted(b for ch in picks for b in ch.blocks))
                predicted = (total - sum(ch.saved for ch in picks)) / total
                measured, extra = measure(keep, removed)
                index = tried[alloc.choice] = len(report.rounds)
                report.rounds.append(TargetRound(budget, predicted, measured, alloc.loss, keep=keep, blocks=removed,
                                                 timing=extra))
                logger.info("target %s round %d: budget %.4f predicted %.4f measured %.4f blocks %s", target,
                            len(report.rounds), budget, predicted, measured, list(removed))
            if _met(target.metric, measured, target.ratio):
                met_rounds.append(index)
                break
            if measured > target.ratio:
                hi = min(hi, budget)
            else:
                lo = max(lo, budget)
            guess = budget * target.ratio / measured
            budget = guess if lo < guess < hi else 0.5 * (lo + hi)
    def predicted_of(keep: dict[int, int], removed: tuple[int, ...]) -> float:
        saved = sum(by_id[b].saved for b in removed)
        for o in options:
            k = keep.get(o.gid, o.size)
            if inside.get(o.gid) not in removed:  # a width off the ladder (a uniform ratio's): interpolated
                saved += float(np.interp(o.size - k, [o.size - w for w in o.keep], o.saved or [0.0] * len(o.keep)))
        return (total - saved) / total

    if not met_rounds and target.metric != "latency":
        met_rounds += _refine(report, options, target, predicted_of, measure, inside)
    chosen_round = min(met_rounds, key=lambda i: report.rounds[i].loss) if met_rounds else None
    verify = VERIFY_CANDIDATES if verify is None else verify
    if chosen_round is not None and verify > 1:
        whole = WholeModelLoss(model, dg, calib, build, multiples, min_keep, criterion, seed=seed, repair=repair,
                               damp=DEFAULT_DAMP if damp is None else damp,
                               sequential=repair != "none" if sequential is None else sequential)
        win = report.rounds[chosen_round]
        chosen_round = verify_round(
            report, met_rounds, chosen_round, target=target, k=verify, items=items, losses=losses, costs=costs,
            cap=sum(full) - (1.0 - win.budget) * total,
            band=None if target.metric == "latency" else 2 * TOLERANCE * target.ratio * total, solver=solver,
            options=options, multiples=multiples, min_keep=min_keep, predicted_of=predicted_of, measure=measure,
            whole_loss=lambda keep, removed: whole(keep, [(by_id[b].block.x, by_id[b].block.branch_output)
                                                          for b in removed]))
    if chosen_round is None:
        chosen_round = _fallback(report.rounds, target)
        report.note = (f"no allocation landed within {TOLERANCE:.0%} of {target}: the widths the groups may keep "
                       f"(round-to, min-keep) and the ladder reach {report.rounds[chosen_round].measured:.3f}")
    best = report.rounds[chosen_round]
    report.chosen_round = chosen_round
    report.measured = best.measured
    report.met = _met(target.metric, best.measured, target.ratio)
    report.predicted_loss = best.loss
    report.groups = {gid: (k, sizes[gid]) for gid, k in best.keep.items()}
    report.blocks = [{"id": b, "add": by_id[b].block.add, "x": by_id[b].block.x,
                      "branch_output": by_id[b].block.branch_output, "nodes": len(by_id[b].block.nodes),
                      "loss": by_id[b].loss, "saved": by_id[b].saved / total} for b in best.blocks]
    report.seconds = time.perf_counter() - start
    return {gid: (sizes[gid] - k) / sizes[gid] for gid, k in best.keep.items() if k < sizes[gid]}, report


#: measurements the local refinement may add when no knapsack round met a MACs/params target
REFINE_MEASUREMENTS = 8


def _refine(report: TargetReport, options: Sequence[GroupOptions], target: Target,
            predicted: Callable[[dict[int, int], tuple[int, ...]], float],
            measure: Callable[[dict[int, int], tuple[int, ...]], tuple[float, dict[str, float]]],
            inside: Mapping[int, int] | None = None) -> list[int]:
    """Indices of rounds (appended to ``report.rounds``) that meet the target, found by moving one group one
    width at a time from the measured rounds nearest the target.

    The knapsack adds per-group costs, but a layer between two pruned groups loses the product of their
    fractions, so with coarse widths every budget may miss the tolerance band.  Starting from the round
    nearest the target on each side, each step changes one group by one width toward the target, the
    change with the least predicted loss increase first, and measures it.  The blocks a round removes stay
    removed, and the groups inside them (``inside``: group id -> block id) do not move."""
    inside = inside or {}
    position = [{k: i for i, k in enumerate(o.keep)} for o in options]
    seen = {(tuple(sorted(r.keep.items())), r.blocks) for r in report.rounds}
    met: list[int] = []
    budget = REFINE_MEASUREMENTS
    sides = ([r for r in report.rounds if (r.keep or r.blocks) and r.measured > target.ratio],
             [r for r in report.rounds if (r.keep or r.blocks) and r.measured <= target.ratio])
    starts = [min(side, key=lambda r: abs(r.measured - target.ratio)) for side in sides if side]
    for start in starts:
        current = start
        while budget > 0 and not met:
            more = current.measured > target.ratio  # keeps too much: remove more
            moves = []
            for o, pos in zip(options, position):
                index = pos.get(current.keep.get(o.gid, o.size))
                if index is None or inside.get(o.gid, -1) in current.blocks:
                    continue
                step = index + 1 if more else index - 1  # keep[] is ordered widest first
                if 0 <= step < len(o.keep):
                    moves.append((o.loss[step] - o.loss[index], o.gid, o.keep[step]))
            moves.sort()
            nearest = None
            for delta, gid, width in moves:
                keep = {**current.keep, gid: width}
                key = (tuple(sorted(keep.items())), current.blocks)
                if key in seen or budget <= 0:
                    continue
                seen.add(key)
                budget -= 1
                measured, extra = measure(keep, current.blocks)
                loss = current.loss + delta
                report.rounds.append(TargetRound(current.budget, predicted(keep, current.blocks), measured, loss,
                                                 keep=keep, blocks=current.blocks, timing=extra,
                                                 note="refined: one group moved one width"))
                if _met(target.metric, measured, target.ratio):
                    met.append(len(report.rounds) - 1)
                    break
                if nearest is None or abs(measured - target.ratio) < abs(nearest.measured - target.ratio):
                    nearest = report.rounds[-1]
            if met or nearest is None or abs(nearest.measured - target.ratio) >= abs(current.measured - target.ratio):
                break
            current = nearest
    return met


def _fallback(rounds: Sequence[TargetRound], target: Target) -> int:
    """The round to keep when none met the target: the least pruned that reaches it, else the most pruned."""
    measured = [(i, r) for i, r in enumerate(rounds) if r.keep or r.blocks]
    under = [(i, r) for i, r in measured if r.measured <= target.ratio * (1 + TOLERANCE)]
    if under:
        return max(under, key=lambda ir_: ir_[1].measured)[0]
    return min(measured, key=lambda ir_: ir_[1].measured)[0]


def _model_cost(model: ir.Model, metric: str, shapes, dims) -> float:
    from ..analysis import count_macs, count_params

    if metric == "params":
        return float(count_params(model))
    return float(count_macs(model, shapes, dims=dims) or 0)


# -- verification round: the table proposes, the whole model decides ----------------------------


class WholeModelLoss:
    """Prune and repair a copy to given widths exactly as ``prune`` does after the allocation (same criterion
    scores, selection, repair, then the blocks removed) and measure its ``rel_mse`` on the calibration data:
    the loss table's metric, of the whole model instead of one group alone."""

    def __init__(self, model: ir.Model, dg: DependencyGraph, source, build: Callable[[ir.Model], DependencyGraph],
                 multiples: Mapping[int, int], min_keep: int, criterion: str, *, seed: int, repair: str,
                 damp: float, sequential: bool, batch_size: int = 32) -> None:
        from ..calibration.capture import batching, capture
        from ..criteria import CALIBRATION_KEY, get_criterion
        from .prune import score_groups
        from .reconstruct import candidate_requests
        from .sensitivity import _run_all, _session as quiet_session

        self.model, self.source, self.build, self.multiples = model, source, build, dict(multiples)
        self.min_keep, self.seed, self.repair, self.damp, self.sequential = min_keep, seed, repair, damp, sequential
        probe_channels, probe_layers = candidate_requests(dg)
        crit = get_criterion(criterion, "structured")
        self.cap = capture(model, source, channels=probe_channels if crit.requires_data else (),
                           layers=probe_layers if repair == "bias" and not sequential else (),
                           batch_size=batch_size, seed=seed)
        self.scores, _ = score_groups(dg, criterion, seed=seed, extras={CALIBRATION_KEY: self.cap})
        self.batch_size, self.limit = batching(model, source, batch_size)
        sess = quiet_session(model)
        self.outputs = [o.name for o in sess.get_outputs()
                        if o.type in ("tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)")]
        self.reference = _run_all(sess, source, self.batch_size, self.limit, self.outputs)

    def pruned(self, keep: Mapping[int, int], blocks: Sequence[tuple[str, str]] = ()) -> ir.Model:
        """The pruned, repaired copy (``keep``: group id -> kept units; ``blocks``: (x, branch_output) removed)."""
        from ..graph import PrunePlan, apply_plan
        from .blocks import quiet_folding, remove_by_values
        from .prune_select import select
        from .reconstruct import reconstruct

        copy = self.model.clone()
        dg = self.build(copy)
        sizes = {g.id: g.size for g in dg.prunable}
        ratios = {gid: (sizes[gid] - k) / sizes[gid] for gid, k in keep.items() if k < sizes[gid]}
        removed = select({g: s for g, s in self.scores.items() if g in ratios}, 0.0, round_to=self.multiples,
                         min_keep=self.min_keep, group_ratios=ratios)
        plan = PrunePlan.create(dg, removed)
        if self.repair != "none":
            rec = reconstruct(dg, plan, self.source, mode=self.repair, sequential=self.sequential, damp=self.damp,
                              stats=self.cap, batch_size=self.batch_size, seed=self.seed, measure=False)
            rec.prune_with(plan, copy)
        else:
            apply_plan(plan)
        if blocks:
            with quiet_folding():
                remove_by_values(copy, list(blocks))
        return copy

    def __call__(self, keep: Mapping[int, int], blocks: Sequence[tuple[str, str]] = ()) -> float:
        from .sensitivity import _run_all, _session as quiet_session, output_errors

        sess = quiet_session(self.pruned(keep, blocks))
        outs = _run_all(sess, self.source, self.batch_size, self.limit, self.outputs)
        return output_errors(self.reference, outs, self.outputs)[0]


def table_loss(options: Sequence[GroupOptions], keep: Mapping[int, int]) -> float:
    """The loss table's prediction for widths ``keep``: per group the loss of its width, interpolated in units
    removed when the width is not one of its options (a uniform ratio's widths need not be)."""
    total = 0.0
    for o in options:
        k = keep.get(o.gid, o.size)
        if k < o.size:
            total += float(np.interp(o.size - k, [o.size - w for w in o.keep], o.loss))
    return total


def uniform_keep(options: Sequence[GroupOptions], multiples: Mapping[int, int], min_keep: int,
                 ratio: float) -> dict[int, int]:
    """The widths ``prune`` keeps with one ratio for every allocated group (``prune_select.keep_count``)."""
    from .prune_select import keep_count

    out = {o.gid: keep_count(o.size, ratio, multiples.get(o.gid, 1), min_keep) for o in options}
    return {g: k for g, k in out.items() if k < next(o.size for o in options if o.gid == g)}


def _uniform_round(options: Sequence[GroupOptions], multiples: Mapping[int, int], min_keep: int, target: Target,
                   measure: Callable[[dict[int, int], tuple[int, ...]], tuple[float, dict[str, float]]],
                   steps: int = 12) -> tuple[dict[int, int], float] | None:
    """The uniform ratio's widths that meet ``target`` (bisected on the measured ratio), or ``None``."""
    lo, hi = 0.0, 0.95
    seen: dict[tuple[tuple[int, int], ...], float] = {}
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        keep = uniform_keep(options, multiples, min_keep, mid)
        key = tuple(sorted(keep.items()))
        if key not in seen:
            seen[key] = measure(keep, ())[0]
        if _met(target.metric, seen[key], target.ratio):
            return keep, seen[key]
        if seen[key] > target.ratio:
            lo = mid
        else:
            hi = mid
    return None


def _choice_of(items: Sequence[Sequence[_Choice]], keep: Mapping[int, int], blocks: tuple[int, ...]) -> list[int] | None:
    """The option index per knapsack item that gives the widths ``keep`` and removed ``blocks`` (None: none does)."""
    choice = []
    for item in items:
        gids = {g for ch in item for g, _ in ch.keep}
        bids = {b for ch in item for b in ch.blocks}
        want = (frozenset((g, keep[g]) for g in gids if g in keep), frozenset(b for b in blocks if b in bids))
        index = next((i for i, ch in enumerate(item) if (frozenset(ch.keep), frozenset(ch.blocks)) == want), None)
        if index is None:
            return None
        choice.append(index)
    return choice


def next_best(items: Sequence[Sequence[_Choice]], losses: Sequence[Sequence[float]], costs: Sequence[Sequence[float]],
              winner: Sequence[int], cap: float, floor: float | None, solver: str) -> list[tuple[float, list[int]]]:
    """(predicted loss, choice) of the allocations found by re-solving with the winner's option of one item
    forbidden, one item at a time, least predicted loss first, distinct, the winner excluded."""
    found: dict[tuple[int, ...], float] = {}
    for j, w in enumerate(winner):
        if len(items[j]) < 2:
            continue
        forbidden = [list(row) for row in losses]
        forbidden[j][w] = math.inf
        alloc = solve(forbidden, costs, cap, solver, floor=floor) if floor is not None else None
        alloc = alloc or solve(forbidden, costs, cap, solver)
        if alloc is not None and math.isfinite(alloc.loss) and list(alloc.choice) != list(winner):
            found.setdefault(alloc.choice, alloc.loss)
    return sorted(((loss, list(choice)) for choice, loss in found.items()), key=lambda p: (p[0], p[1]))


def _round_key(r: TargetRound) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    return tuple(sorted(r.keep.items())), tuple(sorted(r.blocks))


def verify_round(report: TargetReport, met: Sequence[int], winner: int, *, target: Target, k: int,
                 items: Sequence[Sequence[_Choice]], losses: Sequence[Sequence[float]],
                 costs: Sequence[Sequence[float]], cap: float, band: float | None, solver: str,
                 options: Sequence[GroupOptions],
                 multiples: Mapping[int, int], min_keep: int,
                 predicted_of: Callable[[dict[int, int], tuple[int, ...]], float],
                 measure: Callable[[dict[int, int], tuple[int, ...]], tuple[float, dict[str, float]]],
                 whole_loss: Callable[[dict[int, int], tuple[int, ...]], float]) -> int:
    """The round to keep among up to ``k`` distinct in-band allocations: the knapsack's pick, the uniform
    ratio that meets the target (MACs / params), and the next-best allocations (other in-band rounds; the
    knapsack re-solved with the pick's option of one item forbidden, measured until in band), each pruned,
    repaired and measured whole by ``whole_loss``; the least whole-model loss wins (ties: the table's pick).
    ``cap``: the winning round's summed option-cost budget, ``band``: the window below it (None: no window).
    The candidates are listed in ``report.verify``; the rounds it adds are appended to ``report.rounds``."""
    start = time.perf_counter()
    rounds = report.rounds
    best = rounds[winner]
    keys = {_round_key(best)}
    pool: list[tuple[int, str]] = [(winner, "knapsack")]
    if target.metric != "latency" and k > len(pool):  # a uniform latency would need timing every bisection step
        uniform = _uniform_round(options, multiples, min_keep, target, measure)
        if uniform is not None:
            keep, measured = uniform
            r = TargetRound(best.budget, predicted_of(keep, ()), measured, table_loss(options, keep), keep=keep,
                            note="verify: uniform ratio")
            if _round_key(r) not in keys:
                keys.add(_round_key(r))
                rounds.append(r)
                pool.append((len(rounds) - 1, "uniform"))
    others: list[tuple[int, str]] = []
    for i in sorted(met, key=lambda i: rounds[i].loss):
        if _round_key(rounds[i]) not in keys:
            keys.add(_round_key(rounds[i]))
            others.append((i, "knapsack round"))
    choice = _choice_of(items, best.keep, best.blocks)
    if choice is not None and len(pool) + len(others) < k:
        floor = None if band is None else max(cap - band, 0.0)
        budget, wanted = VERIFY_MEASUREMENTS, k - len(pool) - len(others)
        for loss, alt in next_best(items, losses, costs, choice, max(cap, 0.0), floor, solver):
            if wanted <= 0 or budget <= 0:
                break
            picks = [item[c] for item, c in zip(items, alt)]
            keep = {gid: w for ch in picks for gid, w in ch.keep}
            removed = tuple(sorted(b for ch in picks for b in ch.blocks))
            r = TargetRound(best.budget, predicted_of(keep, removed), math.nan, loss, keep=keep, blocks=removed,
                            note="verify: next-best (one item's option forbidden)")
            if _round_key(r) in keys:
                continue
            keys.add(_round_key(r))
            budget -= 1
            r.measured, r.timing = measure(keep, removed)
            rounds.append(r)
            if _met(target.metric, r.measured, target.ratio):
                others.append((len(rounds) - 1, "next-best"))
                wanted -= 1
    others.sort(key=lambda p: rounds[p[0]].loss)
    pool += others[: max(k - len(pool), 0)]
    if len(pool) < 2:
        report.verify_seconds = time.perf_counter() - start
        return winner
    measured_loss = [whole_loss(rounds[i].keep, rounds[i].blocks) for i, _ in pool]
    pick = min(range(len(pool)), key=lambda j: (measured_loss[j], j))
    report.verify = [{"round": i + 1, "source": source, "widths": {str(g): w for g, w in sorted(rounds[i].keep.items())},
                      "blocks": list(rounds[i].blocks), "predicted_loss": rounds[i].loss,
                      "measured": rounds[i].measured, "whole_loss": value, "chosen": j == pick}
                     for j, ((i, source), value) in enumerate(zip(pool, measured_loss))]
    report.verify_seconds = time.perf_counter() - start
    logger.info("target %s: verification kept round %d of %d candidates (whole-model losses %s)", target,
                pool[pick][0] + 1, len(pool), ", ".join(f"{v:.4g}" for v in measured_loss))
    return pool[pick][0]
