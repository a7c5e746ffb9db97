"""Sparsify weights (optional) and store every worthwhile tensor in a compact format.

Steps, each recorded in the :class:`SparsifyReport`:

1. expand any tensors already stored by onnxsparse (so re-running re-encodes);
2. optionally normalise (lift ``Constant`` weights to initializers, fold
   ``ConstantOfShape`` weight generators; nothing else is folded, which would
   e.g. turn ``Cast(bfloat16 weight)`` into a float32 initializer);
3. prune: with a sparsity, an ``N:M`` pattern or per-layer ratios, score the
   weights of linear ops with a criterion and zero the lowest units of the
   pattern (per tensor, or pooled across tensors with ``global_scope``);
   ``allocate`` spreads a sparsity over the tensors (OWL outlier ratios or
   measured sensitivity, :mod:`onnxsparse.sparsity.allocate`) keeping it the
   parameter-weighted average;
   quantized weights are scored dequantized and zeroed to their zero point;
4. store: every initializer with at least ``min_size`` elements is encoded in
   the requested format (``auto``: the smallest per tensor; near-ties go to the
   cheaper decode graph) unless dense is smaller.

Without a sparsity the pass is lossless: it only re-encodes zeros already there.
"""

from __future__ import annotations

import fnmatch
import gc
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from ..errors import Decline, UsageError
from ..options.sparsify import DEFAULT_MIN_SIZE, SparsifyOptions
from ..formats import (
    Candidate,
    CodecOptions,
    check_opset_raise,
    TensorData,
    choose,
    expand_all,
    information_bound_bits,
    model_opset,
    read_storage,
    set_model_opset,
    store,
    write_storage,
)
from ..formats.base import SUPPORTED_DTYPES
from ..sparsity import (
    NM,
    Magnitude,
    Wanda,
    Pattern,
    PruneTarget,
    SparsityCriterion,
    WeightInfo,
    apply_mask,
    compute_masks,
    find_weights,
    get_criterion,
    nm_violations,
    score_weight,
)
from ..sparsity.allocate import weighted_average

__all__ = ["SparsifyConfig", "SparsifyOptions", "SparsifyPass", "SparsifyResult", "SparsifyReport", "TensorRow", "sparsify", "DEFAULT_MIN_SIZE",
           "Progress"]

logger = logging.getLogger(__name__)

#: Opset the preferred decode graphs need (ScatterElements with reduction=add).
PREFERRED_OPSET = 16
#: ``--target size``: metadata bytes per stored tensor besides its name (measured ~160 + 3 x name)
_METADATA_BYTES = 200
#: ``ratios(average)`` -> per-tensor ratios with that parameter-weighted average
Allocator = Callable[[float], dict[str, float]]


#: The options of a sparsify run: one frozen dataclass for the command, the API and the recipe step.
SparsifyConfig = SparsifyOptions


@dataclass
class TensorRow:
    """One tensor in the report."""

    name: str
    shape: list[int]
    dtype: str
    consumer: str
    elements: int
    sparsity_before: float
    sparsity: float
    target: float | None
    pruned: bool
    format: str
    decoder: str | None
    bytes_dense: int
    bytes_stored: int
    bound_bytes: float
    vs_bound: float | None
    note: str | None = None


@dataclass
class SparsifyReport:
    """Per-tensor and total sizes, the formats chosen, and everything skipped (with reasons)."""

    config: dict[str, Any]
    opset_before: int
    opset_after: int
    tensors: list[TensorRow] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    reencoded: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, Any]:
        rows = self.tensors
        elements = sum(r.elements for r in rows)
        nonzero = sum(round(r.elements * (1 - r.sparsity)) for r in rows)
        dense = sum(r.bytes_dense for r in rows)
        stored = sum(r.bytes_stored for r in rows)
        bound = sum(r.bound_bytes for r in rows)
        formats: dict[str, int] = {}
        for row in rows:
            formats[row.format] = formats.get(row.format, 0) + 1
        return {
            "tensors": len(rows),
            "pruned": sum(r.pruned for r in rows),
            "elements": elements,
            "sparsity": 1 - nonzero / elements if elements else 0.0,
            "bytes_dense": dense,
            "bytes_stored": stored,
            "bound_bytes": bound,
            "vs_bound": stored / bound if bound else None,
            "vs_dense": stored / dense if dense else None,
            "formats": formats,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "opset": {"before": self.opset_before, "after": self.opset_after},
            "totals": self.totals,
            "tensors": [asdict(r) for r in self.tensors],
            "skipped": self.skipped,
            "reencoded": self.reencoded,
            "notes": self.notes,
        }


# ------------------------------------------------------------------------ pass


def _matches(globs: Sequence[str], info: WeightInfo) -> str | None:
    names = [info.name] + [c.split(":", 1)[1] for c in info.consumers if ":" in c]
    for glob in globs:
        if any(fnmatch.fnmatchcase(name, glob) for name in names):
            return glob
    return None


def _initializer_array(model: ir.Model, name: str) -> np.ndarray:
    """The array of an initializer :func:`find_weights` reported (so it has a value)."""
    value = model.graph.initializers[name].const_value
    if value is None:  # pragma: no cover - find_weights returns only initializers that hold a value
        raise AssertionError(f"initializer {name!r} has no value")
    return value.numpy()


def _ratio_for(pairs: Sequence[tuple[str, float]], info: WeightInfo) -> tuple[float, str] | None:
    for glob, ratio in pairs:
        if _matches([glob], info):
            return ratio, glob
    return None


def _row(info: WeightInfo, tensor: TensorData, chosen: Candidate, sparsity_before: float,
         target: float | None, note: str | None) -> TensorRow:
    bound = information_bound_bits(tensor.n, tensor.k, tensor.dtype.itemsize * 8) / 8
    return TensorRow(
        name=info.name,
        shape=list(tensor.shape),
        dtype=tensor.dtype.name,
        consumer=", ".join(info.consumers[:2]) + (" ..." if len(info.consumers) > 2 else ""),
        elements=tensor.n,
        sparsity_before=sparsity_before,
        sparsity=tensor.sparsity,
        target=target,
        pruned=target is not None,
        format=chosen.format,
        decoder=chosen.decoder,
        bytes_dense=tensor.n * tensor.dtype.itemsize,
        bytes_stored=chosen.stored_bytes,
        bound_bytes=bound,
        vs_bound=chosen.stored_bytes / bound if bound else None,
        note=note,
    )


#: ``progress(items, total, description)`` wraps the per-tensor loop (e.g. a tqdm bar)
#: after encoding a tensor this large, collect garbage at once (the cycles hold its dense copy)
COLLECT_BYTES = 16 << 20

Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


@dataclass
class SparsifyResult(PassResult):
    """The pass result with what was done: sizes, formats, skips (:class:`SparsifyReport`)."""

    report: SparsifyReport = field(kw_only=True)


class SparsifyPass(ir.passes.InPlacePass):
    """Prune (optionally) and store weights compactly; :meth:`call` returns a :class:`SparsifyResult`.

    Running it again on its own output is safe: stored tensors are expanded and re-encoded, and
    magnitude pruning at the same sparsity finds the zeros it made (nothing more is zeroed).
    """

    def __init__(self, config: SparsifyOptions | None = None, progress: Progress | None = None) -> None:
        super().__init__()
        self.config = config or SparsifyOptions()
        self.progress = progress
        self.report: SparsifyReport | None = None
        self._stats: Mapping[str, np.ndarray] | None = None
        self._input_bytes: int | None = None

    def requires(self, model: ir.Model) -> None:
        try:
            self.config.resolved()
        except UsageError as exc:
            raise ir.passes.PreconditionError(str(exc)) from exc

    def ensures(self, model: ir.Model) -> None:
        """Every tensor the report lists in a sparse format is recorded in the storage metadata."""
        if self.report is None:
            return
        stored = read_storage(model)
        missing = [r.name for r in self.report.tensors if r.format != "dense" and r.name not in stored]
        if missing:
            raise ir.passes.PostconditionError(f"stored tensors missing from the storage metadata: {missing[:5]}")

    def call(self, model: ir.Model) -> SparsifyResult:
        config = self.config
        pattern, criterion = config.resolved()
        if config.target_size is not None:
            self._input_bytes = _model_bytes(model)
        reencoded = expand_all(model) if (read_storage(model) or _has_markers(model)) else {}
        if config.normalize:
            _normalize(model)
        before = model_opset(model)
        report = SparsifyReport(config.describe_run(), before, before, reencoded=reencoded)
        self.report = report

        considered = self._select(model, report)
        arrays = {info.name: _initializer_array(model, info.name) for info in considered}
        before_sparsity = {
            info.name: TensorData(info.name, arrays[info.name], info.fill(arrays[info.name].dtype)).sparsity
            for info in considered
        }
        targets: dict[str, float] = {}
        notes: dict[str, str] = {}
        if config.prunes(pattern):
            targets, notes = self._prune(model, considered, arrays, pattern, criterion)
            gc.collect()  # the replaced weights sit in reference cycles of the graph until collected
        max_opset, blocker = self._allowed_opset(model, before)

        options = CodecOptions(block=config.block)
        needed = 0
        specs = read_storage(model)
        loop: Iterable[WeightInfo] = considered
        if self.progress is not None:
            loop = self.progress(considered, len(considered), "encode")
        for info in loop:
            array = arrays.pop(info.name)  # no dense copy outlives its encoding (issue 16: peak memory)
            tensor = TensorData(info.name, array, info.fill(array.dtype))
            chosen, why = choose(tensor, config.format, options, max_opset, model.graph, slack=config.auto_slack,
                                 decoders=config.decoder_map())
            if why and "needs opset" in why:
                if max_opset < 11:
                    why = f"the model's opset {max_opset} is too old for every decode graph ({blocker})"
                elif blocker:
                    why += f" (opset not raised: {blocker})"
            if chosen.format != "dense":
                store(model, info.name, tensor, chosen, specs)
                needed = max(needed, chosen.opset)
            logger.debug("%s: %s (%d -> %d bytes)%s", info.name, chosen.format,
                         tensor.n * tensor.dtype.itemsize, chosen.stored_bytes, f": {why}" if why else "")
            note = "; ".join(x for x in (notes.get(info.name), why if chosen.format == "dense" else None) if x)
            report.tensors.append(_row(info, tensor, chosen, before_sparsity[info.name], targets.get(info.name),
                                       note or None))
            if tensor.n * tensor.dtype.itemsize >= COLLECT_BYTES:
                del array, tensor, chosen
                gc.collect()  # the dense tensor and its trial encodings, before the next large one
        write_storage(model, specs)
        if needed > before:
            set_model_opset(model, needed)
            report.notes.append(f"default-domain opset raised from {before} to {needed} for the decode graphs")
        report.opset_after = model_opset(model)
        modified = bool(targets) or any(r.format != "dense" for r in report.tensors) or bool(reencoded)
        return SparsifyResult(model, modified, report=report)

    def _select(self, model: ir.Model, report: SparsifyReport) -> list[WeightInfo]:
        """Initializers to consider; the others go to ``report.skipped`` with the reason."""
        config = self.config
        considered: list[WeightInfo] = []
        small = 0
        for info in find_weights(model):
            if info.is_graph_input:
                report.skipped.append({"name": info.name, "reason": "also a graph input (overridable at run time)"})
            elif (glob := _matches(config.exclude, info)) is not None:
                report.skipped.append({"name": info.name, "reason": f"excluded by {glob!r}"})
            elif info.dtype not in SUPPORTED_DTYPES:
                if info.size >= config.min_size:
                    report.skipped.append({"name": info.name, "reason": f"dtype {info.dtype} not supported"})
            elif info.size < max(config.min_size, 1):
                small += 1
            else:
                considered.append(info)
        if small:
            report.skipped.append(
                {"name": f"{small} tensors", "reason": f"fewer than --min-size={config.min_size} elements"}
            )
        return considered

    def _prune(self, model: ir.Model, considered: Sequence[WeightInfo], arrays: dict[str, np.ndarray],
               pattern: Pattern, criterion: SparsityCriterion) -> tuple[dict[str, float], dict[str, str]]:
        """Zero the pattern's lowest units; updates ``arrays`` and the initializers; returns targets and notes."""
        config = self.config
        targets: dict[str, float] = {}
        notes: dict[str, str] = {}
        prune_list: list[PruneTarget] = []
        pairs = config.ratio_pairs()
        default = config.sparsity if config.sparsity is not None else pattern.fixed_sparsity
        if config.target_size is not None:
            default = 0.0  # chosen below, once the tensors are known
        for info in considered:
            override = _ratio_for(pairs, info)
            ratio = override[0] if override else default
            if ratio is None:
                continue
            reason = info.reason
            if reason is None:
                try:
                    pattern.check(info)
                except Decline as exc:
                    reason = str(exc)
            if reason:
                notes[info.name] = f"not pruned: {reason}"
                continue
            targets[info.name] = ratio
            prune_list.append(
                PruneTarget(info, arrays[info.name], ratio, pooled=config.global_scope and override is None)
            )
        pinned = {t.info.name for t in prune_list if _ratio_for(pairs, t.info)}
        free = [t for t in prune_list if t.info.name not in pinned]
        if free and (config.allocation(pattern) != "uniform" or config.target_size is not None):
            if config.stats is not None or config.calib is not None:  # measured once for every pruned weight
                self._activation_stats(model, [t.info for t in prune_list], notes)
            ratios, detail = self._allocator(model, free, pattern, criterion, notes)
            average = config.sparsity
            if config.target_size is not None:
                average = self._sparsity_for_size(model, considered, arrays, prune_list, free, ratios, pattern,
                                                  criterion)
            assert average is not None
            chosen = ratios(average)
            for target in free:
                target.sparsity = targets[target.info.name] = chosen[target.info.name]
            if isinstance(pattern, NM):  # allocated dense: not pruned at all (sparsegpt would still update it)
                dense = {t.info.name for t in free if chosen[t.info.name] == 0.0}
                for name in dense:
                    targets.pop(name)
                    notes[name] = f"left dense by --allocate {config.allocation(pattern)}"
                prune_list = [t for t in prune_list if t.info.name not in dense]
            sizes = {t.info.name: t.raw.size for t in free}
            self._note(f"allocation {config.allocation(pattern)}: ratios {min(chosen.values()):.3f}.."
                       f"{max(chosen.values()):.3f}, parameter-weighted average "
                       f"{weighted_average(chosen, sizes):.4f}; {detail}")
        masks, updated = self._masks(model, prune_list, pattern, criterion, notes)
        for target in prune_list:
            name = target.info.name
            fill = target.info.fill(arrays[name].dtype)
            pruned = updated[name] if name in updated else apply_mask(arrays[name], masks[name], fill)
            if isinstance(pattern, NM) and target.info.in_axis is not None:
                bad = nm_violations(pruned, pattern.kept(target.sparsity), pattern.m, target.info.in_axis, fill)
                if bad:  # pragma: no cover - guarded invariant
                    raise AssertionError(f"{name}: {bad} groups break {pattern.spec}")
            arrays[name] = target.raw = pruned  # the original (often a mapped file) is released now
            model.graph.initializers[name].const_value = ir.Tensor(pruned, name=name)
        return targets, notes

    def _masks(self, model: ir.Model, prune_list: Sequence[PruneTarget], pattern: Pattern,
               criterion: SparsityCriterion, notes: dict[str, str]
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Keep-masks, and new arrays for weights a reconstructing criterion rewrote.

        An activation-aware criterion handles the weights it has statistics
        for; the others are scored by magnitude (with a note).
        """
        config = self.config
        if not criterion.needs_activations or not prune_list:
            return _compute_masks(prune_list, pattern, criterion, config.stats), {}
        if criterion.reconstructs:
            updated = self._reconstruct(model, prune_list, pattern, notes)
            rest = [t for t in prune_list if t.info.name not in updated]
            return _compute_masks(rest, pattern, get_criterion("magnitude"), None), updated
        stats = self._activation_stats(model, [t.info for t in prune_list], notes)
        measured = [t for t in prune_list if t.info.name in stats]
        fallback = [t for t in prune_list if t.info.name not in stats]
        for target in fallback:
            notes.setdefault(target.info.name, f"{criterion.name}: no activation statistics; scored by magnitude")
        masks = _compute_masks(measured, pattern, criterion, stats)
        masks.update(_compute_masks(fallback, pattern, get_criterion("magnitude"), None))
        return masks, {}

    def _activation_stats(self, model: ir.Model, infos: Sequence[WeightInfo],
                          notes: dict[str, str]) -> Mapping[str, np.ndarray]:
        """Input-feature norms: given, or measured once per run (allocation and criterion share them)."""
        if self._stats is None:
            self._stats = self.config.stats if self.config.stats is not None else \
                self._measure_activations(model, infos, notes)
        return self._stats

    def _allocator(self, model: ir.Model, free: Sequence[PruneTarget], pattern: Pattern,
                   criterion: SparsityCriterion, notes: dict[str, str]) -> tuple[Allocator, str]:
        """``ratios(average)`` for ``free`` (parameter-weighted average = ``average``), and what it measured."""
        from ..sparsity import allocate

        config = self.config
        sizes = {t.info.name: int(t.raw.size) for t in free}
        method = config.allocation(pattern)
        if method == "uniform":
            return (lambda average: {name: average for name in sizes}), "uniform"
        has_data = config.stats is not None or config.calib is not None
        stats = self._activation_stats(model, [t.info for t in free], notes) if has_data else {}
        if method == "owl":
            outliers = {t.info.name: allocate.outlier_ratio(_scores(t, Wanda(), stats), config.owl_threshold)
                        for t in free}
            detail = f"outlier ratios {min(outliers.values()):.4f}..{max(outliers.values()):.4f} " \
                     f"({'wanda' if stats else 'magnitude'} scores > {config.owl_threshold:g}x mean)"
            return (lambda average: allocate.owl(outliers, sizes, average, config.owl_lambda)), detail
        from ..sparsity.layer_errors import layer_errors

        scorer = _mask_scorer(criterion)
        by_name = {t.info.name: t for t in free}

        def pruner(name: str, ratio: float) -> np.ndarray:
            return _pruned(by_name[name], _scores(by_name[name], scorer, stats), ratio, pattern)

        source, samples = self._calibration_data(model)
        levels = pattern.levels() if isinstance(pattern, NM) else None
        ladder = [r for r in (levels or allocate.DEFAULT_LADDER) if 0.0 < r <= allocate.DEFAULT_CAP]
        curves = layer_errors(model, {t.info.name: t.raw for t in free}, pruner, ladder, source,
                              batch_size=config.calib_batch, limit=config.calib_samples,
                              progress=config.calib_progress)
        detail = f"output errors of {len(free)} tensors x {len(ladder)} ratios on {samples} samples"
        if levels is not None:
            return (lambda average: allocate.knapsack(curves, sizes, average, levels)), detail
        return (lambda average: allocate.lagrangian(curves, sizes, average)), detail

    def _sparsity_for_size(self, model: ir.Model, considered: Sequence[WeightInfo], arrays: Mapping[str, np.ndarray],
                           prune_list: Sequence[PruneTarget], free: Sequence[PruneTarget], ratios: Allocator,
                           pattern: Pattern, criterion: SparsityCriterion) -> float:
        """The smallest average sparsity whose predicted file is at most ``target_size`` x the input.

        Each tensor's stored size is predicted by encoding it (``choose``, the same
        choice the store step makes) after pruning it with the criterion's scores
        (sparsegpt: Wanda's, its masks before the weight updates); tensors not pruned
        keep their size.  Bisection over the average: sizes fall as sparsity grows.
        """
        from ..sparsity.allocate import DEFAULT_CAP

        config = self.config
        assert config.target_size is not None and self._input_bytes is not None
        max_opset, _ = self._allowed_opset(model, model_opset(model))
        options = CodecOptions(block=config.block)
        stats = self._stats or {}
        scorer = _mask_scorer(criterion)
        scores = {t.info.name: _scores(t, scorer, stats) for t in prune_list}
        infos = {info.name: info for info in considered}

        def stored(name: str, array: np.ndarray) -> int:
            tensor = TensorData(name, array, infos[name].fill(array.dtype))
            chosen, _ = choose(tensor, config.format, options, max_opset, None, slack=config.auto_slack,
                               decoders=config.decoder_map())
            return chosen.stored_bytes + (_METADATA_BYTES + 3 * len(name) if chosen.format != "dense" else 0)

        free_names = {t.info.name for t in free}
        fixed = sum(stored(t.info.name, _pruned(t, scores[t.info.name], t.sparsity, pattern))
                    for t in prune_list if t.info.name not in free_names)
        pruned_names = {t.info.name for t in prune_list}
        fixed += sum(stored(info.name, arrays[info.name]) for info in considered if info.name not in pruned_names)
        base = self._input_bytes - sum(a.nbytes for a in arrays.values())
        goal = config.target_size * self._input_bytes

        def predicted(average: float) -> int:
            chosen = ratios(average)
            return base + fixed + sum(stored(t.info.name, _pruned(t, scores[t.info.name], chosen[t.info.name],
                                                                   pattern)) for t in free)

        if predicted(0.0) <= goal:
            lo = hi = 0.0
        else:
            smallest = predicted(DEFAULT_CAP)
            if smallest > goal:
                raise UsageError(f"--target size={config.target_size:g}: even {DEFAULT_CAP:g} sparsity gives "
                                 f"{smallest} bytes, {smallest / self._input_bytes:.3f} of the input")
            lo, hi = 0.0, DEFAULT_CAP
            while hi - lo > 1e-3:
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if predicted(mid) <= goal else (mid, hi)
        self._note(f"target size {config.target_size:g} of {self._input_bytes} bytes: average sparsity {hi:.4f} "
                   f"(predicted {predicted(hi)} bytes)")
        return hi

    def _reconstruct(self, model: ir.Model, prune_list: Sequence[PruneTarget], pattern: Pattern,
                     notes: dict[str, str]) -> dict[str, np.ndarray]:
        """SparseGPT on every weight it can update; returns their new arrays (others get a note)."""
        from ..sparsity.sparsegpt import hessians, layer_layouts, prune_weight

        config = self.config
        layouts = layer_layouts(model, [t.info for t in prune_list])
        usable = {name: layout for name, layout in layouts.items() if not isinstance(layout, str)}
        reasons = {name: layout for name, layout in layouts.items() if isinstance(layout, str)}
        source, samples = self._calibration_data(model)
        targets = {t.info.name: t for t in prune_list}
        updated: dict[str, np.ndarray] = {}
        for name, hessian in hessians(model, usable, source, batch_size=config.calib_batch,
                                      limit=config.calib_samples, progress=config.calib_progress):
            if isinstance(hessian, str):
                reasons[name] = hessian
                continue
            target = targets[name]
            nm = (pattern.kept(target.sparsity), pattern.m) if isinstance(pattern, NM) else None
            new = prune_weight(target.raw, usable[name], hessian, target.sparsity, nm)
            if new is None:
                reasons[name] = "the Hessian could not be inverted"
            else:
                updated[name] = new
        for name, reason in reasons.items():
            notes[name] = f"sparsegpt: {reason}; scored by magnitude, not updated"
        self._note(f"sparsegpt updated {len(updated)} of {len(prune_list)} weights from {samples} calibration samples")
        return updated

    def _measure_activations(self, model: ir.Model, infos: Sequence[WeightInfo],
                             notes: dict[str, str]) -> dict[str, np.ndarray]:
        from ..sparsity.activations import input_feature_scales

        config = self.config
        source, samples = self._calibration_data(model)
        scales, reasons = input_feature_scales(model, infos, source, batch_size=config.calib_batch,
                                               limit=config.calib_samples, progress=config.calib_progress)
        for name, reason in reasons.items():
            notes[name] = f"no activation statistics ({reason}); scored by magnitude"
        self._note(f"activation statistics from {samples} calibration samples for {len(scales)} of {len(infos)} weights")
        return scales

    def _calibration_data(self, model: ir.Model):
        """The checked calibration source and the number of samples that will be used."""
        from ..calibration.data import load_data

        config = self.config
        if config.calib is None:
            raise UsageError("calibration data needed: give --calib DATA (or stats= in the API)")
        source = load_data(config.calib, model, shapes=config.shape_map(), samples=config.calib_samples)
        return source, min(len(source), config.calib_samples)

    def _note(self, text: str) -> None:
        if self.report is not None:
            self.report.notes.append(text)

    def _allowed_opset(self, model: ir.Model, before: int) -> tuple[int, str | None]:
        """The newest opset decode graphs may use (raising only when safe) and why not newer."""
        config = self.config
        if before >= PREFERRED_OPSET or config.format == "dense":
            return before, None
        if not config.raise_opset:
            return before, "--no-raise-opset"
        blocker = None
        for target in (PREFERRED_OPSET, 13, 11):  # newest safe target: more decode graphs
            if target <= before:
                break
            try:
                check_opset_raise(model, target)
            except Decline as exc:
                blocker = blocker or exc.reason
                continue
            return target, blocker
        return before, blocker


def _model_bytes(model: ir.Model) -> int:
    """Serialised size of ``model`` with its external data (what ``--target size`` is a fraction of)."""
    external = sum(value.const_value.nbytes for value in model.graph.initializers.values()
                   if isinstance(value.const_value, ir.ExternalTensor))
    return ir.to_proto(model).ByteSize() + external


def _mask_scorer(criterion: SparsityCriterion) -> SparsityCriterion:
    """The scores a criterion's masks follow (sparsegpt: Wanda's, i.e. its masks before weight updates)."""
    return Wanda() if criterion.reconstructs else criterion


def _scores(target: PruneTarget, scorer: SparsityCriterion, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """``scorer``'s scores, by magnitude where it needs statistics the weight has none of."""
    use = scorer if target.info.name in stats or not scorer.needs_activations else Magnitude()
    scores = np.asarray(score_weight(use, target.info, target.info.real(target.raw), stats))
    return np.nan_to_num(scores, nan=np.inf)  # as compute_masks: NaN weights are never "small"


def _compute_masks(targets: Sequence[PruneTarget], pattern: Pattern, criterion: SparsityCriterion,
                   stats: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """``compute_masks``; N:M targets at allocated levels get their own ``k:M`` pattern."""
    if not isinstance(pattern, NM):
        return compute_masks(targets, pattern, criterion, stats=stats)
    masks: dict[str, np.ndarray] = {}
    for level in sorted({t.sparsity for t in targets}):
        group = [t for t in targets if t.sparsity == level]
        masks.update(compute_masks(group, pattern.at(level), criterion, stats=stats))
    return masks


def _pruned(target: PruneTarget, scores: np.ndarray, ratio: float, pattern: Pattern) -> np.ndarray:
    keep = (pattern.at(ratio) if isinstance(pattern, NM) else pattern).mask(scores, ratio, target.info)
    return apply_mask(target.raw, keep, target.info.fill(target.raw.dtype))


def _normalize(model: ir.Model) -> None:
    """Lift ``Constant`` weights and fold ``ConstantOfShape`` weight generators into initializers.

    Nothing else is folded: general folding would e.g. turn ``Cast(bfloat16
    weight)`` into a float32 initializer (twice the bytes) or
    ``DequantizeLinear(int8 weight)`` into float.
    """
    from onnxscript.optimizer import fold_constants

    from ..limits import check_constant_of_shape
    from .normalize import normalize

    unlimited = 1 << 62
    fold_constants(
        model,
        input_size_limit=unlimited,
        output_size_limit=unlimited,
        should_fold=lambda node: node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx")
        and check_constant_of_shape(node),
    )
    normalize(model, fold=False)


def _has_markers(model: ir.Model) -> bool:
    from ..formats import is_decode_node

    return any(is_decode_node(node) for node in model.graph)


def sparsify(model: ir.Model, config: SparsifyOptions | None = None, *, progress: Progress | None = None,
             **kwargs: Any) -> SparsifyReport:
    """Sparsify ``model`` in place; keyword arguments are the options (as :class:`SparsifyOptions`).

    The command, the recipe step and :class:`SparsifyPass` run the same code with the same options.
    """
    if config is None:
        config = SparsifyOptions.from_kwargs(kwargs, "sparsify()")
    elif kwargs:
        raise TypeError("pass either a config or keyword arguments, not both")
    config.resolved()  # one-line UsageError here, not a PreconditionError from the pass machinery
    result = SparsifyPass(config, progress)(model)
    assert isinstance(result, SparsifyResult)
    return result.report
