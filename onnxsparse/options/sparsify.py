"""The options of ``sparsify``: one frozen dataclass for the command, the API and the recipe step.

:class:`SparsifyOptions` is also :class:`onnxsparse.passes.sparsify.SparsifyConfig` (the public
name the API has always taken).  Every option is a field: recipe key = API keyword = flag without
dashes (``global``/``global_scope``, ``ratio``/``ratios``, ``decoder``/``decoders`` and
``shape``/``shapes`` keep their older attribute names, which the API also accepts).  Two keywords are
Python objects only the API can hand over and so are plain fields, not options: ``stats``
(precomputed per-feature norms) and ``calib_progress`` (a progress bar for the calibration pass).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self

import numpy as np

from ..calibration.data import DEFAULT_CALIB_SAMPLES, DataSource
from ..errors import UsageError
from ..formats import AUTO, AUTO_SLACK, FORMATS, format_choices
from ..sparsity import NM, Pattern, SparsityCriterion, Unstructured, available_criteria, get_criterion, parse_pattern
from ..sparsity import pattern_help
from ..sparsity.allocate import ALLOCATORS, DEFAULT_ALLOCATOR, OWL_LAMBDA, OWL_THRESHOLD
from ..sparsity.allocate import AUTO as AUTO_ALLOCATION
from . import fields as F
from .base import Options
from .fields import Bad, Cli, ParseContext, option

__all__ = ["SparsifyOptions", "DEFAULT_MIN_SIZE", "API_ONLY"]

#: Tensors with fewer elements stay dense (a decode graph costs ~1-2 KB and some load time).
DEFAULT_MIN_SIZE = 4096
#: Keywords only the Python API takes (objects a recipe or a command line cannot hold).
API_ONLY: tuple[str, ...] = ("stats", "calib_progress")

#: What ``calib`` holds: a path or ``random`` (all front ends), in-memory feeds or a source (API).
CalibData = str | os.PathLike[str] | Mapping[str, np.ndarray] | DataSource

_CALIB = "calibration (activation-aware criteria: --criterion wanda, --allocate sensitivity)"


def _pattern(value: Any, ctx: ParseContext) -> str | Pattern:
    """A pattern spec (``2:4``, ``block:4x4``), or a :class:`Pattern` the API hands over."""
    if isinstance(value, Pattern):
        return value
    spec = F.text(value, ctx)
    try:
        parse_pattern(spec)
    except UsageError as exc:
        raise Bad(str(exc)) from None
    return spec


def _criterion(value: Any, ctx: ParseContext) -> str | SparsityCriterion:
    """A registered criterion's name, or a :class:`SparsityCriterion` instance (API)."""
    if isinstance(value, SparsityCriterion):
        return value
    return str(F.choice(lambda: available_criteria("elementwise"), "sparsity criterion")(value, ctx))


def _allocators() -> tuple[str, ...]:
    return (AUTO_ALLOCATION, *ALLOCATORS)


def _target(value: Any, ctx: ParseContext) -> float:
    """``size=R`` (the written file as a fraction of the input's bytes); the API may give R itself."""
    if isinstance(value, str):
        key, sep, number = value.partition("=")
        if not sep or key.strip() != "size":
            raise Bad(f"expected size=R (e.g. size=0.3), got {value!r}")
        try:
            value = float(number)
        except ValueError:
            raise Bad(f"expected size=R (e.g. size=0.3): {number!r} is not a number") from None
    result = F.number()(value, ctx)
    if result <= 0:
        raise Bad(f"size=R needs R > 0, got {result:g}")
    return result


def _ratios(value: Any, ctx: ParseContext) -> tuple[tuple[str, float], ...]:
    """``{glob: R}``, or the API's list of ``(glob, R)`` pairs (first match wins)."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
        value = dict(value)
    return F.ratio_map(value, ctx)


def _block(value: Any, ctx: ParseContext) -> tuple[int, int]:
    try:
        return F.block_shape(value, ctx)
    except Bad:
        raise Bad(f"expected RxC (e.g. 4x4), got {value!r}") from None


def _decoders(value: Any, ctx: ParseContext) -> tuple[tuple[str, str], ...]:
    pairs = F.str_map(value, ctx)
    for name, variant in pairs:
        if name not in FORMATS:
            raise Bad(f"unknown format {name!r}{F.did_you_mean(name, format_choices())}")
        codec = FORMATS.get(name)
        if variant not in codec.decoders:
            raise Bad(f"format {name} has no decode graph {variant!r}; choose from {', '.join(codec.decoders)}")
    return pairs




def _decoders_help() -> str:
    variants = [f"{name}={'|'.join(FORMATS.get(name).decoders)}" for name in format_choices()[1:]
                if len(FORMATS.get(name).decoders) > 1]
    return "decode-graph variant per format (repeatable FORMAT=VARIANT): " + ", ".join(variants)


@dataclass(frozen=True, kw_only=True)
class SparsifyOptions(Options):
    """What to prune and how to store it (see ``python -m onnxsparse sparsify --help``)."""

    kind: ClassVar[str] = "sparsify"
    help: ClassVar[str] = "zero weights to a pattern and store them sparse (smaller file, same speed)"
    refuses: ClassVar[Mapping[str, str]] = {
        "sparse": "the model is already stored sparse; put all sparsify options in one step",
    }
    sets: ClassVar[frozenset[str]] = frozenset({"sparse"})

    sparsity: float | None = option(
        None, parse=F.optional(F.ratio), kind="ratio",
        help="fraction of weights zeroed per tensor (omit: lossless re-encode)",
        cli=Cli(metavar="R", help="fraction of weights to zero (0..1): in each tensor, or their parameter-weighted "
                                  "average with --allocate; omit for a lossless re-encode"))
    pattern: str | Pattern = option(
        "unstructured", parse=_pattern, kind="pattern", help=f"sparsity pattern: {pattern_help()}",
        cli=Cli(metavar="P", text=str))
    criterion: str | SparsityCriterion = option(
        "magnitude", parse=_criterion, kind="criterion",
        help=f"how weights are scored: {', '.join(available_criteria('elementwise'))}", cli=Cli(text=str))
    format: str = option(
        AUTO, parse=F.choice(format_choices, "storage format"), kind="format",
        help=f"storage format: {', '.join(format_choices())} (auto: the smallest per tensor)", cli=Cli(text=str))
    auto_slack: float = option(
        AUTO_SLACK, parse=F.number(0, 1), kind="number in [0, 1]",
        help=f"auto: take the format cheapest to decode within this fraction of the smallest (default {AUTO_SLACK}; "
             "0.08 picks delta over bitmask near 50% sparsity: ~6% larger, session creation ~2x faster)",
        cli=Cli(metavar="F", help=f"auto: take the format cheapest to decode within this fraction of the smallest "
                                  f"(default {AUTO_SLACK}; 0.08 picks delta over bitmask near 50%% sparsity)"))
    global_scope: bool = option(
        False, key="global", parse=F.boolean, kind="bool",
        help="one magnitude threshold across all tensors instead of per tensor")
    target_size: float | None = option(
        None, key="target", parse=F.optional(_target), kind="size=R",
        help="instead of sparsity: the smallest average sparsity whose written model is at most R x the input "
             "file (e.g. size=0.3), predicted by encoding each tensor; spread over the tensors by allocate",
        cli=Cli(metavar="size=R", text=str))
    allocate: str = option(
        DEFAULT_ALLOCATOR, parse=F.choice(_allocators, "allocation"), kind="allocation",
        help="spread sparsity over the tensors, keeping it the parameter-weighted average: uniform (every tensor "
             "R), owl (less sparsity where weights/activations have outliers), sensitivity (measured output "
             "error of each tensor pruned alone; needs calib); auto: sensitivity with calib, else uniform",
        cli=Cli(text=str))
    owl_lambda: float = option(
        OWL_LAMBDA, parse=F.number(0), kind="number >= 0",
        help=f"owl: ratios span 2x this around the target (default {OWL_LAMBDA})", cli=Cli(metavar="L"))
    owl_threshold: float = option(
        OWL_THRESHOLD, parse=F.number(0), kind="number > 0",
        help=f"owl: an outlier scores above this x its tensor's mean (default {OWL_THRESHOLD:g})",
        cli=Cli(metavar="M"))
    ratios: Sequence[tuple[str, float]] | Mapping[str, float] = option(
        (), key="ratio", parse=_ratios, kind="mapping",
        help="per-layer sparsity {glob: R} for tensors/nodes matching glob, first match wins",
        cli=Cli(metavar="GLOB=R"))
    exclude: Sequence[str] = option(
        (), parse=F.strings, kind="list",
        help="tensors (or tensors read by nodes) matching these globs stay dense and unpruned",
        cli=Cli(metavar="GLOB", append=True, text=str))
    min_size: int = option(
        DEFAULT_MIN_SIZE, parse=F.integer(0), kind="int >= 0",
        help=f"tensors with fewer elements stay dense (default {DEFAULT_MIN_SIZE})", cli=Cli(metavar="N"))
    block: tuple[int, int] | None = option(
        None, parse=F.optional(_block), kind="RxC", help="BSR block shape (default: chosen per tensor)",
        cli=Cli(metavar="RxC", text=str))
    decoders: Sequence[tuple[str, str]] | Mapping[str, str] = option(
        (), key="decoder", parse=_decoders, kind="mapping", help=_decoders_help(),
        cli=Cli(metavar="FORMAT=VARIANT", text=str))
    raise_opset: bool = option(
        True, parse=F.boolean, kind="bool",
        help="allow raising the model's opset for a decode graph (off: older decode graphs or dense instead)",
        cli=Cli(help="never raise the model's opset for a decode graph (older decode graphs or dense instead)"))
    normalize: bool = option(
        True, parse=F.boolean, kind="bool", help="lift Constant weights / fold ConstantOfShape weights first",
        cli=Cli(help="do not lift Constant weights / fold ConstantOfShape weights first"))
    calib: CalibData | None = option(
        None, parse=F.optional(F.data_or_arrays), kind="path",
        help="calibration data: .npz keyed by input name (axis 0 = samples), a folder of them, or 'random' "
             "(recipe default: its top-level calib)",
        cli=Cli(metavar="DATA", group=_CALIB, text=str))
    calib_samples: int = option(
        DEFAULT_CALIB_SAMPLES, parse=F.integer(1), kind="int >= 1",
        help=f"calibration samples used (default {DEFAULT_CALIB_SAMPLES})", cli=Cli(metavar="N", group=_CALIB))
    calib_batch: int = option(
        32, parse=F.integer(1), kind="int >= 1", help="calibration samples per onnxruntime run (default 32)",
        cli=Cli(metavar="N", group=_CALIB))
    shapes: Sequence[tuple[str, tuple[int, ...]]] | Mapping[str, tuple[int, ...]] | None = option(
        (), key="shape", parse=F.optional(F.shape_map), kind="mapping",
        help="input shapes for dynamic dims of calib random (recipe default: its top-level shape)",
        cli=Cli(metavar="NAME=D0xD1x...", group=_CALIB, text=str))

    #: API only: precomputed per-feature input norms (``weight name -> array``) for activation-aware criteria
    stats: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    #: API only (the command sets it from its progress setting): progress bar for the calibration pass
    calib_progress: bool = field(default=False, compare=False)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], where: str) -> Self:
        """API keywords: the options parsed like a recipe step, plus the API-only objects."""
        api = {k: kwargs[k] for k in API_ONLY if k in kwargs}
        options = super().from_kwargs({k: v for k, v in kwargs.items() if k not in API_ONLY}, where)
        return replace(options, **api) if api else options

    # -------------------------------------------------------------------------------- views

    def ratio_pairs(self) -> list[tuple[str, float]]:
        items = self.ratios.items() if isinstance(self.ratios, Mapping) else self.ratios
        return [(str(glob), float(ratio)) for glob, ratio in items]

    def decoder_map(self) -> dict[str, str]:
        return dict(self.decoders.items() if isinstance(self.decoders, Mapping) else self.decoders)

    def shape_map(self) -> dict[str, tuple[int, ...]] | None:
        if not self.shapes:
            return None
        return dict(self.shapes.items() if isinstance(self.shapes, Mapping) else self.shapes) or None

    @property
    def needs_calibration(self) -> bool:
        """Calibration data is read: an activation-aware criterion scores the weights, or the
        allocation measures output errors."""
        return get_criterion(self.criterion, "elementwise").needs_activations or self.allocate == "sensitivity"

    # -------------------------------------------------------------------------------- checks

    def check(self) -> None:
        self.resolved(need_data=False)  # a recipe's calib is checked with its data files

    def resolved(self, *, need_data: bool = True) -> tuple[Pattern, SparsityCriterion]:
        """Validate and return the parsed pattern and criterion (raises UsageError).

        ``need_data=False`` skips the check that an activation-aware criterion
        has calibration data (a recipe supplies its own later).
        """
        pattern = parse_pattern(self.pattern)
        criterion = get_criterion(self.criterion, "elementwise")
        if self.format != AUTO and self.format not in FORMATS:
            FORMATS.get(self.format)  # raises with the list of choices
        for name, decoder in self.decoder_map().items():
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
            if self.allocate == "sensitivity" and self.sparsity is not None:
                if not 0.0 < self.sparsity <= pattern.fixed_sparsity:
                    raise UsageError(f"--allocate sensitivity with {pattern.spec}: --sparsity must be in "
                                     f"(0, {pattern.fixed_sparsity:g}] (tensors are dense or keep <= {pattern.n} "
                                     f"of {pattern.m})")
            elif self.sparsity is not None and abs(self.sparsity - pattern.fixed_sparsity) > 1e-9:
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
        self._check_allocation(pattern, need_data)
        if self.block is not None and (len(self.block) != 2 or min(self.block) < 1):
            raise UsageError(f"--block must be two positive sides, got {self.block}")
        return pattern, criterion

    def allocation(self, pattern: Pattern) -> str:
        """The allocation method that runs (``auto`` resolved)."""
        if self.allocate != AUTO_ALLOCATION:
            return "uniform" if self.allocate == "sensitivity" and self.nm_fixed(pattern) else self.allocate
        free = ((self.sparsity is not None or self.target_size is not None) and pattern.fixed_sparsity is None
                and not self.global_scope)
        return "sensitivity" if free and self.calib is not None else "uniform"

    def nm_fixed(self, pattern: Pattern) -> bool:
        """An N:M pattern without ``--sparsity``: every tensor gets exactly N:M."""
        return isinstance(pattern, NM) and self.sparsity is None

    def _check_allocation(self, pattern: Pattern, need_data: bool) -> None:
        if self.allocate not in (AUTO_ALLOCATION, *ALLOCATORS):
            raise UsageError(f"--allocate must be one of {', '.join((AUTO_ALLOCATION, *ALLOCATORS))}, got {self.allocate!r}")
        if self.owl_lambda < 0 or self.owl_threshold <= 0:
            raise UsageError("--owl-lambda must be >= 0 and --owl-threshold > 0")
        if self.target_size is not None:
            if not 0.0 < self.target_size:
                raise UsageError(f"--target size=R needs R > 0, got {self.target_size}")
            if self.sparsity is not None:
                raise UsageError("--target size=R chooses the sparsity: drop --sparsity")
            if pattern.fixed_sparsity is not None or self.global_scope:
                raise UsageError("--target size=R needs a pattern with a free sparsity and no --global")
        if self.allocate in (AUTO_ALLOCATION, "uniform"):
            return
        if isinstance(pattern, NM) and self.allocate == "sensitivity" and self.sparsity is not None:
            pass  # N:M levels per tensor (dense, or keep <= N of M), checked above
        elif isinstance(pattern, NM) and self.allocate == "sensitivity":
            raise UsageError(f"--allocate sensitivity with {pattern.spec} needs --sparsity R, the average "
                             f"(<= {pattern.fixed_sparsity:g}) to spread over dense and <= {pattern.spec} tensors")
        elif pattern.fixed_sparsity is not None:
            raise UsageError(f"pattern {pattern.spec} fixes every tensor's sparsity; --allocate {self.allocate} "
                             "does not apply (sensitivity with --sparsity R mixes dense and sparser N:M tensors)")
        if self.sparsity is None and self.target_size is None:
            raise UsageError(f"--allocate {self.allocate} spreads --sparsity over the tensors: give --sparsity")
        if self.global_scope:
            raise UsageError("--global already pools the tensors; --allocate does not apply")
        if need_data and self.allocate == "sensitivity" and self.calib is None:
            raise UsageError("--allocate sensitivity measures output errors: give --calib DATA "
                             "(or use --allocate owl, which works from the weights alone)")

    def prunes(self, pattern: Pattern) -> bool:
        return (self.sparsity is not None or self.target_size is not None or pattern.fixed_sparsity is not None
                or bool(self.ratio_pairs()))

    def describe_run(self) -> dict[str, Any]:
        """The options as the report records them (resolved: pattern spec, criterion and allocation names)."""
        pattern, criterion = self.resolved()
        return {
            "sparsity": self.sparsity if self.sparsity is not None else pattern.fixed_sparsity,
            "pattern": pattern.spec,
            "criterion": criterion.name,
            "format": self.format,
            "global": self.global_scope,
            "allocate": self.allocation(pattern),
            "target_size": self.target_size,
            "ratios": dict(self.ratio_pairs()),
            "exclude": list(self.exclude),
            "min_size": self.min_size,
            "block": list(self.block) if self.block else None,
            "decoders": self.decoder_map(),
            "auto_slack": self.auto_slack,
            "lossless": not self.prunes(pattern),
            "calibration_samples": self.calib_samples if criterion.needs_activations and self.calib is not None
            else None,
        }
