"""``bitmask``: one bit per element + the non-zero values; the smallest format at moderate sparsity.

Costs ``n + k*b`` bits.  Two decode graphs:

* ``scatter`` (opset 16): per-byte popcounts (a 256-entry table) and their
  running sum tell, for each of the ``k`` values, which mask byte holds it; a
  ``[256*8]`` table gives the bit inside the byte; ``ScatterElements`` places
  the values.  Only the output has ``n`` elements.
* ``gather`` (opset 11): expand every byte to 8 bits with a ``[256, 8]`` table,
  ``CumSum`` the bits into value indices and ``Gather``.  Every step has ``n``
  elements.

Measured (benchmarks/bench_sparsity.py, 12.9M float32 weights): ``gather``
folds faster at 50% sparsity (0.17 s vs 0.42 s), they tie at 80%, ``scatter``
is faster at 90% and above; so ``gather`` is used for tensors with at least 20%
non-zeros (or when the opset is below 16), ``scatter`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from .base import Codec, CodecOptions, Encoded, TensorData, index_dtype, scatter_dense
from ._bits import bit_position_table, bit_table, popcount_table
from ._registry_instance import FORMATS

if TYPE_CHECKING:
    from ._graph import DecodeBuilder

__all__ = ["BitmaskCodec", "GATHER_MIN_DENSITY"]

#: tensors with at least this fraction of non-zeros use the ``gather`` decode graph
GATHER_MIN_DENSITY = 0.2


@FORMATS.register("bitmask")
class BitmaskCodec(Codec):
    name = "bitmask"
    summary = "1-bit mask + values; popcount/ScatterElements decode (opset 16) or LUT/CumSum/Gather (opset 11)"
    decoders = ("scatter", "gather")
    cost_rank = 3

    def decoder_order(self, tensor: TensorData) -> tuple[str, ...]:
        dense_enough = tensor.n and tensor.k >= GATHER_MIN_DENSITY * tensor.n
        return ("gather", "scatter") if dense_enough else ("scatter", "gather")

    def encode(self, tensor: TensorData, options: CodecOptions) -> Encoded:
        mask = np.packbits(tensor.mask, bitorder="little")
        return Encoded(self.name, {"mask": mask, "values": tensor.values}, {"count": tensor.k})

    def decode(self, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any],
               shape: tuple[int, ...], fill: np.ndarray) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        bits = np.unpackbits(np.asarray(arrays["mask"], dtype=np.uint8), count=n, bitorder="little").view(bool)
        return scatter_dense(arrays["values"], bits, shape, fill)

    def largest_intermediate(self, encoded: Encoded, decoder: str, tensor: TensorData) -> int:
        if decoder == "gather":  # value ranks: one index per element
            return tensor.n * max(tensor.dtype.itemsize, index_dtype(tensor.n + 1).itemsize)
        return super().largest_intermediate(encoded, decoder, tensor)

    def min_opset(self, decoder: str, dtype: np.dtype) -> int:
        if decoder == "scatter":
            return 16
        return 13 if dtype.name == "bfloat16" else 11

    def build(self, builder: DecodeBuilder, encoded: Encoded, stored: Mapping[str, ir.Value],
              decoder: str) -> ir.Value:
        if decoder == "gather":
            return self._build_gather(builder, encoded, stored)
        n, k = builder.n, int(encoded.params["count"])
        nbytes = int(encoded.arrays["mask"].size)
        dense = builder.fill(builder.fill_value, n)
        if k == 0:
            return dense
        mask = builder.to_index(stored["mask"])
        popcount = builder.to_index(builder.op("Gather", builder.const(popcount_table(), np.uint8), mask, axis=0))
        ends = builder.op("CumSum", popcount, builder.index_const(0))
        byte = builder.expand_runs(ends, nbytes, k)  # mask byte of each value
        starts = builder.op("Sub", ends, popcount)
        within = builder.op("Sub", builder.range(k), builder.op("Gather", starts, byte, axis=0))
        eight = builder.index_const(8)
        byte_value = builder.op("Gather", mask, byte, axis=0)
        bit = builder.to_index(builder.op(
            "Gather",
            builder.const(bit_position_table(), np.uint8),
            builder.op("Add", builder.op("Mul", byte_value, eight), within),
            axis=0,
        ))
        positions = builder.op("Add", builder.op("Mul", byte, eight), bit)
        return builder.op("ScatterElements", dense, positions, stored["values"], axis=0)

    def _build_gather(self, builder: DecodeBuilder, encoded: Encoded, stored: Mapping[str, ir.Value]) -> ir.Value:
        n, k = builder.n, int(encoded.params["count"])
        if k == 0:
            return builder.fill(builder.fill_value, n)
        bits = builder.op("Gather", builder.const(bit_table(), np.uint8), builder.to_index(stored["mask"]), axis=0)
        bits = builder.op("Reshape", bits, builder.shape_const([-1]))
        if encoded.arrays["mask"].size * 8 != n:
            bits = builder.op("Slice", bits, builder.shape_const([0]), builder.shape_const([n]))
        bits = builder.to_index(bits)
        ranks = builder.op("Mul", builder.op("CumSum", bits, builder.index_const(0)), bits)
        fill = builder.fill_value.reshape(1)
        if fill.dtype.name == "bfloat16":
            head = builder.op("Cast", builder.const(fill.astype(np.float32)), to=ir.DataType.BFLOAT16)
        else:
            head = builder.const(fill)
        table = builder.op("Concat", head, stored["values"], axis=0)
        return builder.op("Gather", table, ranks, axis=0)
