"""``csr``: values + column indices (narrowest integer type) + row pointers.

Rows are the tensor's 2-D view ``[shape[0], prod(shape[1:])]``.  Decode (opset
16): the row of each value comes from the row pointers with
``ScatterElements(reduction=add) + CumSum`` (no data-dependent shapes, so
onnxruntime folds it) and the flat position is ``row * cols + col``.  Like
``delta``, float32/float16 tensors with a zero fill place the values with
``MaxUnpool`` (``unpool``), others with ``ScatterElements`` into an ``Expand``
of the fill value (``scatter``, one more full-size node).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Decline
from .base import Codec, CodecOptions, Encoded, TensorData, narrowest_uint, scatter_dense
from ._registry_instance import FORMATS
from ._rows import build_rows_from_pointers, row_pointers, rows_from_pointers

if TYPE_CHECKING:
    import onnx_ir as ir

    from ._graph import DecodeBuilder

__all__ = ["CsrCodec"]


@FORMATS.register("csr")
class CsrCodec(Codec):
    name = "csr"
    summary = "values + column indices (uint8/uint16/int32) + row pointers"
    decoders = ("unpool", "scatter")
    unpool_roles = ("values", "col_indices")
    cost_rank = 2

    def check(self, tensor: TensorData, options: CodecOptions) -> None:
        rows, cols = tensor.matrix_shape()
        if rows * cols == 0:
            raise Decline("empty tensor")

    def encode(self, tensor: TensorData, options: CodecOptions) -> Encoded:
        rows, cols = tensor.matrix_shape()
        positions = tensor.positions
        pointers = row_pointers(positions // cols, rows)
        return Encoded(
            self.name,
            {
                "values": tensor.values,
                "col_indices": (positions % cols).astype(narrowest_uint(cols - 1)),
                "row_ptr": pointers.astype(narrowest_uint(tensor.k)),
            },
            {"rows": rows, "cols": cols, "count": tensor.k},
        )

    def decode(self, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any],
               shape: tuple[int, ...], fill: np.ndarray) -> np.ndarray:
        cols = int(params["cols"])
        rows_of = rows_from_pointers(arrays["row_ptr"])
        positions = rows_of * cols + np.asarray(arrays["col_indices"], dtype=np.int64).reshape(-1)
        return scatter_dense(np.ravel(arrays["values"]), positions, shape, fill)

    def min_opset(self, decoder: str, dtype: np.dtype) -> int:
        return 16

    def build(self, builder: DecodeBuilder, encoded: Encoded, stored: Mapping[str, ir.Value],
              decoder: str) -> ir.Value:
        rows, cols, k = (int(encoded.params[key]) for key in ("rows", "cols", "count"))
        if k == 0:
            return builder.fill(builder.fill_value, builder.n)
        row = build_rows_from_pointers(builder, stored["row_ptr"], rows, k)
        positions = builder.op(  # [1, 1, k] for unpool: the column indices are stored that way
            "Add", builder.op("Mul", row, builder.index_const(cols)), builder.to_index(stored["col_indices"])
        )
        if decoder == "unpool":
            return builder.unpool(stored["values"], builder.op("Cast", positions, to=builder.ir_dtype(np.int64)), k)
        return builder.op("ScatterElements", builder.fill(builder.fill_value, builder.n), positions,
                          stored["values"], axis=0)
