"""``bsr``: block values + block column indices + block row pointers; wins when zeros come in blocks.

The tensor's 2-D view ``[shape[0], prod(shape[1:])]`` is cut into ``R x C``
blocks (the block must divide the view); every block with a non-zero is stored
whole.  Without a given block the codec tries several shapes and keeps the
smallest.  Decode (opset 16): block rows from the pointers (ScatterElements
add + CumSum), ``ScatterND`` of whole blocks into a ``[blocks, R*C]`` grid of
fill values, then ``Transpose`` back to the matrix layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Decline
from .base import Codec, CodecOptions, Encoded, TensorData, narrowest_uint
from ._registry_instance import FORMATS
from ._rows import build_rows_from_pointers, rows_from_pointers

if TYPE_CHECKING:
    import onnx_ir as ir

    from ._graph import DecodeBuilder

__all__ = ["BsrCodec", "CANDIDATE_BLOCKS"]

#: Block shapes tried when none is given (those that divide the 2-D view).
CANDIDATE_BLOCKS: tuple[tuple[int, int], ...] = (
    (1, 2), (2, 1), (1, 4), (4, 1), (2, 2), (1, 8), (8, 1), (2, 4), (4, 2),
    (4, 4), (1, 16), (16, 1), (8, 8), (16, 16), (32, 32),
)


def _occupied(tensor: TensorData, block: tuple[int, int]) -> np.ndarray:
    rows, cols = tensor.matrix_shape()
    r, c = block
    return np.asarray(tensor.mask.reshape(rows // r, r, cols // c, c).any(axis=(1, 3)))


def _size(tensor: TensorData, block: tuple[int, int]) -> int:
    rows, cols = tensor.matrix_shape()
    r, c = block
    nblocks = int(np.count_nonzero(_occupied(tensor, block)))
    col_bytes = narrowest_uint(cols // c - 1).itemsize
    ptr_bytes = narrowest_uint(nblocks).itemsize
    return nblocks * (r * c * tensor.dtype.itemsize + col_bytes) + (rows // r + 1) * ptr_bytes


@FORMATS.register("bsr")
class BsrCodec(Codec):
    name = "bsr"
    summary = "block values + block column indices + block row pointers (block RxC given or chosen)"
    decoders = ("scatter",)
    cost_rank = 2

    def blocks(self, tensor: TensorData, options: CodecOptions) -> list[tuple[int, int]]:
        rows, cols = tensor.matrix_shape()
        wanted = [options.block] if options.block else list(CANDIDATE_BLOCKS)
        return [(r, c) for r, c in wanted if r > 0 and c > 0 and rows % r == 0 and cols % c == 0]

    def check(self, tensor: TensorData, options: CodecOptions) -> None:
        rows, cols = tensor.matrix_shape()
        if rows * cols == 0:
            raise Decline("empty tensor")
        if not self.blocks(tensor, options):
            if options.block:
                r, c = options.block
                raise Decline(f"block {r}x{c} does not divide the {rows}x{cols} matrix view")
            raise Decline(f"no candidate block divides the {rows}x{cols} matrix view")

    def encode(self, tensor: TensorData, options: CodecOptions) -> Encoded:
        rows, cols = tensor.matrix_shape()
        candidates = self.blocks(tensor, options)
        r, c = min(candidates, key=lambda b: (_size(tensor, b), -b[0] * b[1]))
        brows, bcols = rows // r, cols // c
        # No per-block int64 temporaries beyond the column indices (issue 16): values come from a boolean
        # index of the blocked view (row-major, as the indices), row pointers from per-row counts.
        occupied = _occupied(tensor, (r, c))
        grid = tensor.array.reshape(brows, r, bcols, c).transpose(0, 2, 1, 3)
        values = np.ascontiguousarray(grid[occupied])
        columns = np.flatnonzero(occupied)
        count = int(columns.size)
        columns %= bcols
        pointers = np.concatenate([[0], np.cumsum(np.count_nonzero(occupied, axis=1))]).astype(np.int64)
        return Encoded(
            self.name,
            {
                "values": values,
                "block_col_indices": columns.astype(narrowest_uint(bcols - 1)),
                "block_row_ptr": pointers.astype(narrowest_uint(count)),
            },
            {"rows": rows, "cols": cols, "block": [r, c], "count": count},
        )

    def decode(self, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any],
               shape: tuple[int, ...], fill: np.ndarray) -> np.ndarray:
        rows, cols = int(params["rows"]), int(params["cols"])
        r, c = (int(v) for v in params["block"])
        brows, bcols = rows // r, cols // c
        values = np.asarray(arrays["values"])
        grid = np.full((brows * bcols, r, c), fill, dtype=values.dtype)
        where = rows_from_pointers(arrays["block_row_ptr"]) * bcols + np.asarray(
            arrays["block_col_indices"], dtype=np.int64
        )
        grid[where] = values
        return grid.reshape(brows, bcols, r, c).transpose(0, 2, 1, 3).reshape(shape)

    def min_opset(self, decoder: str, dtype: np.dtype) -> int:
        return 16

    def build(self, builder: DecodeBuilder, encoded: Encoded, stored: Mapping[str, ir.Value],
              decoder: str) -> ir.Value:
        import onnx_ir as ir

        rows, cols, nb = (int(encoded.params[key]) for key in ("rows", "cols", "count"))
        r, c = (int(v) for v in encoded.params["block"])
        brows, bcols = rows // r, cols // c
        grid = builder.fill(builder.fill_value, 0, shape=[brows * bcols, r * c])
        if nb == 0:
            return grid
        block_row = build_rows_from_pointers(builder, stored["block_row_ptr"], brows, nb)
        where = builder.op(
            "Add",
            builder.op("Mul", block_row, builder.index_const(bcols)),
            builder.to_index(stored["block_col_indices"]),
        )
        where = builder.op(
            "Reshape", builder.op("Cast", where, to=ir.DataType.INT64), builder.shape_const([nb, 1])
        )
        updates = builder.op("Reshape", stored["values"], builder.shape_const([nb, r * c]))
        grid = builder.op("ScatterND", grid, where, updates)
        if r == 1 or bcols == 1:
            return grid  # row-major order already matches the matrix
        grid = builder.op("Reshape", grid, builder.shape_const([brows, bcols, r, c]))
        return builder.op("Transpose", grid, perm=[0, 2, 1, 3])
