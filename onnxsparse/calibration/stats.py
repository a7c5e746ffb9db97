"""Streaming statistics of activations, accumulated batch by batch in float64.

Nothing here keeps activations: every accumulator folds a batch into a few
sums and forgets it.

* :class:`ChannelStats` - per channel (one axis of a tensor; every other axis
  counts as samples): count, sum, sum of squares, sum of ``|x|``.  Gives the
  mean, variance, RMS and L2 norm the data-driven criteria use.  With
  ``counts=True`` also exact zeros, negatives, minimum and maximum: dead
  (always 0) and constant (``min == max``) channels, activation sparsity.
* :class:`LayerStats` - a contraction node's input seen as rows of ``X^T``
  (``[rows, in]``, Conv through im2col; see
  :class:`onnxsparse.calibration.capture.LinearView`): exact column sums over
  every row (bias compensation), and on a deterministic subsample of rows the
  Gram matrix of ``Z = [X; 1]`` (the ones row re-fits the bias).  With a
  *reference* model (sequential reconstruction) it also keeps the reference
  column sums and the cross Gram ``Z_ref Z^T`` on the same rows.
* :class:`ErrorStats` - ``sum (a - b)^2`` and ``sum a^2`` of two tensors, for
  relative output errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

__all__ = ["SecondMoments", "ChannelStats", "Counts", "LayerStats", "ErrorStats"]


class _HasMoments(Protocol):
    """What :class:`SecondMoments` needs: ``mean`` and ``mean_sq`` as fields or as properties."""

    @property
    def mean(self) -> np.ndarray: ...

    @property
    def mean_sq(self) -> np.ndarray: ...


class SecondMoments:
    """``var`` and ``rms`` of anything with ``mean`` and ``mean_sq`` (``E[x]``, ``E[x^2]``) arrays."""

    @property
    def var(self: _HasMoments) -> np.ndarray:
        """Population variance (clipped at 0 against rounding)."""
        return np.maximum(self.mean_sq - self.mean**2, 0.0)

    @property
    def rms(self: _HasMoments) -> np.ndarray:
        """``sqrt(E[x^2])``: per channel ``||x_c||_2 / sqrt(count)``, the L2 norm independent of how many
        samples were seen."""
        return np.sqrt(self.mean_sq)


class Counts(NamedTuple):
    """Per channel: exact zeros, negatives, minimum and maximum (``ChannelStats(counts=True)``)."""

    zeros: np.ndarray
    negatives: np.ndarray
    min: np.ndarray
    max: np.ndarray


@dataclass
class ChannelStats(SecondMoments):
    """Per-channel moments along ``axis`` (all other axes are samples)."""

    axis: int
    channels: int
    count: int = 0
    sum: np.ndarray = field(init=False)  #: set by ``__post_init__`` (zeros of the right size)
    sumsq: np.ndarray = field(init=False)  #: set by ``__post_init__`` (zeros of the right size)
    sumabs: np.ndarray = field(init=False)  #: set by ``__post_init__`` (zeros of the right size)
    #: also count exact zeros and negatives and keep min / max (``zeros``, ``negatives``, ``min``, ``max``)
    counts: bool = False
    zeros: np.ndarray | None = None
    negatives: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.sum = np.zeros(self.channels, dtype=np.float64)
        self.sumsq = np.zeros(self.channels, dtype=np.float64)
        self.sumabs = np.zeros(self.channels, dtype=np.float64)
        if self.counts:
            for name in ("zeros", "negatives"):
                if getattr(self, name) is None:
                    setattr(self, name, np.zeros(self.channels, dtype=np.int64))
            if self.min is None:
                self.min = np.full(self.channels, np.inf)
            if self.max is None:
                self.max = np.full(self.channels, -np.inf)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        axis = self.axis if self.axis >= 0 else x.ndim + self.axis
        if x.shape[axis] != self.channels:
            raise ValueError(f"expected {self.channels} channels on axis {axis}, got shape {x.shape}")
        flat = np.moveaxis(x, axis, -1).reshape(-1, self.channels).astype(np.float64, copy=False)
        self.count += flat.shape[0]
        self.sum += flat.sum(axis=0)
        self.sumsq += np.einsum("ij,ij->j", flat, flat)
        self.sumabs += np.abs(flat).sum(axis=0)
        if self.counts and flat.shape[0]:
            zeros, negatives, lo, hi = self.counted()  # the arrays themselves: updated in place
            zeros += np.count_nonzero(flat == 0, axis=0)
            negatives += np.count_nonzero(flat < 0, axis=0)
            np.minimum(lo, flat.min(axis=0), out=lo)
            np.maximum(hi, flat.max(axis=0), out=hi)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def mean_sq(self) -> np.ndarray:
        """``E[x^2]`` per channel."""
        return self.sumsq / max(self.count, 1)

    @property
    def l2(self) -> np.ndarray:
        return np.sqrt(self.sumsq)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.sumabs / max(self.count, 1)

    # -- with ``counts=True`` --------------------------------------------------------
    def counted(self) -> Counts:
        """The zero / negative counts and min / max; an error when they were not requested."""
        if not self.counts or self.zeros is None or self.negatives is None or self.min is None or self.max is None:
            raise ValueError("zero / constant counts were not requested (ChannelStats(counts=True))")
        return Counts(self.zeros, self.negatives, self.min, self.max)

    @property
    def zero_fraction(self) -> np.ndarray:
        """Fraction of exact zeros per channel."""
        zeros = self.counted().zeros
        return zeros / max(self.count, 1)

    @property
    def negative_fraction(self) -> np.ndarray:
        negatives = self.counted().negatives
        return negatives / max(self.count, 1)

    @property
    def dead(self) -> np.ndarray:
        """Channels that were exactly 0 at every sample and position."""
        zeros = self.counted().zeros
        return (zeros == self.count) & (self.count > 0)

    @property
    def constant(self) -> np.ndarray:
        """Channels that held one value at every sample and position (dead ones included)."""
        _, _, lo, hi = self.counted()
        return (lo == hi) & (self.count > 0)


@dataclass
class LayerStats:
    """Column sums and (optionally) Gram matrices of one contraction's input rows.

    ``gram`` is ``sum Z Z^T`` over the sampled rows with ``Z = [x; 1]``
    (shape ``[in + 1, in + 1]``, the last index is the ones row), ``cross`` is
    ``sum Z_ref Z^T`` on the same rows when a reference model was run.
    """

    features: int
    want_gram: bool = False
    want_cross: bool = False
    rows: int = 0  #: rows behind the exact column sums
    colsum: np.ndarray = field(init=False)  #: set by ``__post_init__`` (zeros of the right size)
    ref_colsum: np.ndarray | None = None
    sampled: int = 0  #: rows behind the Gram matrices
    gram: np.ndarray | None = None
    cross: np.ndarray | None = None
    sqsum: np.ndarray | None = None  #: sum of squares of every column over all rows (when requested)

    def __post_init__(self) -> None:
        self.colsum = np.zeros(self.features, dtype=np.float64)
        if self.want_cross and self.ref_colsum is None:
            self.ref_colsum = np.zeros(self.features, dtype=np.float64)
        n = self.features + 1
        if self.want_gram and self.gram is None:
            self.gram = np.zeros((n, n), dtype=np.float64)
        if self.want_gram and self.want_cross and self.cross is None:
            self.cross = np.zeros((n, n), dtype=np.float64)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.gram, self.cross) if a is not None)

    def add_colsum(self, colsum: np.ndarray, rows: int, ref_colsum: np.ndarray | None = None) -> None:
        self.colsum += colsum
        self.rows += rows
        if ref_colsum is not None and self.ref_colsum is not None:
            self.ref_colsum += ref_colsum

    def add_sqsum(self, sqsum: np.ndarray) -> None:
        self.sqsum = sqsum.copy() if self.sqsum is None else self.sqsum + sqsum

    def add_rows(self, rows: np.ndarray, ref_rows: np.ndarray | None = None) -> None:
        """Fold sampled rows ``[n, in]`` (and the reference's rows at the same positions) into the Grams."""
        if self.gram is None:
            return
        z = _augment(rows)
        self.gram += z.T @ z
        self.sampled += z.shape[0]
        if self.cross is not None:
            if ref_rows is None:
                raise ValueError("cross Gram requested but no reference rows given")
            self.cross += _augment(ref_rows).T @ z

    # -- normalised views ------------------------------------------------------------
    @property
    def mean(self) -> np.ndarray:
        """Exact mean of every input column (all rows)."""
        return self.colsum / max(self.rows, 1)

    @property
    def ref_mean(self) -> np.ndarray:
        """Mean of the reference model's columns (== :attr:`mean` without a reference)."""
        return self.mean if self.ref_colsum is None else self.ref_colsum / max(self.rows, 1)

    def second_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """``(E[Z Z^T], E[Z_ref Z^T])`` over the sampled rows (the second is the first without a reference)."""
        if self.gram is None or self.sampled == 0:
            raise ValueError("no Gram matrix was accumulated")
        g = self.gram / self.sampled
        c = g if self.cross is None else self.cross / self.sampled
        return g, c


def _augment(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return np.concatenate([rows, np.ones((rows.shape[0], 1))], axis=1)


@dataclass
class ErrorStats:
    """Accumulates ``||a - b||^2`` and ``||a||^2`` (``a`` = reference)."""

    sq_err: float = 0.0
    sq_ref: float = 0.0

    def update(self, ref: np.ndarray, other: np.ndarray) -> None:
        r = np.asarray(ref, dtype=np.float64)
        d = r - np.asarray(other, dtype=np.float64)
        self.sq_err += float(np.vdot(d, d))
        self.sq_ref += float(np.vdot(r, r))

    @property
    def relative(self) -> float:
        """``||a - b||^2 / ||a||^2`` (0 when both are 0)."""
        if self.sq_ref == 0.0:
            return 0.0 if self.sq_err == 0.0 else float("inf")
        return self.sq_err / self.sq_ref
