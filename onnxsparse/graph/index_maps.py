"""Index maps: how the positions of one slot correspond to positions of another.

An index map ``m`` relates a *source* index space of size ``n`` to positions of
a *target* slot; ``m.pairs(n)`` lists every coupled ``(source, target)`` pair.
Coupling is symmetric (removing either end removes the other), so one map type
serves both directions: a Concat input is ``Offset(k)`` into the Concat output,
a Split output is ``Offset(k)`` into the Split input.

=====================  =================================  ==========================================
map                    source index ``p`` couples to      used for
=====================  =================================  ==========================================
``Identity()``         ``p``                              elementwise ops, BN, weight rows
``Offset(k)``          ``p + k``                          Concat / Split / Slice pieces
``Block(b, k)``        ``k + p*b ... k + p*b + b-1``      Flatten/Reshape ``C -> C*H*W``, depthwise
                                                          multiplier, head ``h -> h*D..h*D+D-1``,
                                                          GroupNorm group ``g -> its C/G channels``
``Stride(s, c, k)``    ``k + p, k + p + s, ...`` (c of    grouped-conv structure (index ``j`` inside
                       them)                              every group), channel shuffle,
                                                          per-head dim ``d -> {h*D + d}``
``Table(rows)``        ``rows[p]``                        anything else (explicit)
``Composed(a, b)``     ``b`` applied to ``a``'s targets   chaining maps
=====================  =================================  ==========================================

Maps compose with ``a.then(b)`` (``Composed``): ``Block(4).then(Offset(8))``
sends ``p`` to ``8 + 4p .. 8 + 4p + 3``.  ``simplify(table)`` turns an explicit
``[n, k]`` position table back into the smallest named map, which is how a
group describes each member (root index -> member positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "IndexMap",
    "Identity",
    "Offset",
    "Block",
    "Stride",
    "Table",
    "Composed",
    "simplify",
]


def _arange(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


@dataclass(frozen=True)
class IndexMap:
    """Base class: a relation between ``n`` source indices and target positions."""

    def table(self, n: int) -> np.ndarray:
        """Target positions per source index, shape ``[n, k]`` (k targets each)."""
        raise NotImplementedError

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """All coupled ``(source, target)`` pairs for a source of size ``n``."""
        table = self.table(n)
        src = np.repeat(_arange(n), table.shape[1])
        return src, table.reshape(-1)

    def target_size(self, n: int) -> int:
        """Smallest target size that holds every position (``max + 1``)."""
        table = self.table(n)
        return int(table.max()) + 1 if table.size else 0

    def then(self, other: IndexMap) -> IndexMap:
        """The composition: apply ``self``, then ``other`` to the result."""
        return Composed(self, other)

    def describe(self) -> str:
        return repr(self)


@dataclass(frozen=True)
class Identity(IndexMap):
    def table(self, n: int) -> np.ndarray:
        return _arange(n)[:, None]

    def describe(self) -> str:
        return "identity"


@dataclass(frozen=True)
class Offset(IndexMap):
    offset: int

    def table(self, n: int) -> np.ndarray:
        return (_arange(n) + self.offset)[:, None]

    def describe(self) -> str:
        return f"offset {self.offset}"


@dataclass(frozen=True)
class Block(IndexMap):
    """Source ``p`` owns the contiguous block ``offset + p*size + [0, size)``."""

    size: int
    offset: int = 0

    def table(self, n: int) -> np.ndarray:
        return self.offset + _arange(n)[:, None] * self.size + _arange(self.size)[None, :]

    def describe(self) -> str:
        return f"block {self.size}" + (f" at {self.offset}" if self.offset else "")


@dataclass(frozen=True)
class Stride(IndexMap):
    """Source ``p`` owns ``offset + p + j*stride`` for ``j < count`` (one per group)."""

    stride: int
    count: int
    offset: int = 0

    def table(self, n: int) -> np.ndarray:
        return self.offset + _arange(n)[:, None] + _arange(self.count)[None, :] * self.stride

    def describe(self) -> str:
        return f"stride {self.stride} x{self.count}" + (f" at {self.offset}" if self.offset else "")


@dataclass(frozen=True, eq=False)
class Table(IndexMap):
    """Explicit positions per source index (rows of equal length)."""

    rows: np.ndarray

    def table(self, n: int) -> np.ndarray:
        if n != self.rows.shape[0]:
            raise ValueError(f"table has {self.rows.shape[0]} rows, source has {n}")
        return self.rows

    def describe(self) -> str:
        return f"table {self.rows.shape[0]}x{self.rows.shape[1]}"


@dataclass(frozen=True)
class Composed(IndexMap):
    first: IndexMap
    second: IndexMap

    def table(self, n: int) -> np.ndarray:
        mid = self.first.table(n)
        mid_n = int(mid.max()) + 1 if mid.size else 0
        inner = self.second.table(mid_n)
        return inner[mid].reshape(n, -1)

    def describe(self) -> str:
        return f"{self.first.describe()} then {self.second.describe()}"


def simplify(table: np.ndarray) -> IndexMap:
    """The smallest named map equal to an explicit ``[n, k]`` position table."""
    table = np.asarray(table, dtype=np.int64)
    n, k = table.shape
    if n == 0:
        return Table(table)
    start = int(table[0, 0])
    if k == 1:
        if np.array_equal(table[:, 0], _arange(n) + start):
            return Identity() if start == 0 else Offset(start)
        return Table(table)
    block = Block(k, start)
    if np.array_equal(table, block.table(n)):
        return block
    stride = int(table[0, 1] - table[0, 0])
    if stride > 0:
        strided = Stride(stride, k, start)
        if np.array_equal(table, strided.table(n)):
            return strided
    return Table(table)
