"""Row-pointer helpers shared by ``csr`` and ``bsr``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

    from ._graph import DecodeBuilder

__all__ = ["row_pointers", "rows_from_pointers", "build_rows_from_pointers"]


def row_pointers(rows_of_items: np.ndarray, rows: int) -> np.ndarray:
    """``[rows + 1]`` offsets of each row's items (items sorted by row)."""
    counts = np.bincount(rows_of_items, minlength=rows) if rows_of_items.size else np.zeros(rows, np.int64)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def rows_from_pointers(pointers: np.ndarray) -> np.ndarray:
    pointers = np.asarray(pointers, dtype=np.int64)
    return np.repeat(np.arange(pointers.size - 1), np.diff(pointers))


def build_rows_from_pointers(builder: DecodeBuilder, pointers: ir.Value, rows: int, count: int) -> ir.Value:
    """Decode-graph form of :func:`rows_from_pointers`: the row of each of ``count`` items."""
    ends = builder.op("Slice", builder.to_index(pointers), builder.shape_const([1]), builder.shape_const([rows + 1]))
    return builder.expand_runs(ends, rows, count)
