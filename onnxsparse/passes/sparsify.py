"""Sparsify weights (optional) and store every worthwhile tensor in a compact format.

Steps, each recorded in the :class:`SparsifyReport`:

1. expand any tensors already stored by onnxsparse (so re-running re-encodes);
2. optionally normalise (lift ``Constant`` weights to initializers, fold
   ``ConstantOfShape`` weight generators; nothing else is folded, which would
   e.g. turn ``Cast(bfloat16 weight)`` into a float32 initializer);
3. prune: with a sparsity, an ``N:M`` pattern or per-layer ratios, score the
   weights of linear ops with a criterion and zero the lowest units of the
   pattern (per tensor, or pooled across tensors with ``global_scope``);
   quantized weights are scored dequantized and zeroed to their zero point;
4. store: every initializer with at least ``min_size`` elements is encoded in
   the requested format (``auto``: the smallest per tensor; near-ties go to the
   cheaper decode graph) unless dense is smaller.

Without a sparsity the pass is lossless: it only re-encodes zeros already there.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from ..calibration.data import DEFAULT_CALIB_SAMPLES
from ..errors import UsageError
from ..formats import (
    AUTO,
    AUTO_SLACK,
    FORMATS,
    Candidate,
    CodecOptions,
    TensorData,
    choose,
    expand_all,
    information_bound_bits,
    model_opset,
    raise_blocker,
    read_storage,
    set_model_opset,
    store,
    write_storage,
)
from ..formats._base import SUPPORTED_DTYPES
from ..sparsity import (
    NM,
    Pattern,
    Unstructured,
    PruneTarget,
    SparsityCriterion,
    WeightInfo,
    apply_mask,
    compute_masks,
    find_weights,
    get_criterion,
    nm_violations,
    parse_pattern,
)

__all__ = ["SparsifyConfig", "SparsifyPass", "SparsifyReport", "TensorRow", "sparsify", "DEFAULT_MIN_SIZE",
           "Progress"]

logger = logging.getLogger(__name__)

#: Tensors with fewer elements stay dense (a decode graph costs ~1-2 KB and some load time).
DEFAULT_MIN_SIZE = 4096
#: Opset the preferred decode graphs need (ScatterElements with reduction=add).
PREFERRED_OPSET = 16


@dataclass
class SparsifyConfig:
    """What to prune and how to store it (see ``python -m onnxsparse sparsify --help``)."""

    sparsity: float | None = None
    pattern: str | Pattern = "unstructured"
    criterion: str | SparsityCriterion = "magnitude"
    format: str = AUTO
    global_scope: bool = False
    #: per-layer sparsity: ``(glob, ratio)`` pairs matched against tensor and consumer node names, first wins
    ratios: Sequence[tuple[str, float]] | Mapping[str, float] = ()
    exclude: Sequence[str] = ()
    min_size: int = DEFAULT_MIN_SIZE
    #: BSR block shape (rows, cols); None = chosen per tensor
    block: tuple[int, int] | None = None
    #: decode-graph variant per format, e.g. ``{"bitmask": "gather"}``
    decoders: Mapping[str, str] = field(default_factory=dict)
    #: ``auto`` takes the cheapest-to-decode format within this fraction of the smallest
    #: (0.08 picks delta over bitmask near 50% sparsity: ~6% larger, folds ~2x faster)
    auto_slack: float = AUTO_SLACK
    raise_opset: bool = True
    normalize: bool = True
    #: calibration statistics for activation-aware criteria (``weight name -> per-feature norms``);
    #: measured from ``calib`` when not given
    stats: Mapping[str, np.ndarray] | None = None
    #: calibration data for activation-aware criteria: anything :func:`onnxsparse.calibration.load_data` takes
    calib: object | None = None
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_batch: int = 32
    #: input shapes for ``calib="random"`` (dynamic dims)
    shapes: Mapping[str, tuple[int, ...]] | None = None
    #: progress bar for the calibration pass
    calib_progress: bool = False

    def ratio_pairs(self) -> list[tuple[str, float]]:
        items = self.ratios.items() if isinstance(self.ratios, Mapping) else self.ratios
        return [(str(glob), float(ratio)) for glob, ratio in items]

    def resolved(self, *, need_data: bool = True) -> tuple[Pattern, SparsityCriterion]:
        """Validate and return the parsed pattern and criterion (raises UsageError).

        ``need_data=False`` skips the check that an activation-aware criterion
        has calibration data (a recipe supplies its own later).
        """
        pattern = parse_pattern(self.pattern)
        criterion = get_criterion(self.criterion)
        if self.format != AUTO and self.format not in FORMATS:
            FORMATS.get(self.format)  # raises with the list of choices
        for name, decoder in self.decoders.items():
            codec = FORMATS.get(name)
            if decoder not in codec.decoders:
                raise UsageError(f"format {name} has no decode graph {decoder!r}; choose from {codec.decoders}")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        for glob, ratio in self.ratio_pairs():
            if not 0.0 <= ratio < 1.0:
                raise UsageError(f"ratio for {glob!r} must be in [0, 1), got {ratio}")
        if self.min_size < 0:
            raise UsageError("--min-size must be >= 0")
        if not 0.0 <= self.auto_slack <= 1.0:
            raise UsageError(f"--auto-slack must be in [0, 1], got {self.auto_slack}")
        if self.calib_samples < 1:
            raise UsageError(f"--calib-samples must be >= 1, got {self.calib_samples}")
        if (need_data and criterion.needs_activations and self.stats is None and self.calib is None
                and self.prunes(pattern)):
            raise UsageError(f"criterion {criterion.name} needs calibration data: give --calib DATA "
                             "(an .npz of model inputs, a folder of them, or 'random')")
        if isinstance(pattern, NM):
            if self.sparsity is not None and abs(self.sparsity - pattern.fixed_sparsity) > 1e-9:
                raise UsageError(
                    f"pattern {pattern.spec} fixes the sparsity at {pattern.fixed_sparsity:g}; drop --sparsity"
                )
            if self.ratio_pairs():
                raise UsageError(f"pattern {pattern.spec} fixes the sparsity; per-layer ratios do not apply")
        if self.global_scope and not pattern.supports_global:
            raise UsageError(f"pattern {pattern.spec} is chosen per group; --global does not apply")
        if criterion.reconstructs and not isinstance(pattern, (Unstructured, NM)):
            raise UsageError(f"criterion {criterion.name} supports the unstructured and N:M patterns, "
                             f"not {pattern.spec}")
        if criterion.reconstructs and self.global_scope:
            raise UsageError(f"criterion {criterion.name} prunes layer by layer; --global does not apply")
        if self.global_scope and self.sparsity is None:
            raise UsageError("--global needs --sparsity")
        if self.block is not None and (len(self.block) != 2 or min(self.block) < 1):
            raise UsageError(f"--block must be two positive sides, got {self.block}")
        return pattern, criterion

    def prunes(self, pattern: Pattern) -> bool:
        return self.sparsity is not None or pattern.fixed_sparsity is not None or bool(self.ratio_pairs())

    def describe(self) -> dict[str, Any]:
        pattern, criterion = self.resolved()
        return {
            "sparsity": self.sparsity if self.sparsity is not None else pattern.fixed_sparsity,
            "pattern": pattern.spec,
            "criterion": criterion.name,
            "format": self.format,
            "global": self.global_scope,
            "ratios": dict(self.ratio_pairs()),
            "exclude": list(self.exclude),
            "min_size": self.min_size,
            "block": list(self.block) if self.block else None,
            "decoders": dict(self.decoders),
            "auto_slack": self.auto_slack,
            "lossless": not self.prunes(pattern),
            "calibration_samples": self.calib_samples if criterion.needs_activations and self.calib is not None
            else None,
        }


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
Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


class SparsifyPass(ir.passes.InPlacePass):
    """Prune (optionally) and store weights compactly; the report is in ``self.report``."""

    def __init__(self, config: SparsifyConfig | None = None, progress: Progress | None = None) -> None:
        super().__init__()
        self.config = config or SparsifyConfig()
        self.progress = progress
        self.report: SparsifyReport | None = None

    def call(self, model: ir.Model) -> PassResult:
        config = self.config
        pattern, criterion = config.resolved()
        reencoded = expand_all(model) if (read_storage(model) or _has_markers(model)) else {}
        if config.normalize:
            _normalize(model)
        before = model_opset(model)
        report = SparsifyReport(config.describe(), before, before, reencoded=reencoded)
        self.report = report

        considered = self._select(model, report)
        arrays = {info.name: model.graph.initializers[info.name].const_value.numpy() for info in considered}
        before_sparsity = {
            info.name: TensorData(info.name, arrays[info.name], info.fill(arrays[info.name].dtype)).sparsity
            for info in considered
        }
        targets: dict[str, float] = {}
        notes: dict[str, str] = {}
        if config.prunes(pattern):
            targets, notes = self._prune(model, considered, arrays, pattern, criterion)
        max_opset, blocker = self._allowed_opset(model, before)

        options = CodecOptions(block=config.block)
        needed = 0
        specs = read_storage(model)
        loop: Iterable[WeightInfo] = considered
        if self.progress is not None:
            loop = self.progress(considered, len(considered), "encode")
        for info in loop:
            array = arrays[info.name]
            tensor = TensorData(info.name, array, info.fill(array.dtype))
            chosen, why = choose(tensor, config.format, options, max_opset, model.graph, slack=config.auto_slack,
                                 decoders=config.decoders)
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
        write_storage(model, specs)
        if needed > before:
            set_model_opset(model, needed)
            report.notes.append(f"default-domain opset raised from {before} to {needed} for the decode graphs")
        report.opset_after = model_opset(model)
        modified = bool(targets) or any(r.format != "dense" for r in report.tensors) or bool(reencoded)
        return PassResult(model, modified=modified)

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
        for info in considered:
            override = _ratio_for(pairs, info)
            target = override[0] if override else default
            if target is None:
                continue
            reason = info.reason if not info.prunable else pattern.check(info)
            if reason:
                notes[info.name] = f"not pruned: {reason}"
                continue
            targets[info.name] = target
            prune_list.append(
                PruneTarget(info, arrays[info.name], target, pooled=config.global_scope and override is None)
            )
        masks, updated = self._masks(model, prune_list, pattern, criterion, notes)
        for target in prune_list:
            name = target.info.name
            fill = target.info.fill(arrays[name].dtype)
            pruned = updated[name] if name in updated else apply_mask(arrays[name], masks[name], fill)
            if isinstance(pattern, NM) and target.info.in_axis is not None:
                bad = nm_violations(pruned, pattern.n, pattern.m, target.info.in_axis, fill)
                if bad:  # pragma: no cover - guarded invariant
                    raise AssertionError(f"{name}: {bad} groups break {pattern.spec}")
            arrays[name] = pruned
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
            return compute_masks(prune_list, pattern, criterion, stats=config.stats), {}
        if criterion.reconstructs:
            updated = self._reconstruct(model, prune_list, pattern, notes)
            rest = [t for t in prune_list if t.info.name not in updated]
            return compute_masks(rest, pattern, get_criterion("magnitude")), updated
        stats = config.stats
        if stats is None:
            stats = self._measure_activations(model, [t.info for t in prune_list], notes)
        measured = [t for t in prune_list if t.info.name in stats]
        fallback = [t for t in prune_list if t.info.name not in stats]
        for target in fallback:
            notes.setdefault(target.info.name, f"{criterion.name}: no activation statistics; scored by magnitude")
        masks = compute_masks(measured, pattern, criterion, stats=stats)
        masks.update(compute_masks(fallback, pattern, get_criterion("magnitude")))
        return masks, {}

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
        nm = (pattern.n, pattern.m) if isinstance(pattern, NM) else None
        updated: dict[str, np.ndarray] = {}
        for name, hessian in hessians(model, usable, source, batch_size=config.calib_batch,
                                      limit=config.calib_samples, progress=config.calib_progress):
            if isinstance(hessian, str):
                reasons[name] = hessian
                continue
            target = targets[name]
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
        source = load_data(config.calib, model, shapes=config.shapes, samples=config.calib_samples)
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
            reason = raise_blocker(model, target)
            if reason is None:
                return target, blocker
            blocker = blocker or reason
        return before, blocker


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


def sparsify(model: ir.Model, config: SparsifyConfig | None = None, *, progress: Progress | None = None,
             **kwargs: Any) -> SparsifyReport:
    """Sparsify ``model`` in place; keyword arguments build a :class:`SparsifyConfig`."""
    if config is None:
        config = SparsifyConfig(**kwargs)
    elif kwargs:
        raise TypeError("pass either a config or keyword arguments, not both")
    sparsify_pass = SparsifyPass(config, progress)
    sparsify_pass(model)
    assert sparsify_pass.report is not None
    return sparsify_pass.report
