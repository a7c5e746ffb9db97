"""Sparsity patterns: which sets of weights are zeroed together, given their scores.

* ``unstructured``: any weight; the lowest scores per tensor (or across all
  tensors with ``global``).
* ``row``: any weight, but the lowest scores within each output row, so every
  output loses the same share (Wanda's comparison group).
* ``N:M``: in every group of ``M`` consecutive weights along the reduction axis
  (input channels of a Conv, ``K`` of a MatMul), keep the ``N`` best; 2:4 is
  what sparse tensor cores run.  The sparsity is fixed at ``1 - N/M``.
* ``block:RxC``: whole ``R x C`` blocks of the 2-D view ``[shape[0],
  prod(shape[1:])]`` (the view ``bsr`` stores), ranked by the L2 norm of their
  scores (block norm for ``magnitude``); edge blocks may be partial.

A pattern exposes *units* (elements, blocks) with one score each; the selection
(per tensor or global) picks the units to zero, and ``expand`` maps kept units
back to an element mask.  Families are registered by name and parse a spec
string, so CLI help is generated from the registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .._registry import Registry
from ..errors import Decline, UsageError
from .weights import WeightInfo

__all__ = [
    "Pattern",
    "Unstructured",
    "PerRow",
    "NM",
    "Block",
    "PATTERNS",
    "DEFAULT_PATTERNS",
    "parse_pattern",
    "pattern_help",
    "select_lowest",
    "nm_violations",
]


class Pattern:
    """Base class of a parsed pattern."""

    family: ClassVar[str] = ""
    syntax: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    supports_global: ClassVar[bool] = True

    @property
    def fixed_sparsity(self) -> float | None:
        """Sparsity the pattern implies (N:M), else None (the user gives it)."""
        return None

    @property
    def spec(self) -> str:
        return self.family

    @classmethod
    def parse(cls, spec: str) -> Pattern | None:
        raise NotImplementedError

    def check(self, info: WeightInfo) -> None:
        """Raises :class:`~onnxsparse.errors.Decline` with the reason if the pattern cannot apply to this weight
        (the weight stays as it is, with the reason in its report row)."""
        return None

    def unit_scores(self, scores: np.ndarray, info: WeightInfo) -> np.ndarray:
        """One score per unit (flat)."""
        return scores.reshape(-1)

    def expand(self, keep_units: np.ndarray, info: WeightInfo) -> np.ndarray:
        """Element keep-mask (weight shape) from the per-unit keep flags."""
        return keep_units.reshape(info.shape)

    def mask(self, scores: np.ndarray, sparsity: float, info: WeightInfo) -> np.ndarray:
        """Keep-mask with ``round(sparsity * units)`` lowest-scoring units zeroed."""
        units = self.unit_scores(scores, info)
        keep = np.ones(units.size, dtype=bool)
        keep[select_lowest(units, int(round(sparsity * units.size)))] = False
        return self.expand(keep, info)

    def __repr__(self) -> str:
        return f"<pattern {self.spec}>"


def select_lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices (ascending) of the ``count`` lowest scores of a flat array; ties go to the earliest positions.

    The same set as the first ``count`` of a stable argsort, found with one partitioned copy
    instead of a full sort: int64 sort order and its buffers cost 3x a float32 tensor (issue 16).
    """
    count = max(0, min(int(count), scores.size))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if count == scores.size:
        return np.arange(scores.size)
    kth = np.partition(scores, count - 1)[count - 1]
    if scores.dtype.kind in "fc" and np.isnan(kth):  # NaN sorts last: every number is lower, the NaNs tie
        nan = np.isnan(scores)
        below, ties = np.flatnonzero(~nan), np.flatnonzero(nan)
    else:
        below, ties = np.flatnonzero(scores < kth), np.flatnonzero(scores == kth)
    chosen = np.concatenate([below, ties[: count - below.size]])
    chosen.sort()
    return chosen


PATTERNS: Registry[type[Pattern]] = Registry("sparsity pattern")


@PATTERNS.register("unstructured")
class Unstructured(Pattern):
    family = "unstructured"
    syntax = "unstructured"
    summary = "any weight: lowest scores per tensor (or across tensors with --global)"

    @classmethod
    def parse(cls, spec: str) -> Pattern | None:
        return cls() if spec.strip().lower() == "unstructured" else None


@PATTERNS.register("row")
class PerRow(Pattern):
    """Unstructured, but every output (row) loses the same share: Wanda's comparison group."""

    family = "row"
    syntax = "row"
    summary = "any weight, the lowest scores within each output row (Wanda's per-output comparison)"
    supports_global = False

    @classmethod
    def parse(cls, spec: str) -> Pattern | None:
        return cls() if spec.strip().lower() == "row" else None

    def check(self, info: WeightInfo) -> None:
        if info.out_axis is None:
            raise Decline("no single output axis for per-row selection", subject=info.name)

    def mask(self, scores: np.ndarray, sparsity: float, info: WeightInfo) -> np.ndarray:
        axis = info.out_axis
        assert axis is not None
        moved = np.moveaxis(scores, axis, 0)
        rows = moved.reshape(moved.shape[0], -1)
        count = int(round(sparsity * rows.shape[1]))
        keep = np.ones(rows.shape, dtype=bool)
        if count:
            order = np.argsort(rows, axis=1, kind="stable")  # earliest on ties, as select_lowest
            np.put_along_axis(keep, order[:, :count], False, axis=1)
        return np.moveaxis(keep.reshape(moved.shape), 0, axis)


@dataclass(frozen=True, repr=False)
class NM(Pattern):
    n: int
    m: int

    family: ClassVar[str] = "N:M"
    syntax: ClassVar[str] = "N:M (e.g. 2:4, 4:8)"
    summary: ClassVar[str] = "keep N of every M consecutive weights along the reduction axis"
    supports_global: ClassVar[bool] = False

    @property
    def fixed_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    @property
    def spec(self) -> str:
        return f"{self.n}:{self.m}"

    @classmethod
    def parse(cls, spec: str) -> Pattern | None:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)
        if not match:
            return None
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise UsageError(f"pattern {spec!r}: need 0 < N < M")
        return cls(n, m)

    def check(self, info: WeightInfo) -> None:
        if info.in_axis is None:
            raise Decline("no single reduction axis for N:M", subject=info.name)
        length = info.shape[info.in_axis]
        if length % self.m:
            raise Decline(f"reduction axis has {length} elements, not a multiple of M={self.m}", subject=info.name)

    def levels(self) -> tuple[float, ...]:
        """Sparsities a tensor may get when ``--allocate`` spreads N:M: dense, or keep ``k <= N`` of every M
        (still N:M for hardware that needs at most N non-zeros per group)."""
        return (0.0, *((self.m - k) / self.m for k in range(self.n, 0, -1)))

    def kept(self, sparsity: float) -> int:
        """Weights kept per group of M at ``sparsity`` (``N`` at the pattern's own sparsity)."""
        return int(round((1.0 - sparsity) * self.m))

    def at(self, sparsity: float) -> NM:
        """The ``k:M`` pattern of an allocated level (``mask`` keeps the pattern's own N, whatever ratio)."""
        return NM(self.kept(sparsity), self.m)

    def mask(self, scores: np.ndarray, sparsity: float, info: WeightInfo) -> np.ndarray:
        axis = info.in_axis
        assert axis is not None
        moved = np.moveaxis(scores, axis, -1)
        groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // self.m, self.m)
        # stable ascending order: the M-N lowest (earliest on ties) are dropped
        order = np.argsort(groups, axis=-1, kind="stable")
        keep = np.ones(groups.shape, dtype=bool)
        np.put_along_axis(keep, order[..., : self.m - self.n], False, axis=-1)
        return np.moveaxis(keep.reshape(moved.shape), -1, axis)


@dataclass(frozen=True, repr=False)
class Block(Pattern):
    rows: int
    cols: int

    family: ClassVar[str] = "block"
    syntax: ClassVar[str] = "block:RxC (e.g. block:4x4)"
    summary: ClassVar[str] = "zero whole RxC blocks of the [shape[0], rest] view, lowest block norm first"

    @property
    def spec(self) -> str:
        return f"block:{self.rows}x{self.cols}"

    @classmethod
    def parse(cls, spec: str) -> Pattern | None:
        match = re.fullmatch(r"\s*block\s*:\s*(\d+)\s*[xX]\s*(\d+)\s*", spec)
        if not match:
            return None
        rows, cols = int(match.group(1)), int(match.group(2))
        if rows < 1 or cols < 1:
            raise UsageError(f"pattern {spec!r}: block sides must be >= 1")
        return cls(rows, cols)

    def _view(self, info: WeightInfo) -> tuple[int, int]:
        if len(info.shape) >= 2:
            return info.shape[0], int(np.prod(info.shape[1:], dtype=np.int64))
        return 1, int(np.prod(info.shape, dtype=np.int64))

    def _padded(self, info: WeightInfo) -> tuple[int, int, int, int, int, int]:
        """View rows/cols, block counts, and the block sides used: a side longer than the view is cut to it
        (the same blocks, since padding adds only zeros), so a huge ``block:`` never allocates its padding."""
        rows, cols = self._view(info)
        r, c = min(self.rows, max(rows, 1)), min(self.cols, max(cols, 1))
        return rows, cols, -(-rows // r), -(-cols // c), r, c

    def unit_scores(self, scores: np.ndarray, info: WeightInfo) -> np.ndarray:
        rows, cols, brows, bcols, r, c = self._padded(info)
        padded = np.zeros((brows * r, bcols * c), dtype=np.float64 if scores.dtype == np.float64
                          else np.float32)
        padded[:rows, :cols] = scores.reshape(rows, cols)
        blocks = padded.reshape(brows, r, bcols, c)
        return np.sqrt(np.square(blocks).sum(axis=(1, 3))).reshape(-1)

    def expand(self, keep_units: np.ndarray, info: WeightInfo) -> np.ndarray:
        rows, cols, brows, bcols, r, c = self._padded(info)
        grid = keep_units.reshape(brows, bcols)
        full = np.repeat(np.repeat(grid, r, axis=0), c, axis=1)
        return full[:rows, :cols].reshape(info.shape)


#: Pattern families the CLI offers, in help order.
DEFAULT_PATTERNS: tuple[str, ...] = ("unstructured", "row", "N:M", "block")
PATTERNS.add("N:M", NM)
PATTERNS.add("block", Block)


def parse_pattern(spec: str | Pattern) -> Pattern:
    """``"unstructured"``, ``"2:4"``, ``"block:4x4"`` -> a :class:`Pattern`."""
    if isinstance(spec, Pattern):
        return spec
    for _, family in PATTERNS.items():
        parsed = family.parse(spec)
        if parsed is not None:
            return parsed
    raise UsageError(f"unknown sparsity pattern {spec!r}; use {pattern_help()}")


def pattern_help() -> str:
    return ", ".join(family.syntax for _, family in PATTERNS.items())


def nm_violations(array: np.ndarray, n: int, m: int, axis: int, fill: np.ndarray | float = 0) -> int:
    """Groups of ``m`` along ``axis`` holding more than ``n`` non-fill values (0 = pattern holds)."""
    from ..formats.base import bits_view

    fill_bits = bits_view(np.asarray(fill, dtype=array.dtype).reshape(1))[0]
    nonzero = bits_view(array) != fill_bits
    moved = np.moveaxis(nonzero, axis, -1)
    if moved.shape[-1] % m:
        return -1
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    return int(np.count_nonzero(groups.sum(axis=-1) > n))
