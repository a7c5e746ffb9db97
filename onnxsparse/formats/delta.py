"""``delta``: gap-coded positions + values, close to the information bound at high sparsity.

The gap ``g >= 1`` between consecutive non-zero positions is stored as ``g - 1``
in a fixed width of 2, 4, 8 or 16 bits (the smallest total is chosen per
tensor).  A gap longer than ``2**width`` is split by *filler* entries that step
``2**width`` positions and store the fill value: they land on genuine zeros, so
decoding stays exact with no escape logic.  Decode: ``CumSum`` of the gaps gives
the positions, ``ScatterElements`` puts the values into a tensor of fill values.
Every intermediate has ``k`` (non-zero count) elements except the output, which
is why onnxruntime folds it quickly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._base import Codec, CodecOptions, Encoded, TensorData, scatter_dense
from ._bits import code_table, pack_codes, packed_size, unpack_codes
from ._registry_instance import FORMATS

if TYPE_CHECKING:
    import onnx_ir as ir

    from ._graph import DecodeBuilder

__all__ = ["DeltaCodec"]

_WIDTHS = (2, 4, 8, 16)


def _entries(gaps: np.ndarray, width: int) -> np.ndarray:
    """Entries each gap needs at this width (1 + fillers)."""
    span = 1 << width
    return (gaps + span - 1) // span


@FORMATS.register("delta")
class DeltaCodec(Codec):
    name = "delta"
    summary = "gap-coded positions (2/4/8/16-bit) + values; CumSum + ScatterElements decode"
    decoders = ("scatter",)
    cost_rank = 1

    def check(self, tensor: TensorData, options: CodecOptions) -> str | None:
        bad = [w for w in options.delta_widths if w not in _WIDTHS]
        if bad or not options.delta_widths:
            return f"delta widths must be among {_WIDTHS}, got {options.delta_widths}"
        return None

    def sizes(self, tensor: TensorData, options: CodecOptions) -> dict[int, int]:
        """Payload bytes for each allowed width."""
        gaps = np.diff(tensor.positions, prepend=-1)
        out = {}
        for width in options.delta_widths:
            count = int(_entries(gaps, width).sum())
            out[width] = packed_size(count, width) + count * tensor.dtype.itemsize
        return out

    def encode(self, tensor: TensorData, options: CodecOptions) -> Encoded:
        sizes = self.sizes(tensor, options)
        width = min(sizes, key=lambda w: (sizes[w], w))
        span = 1 << width
        gaps = np.diff(tensor.positions, prepend=-1)
        reps = _entries(gaps, width)
        count = int(reps.sum())
        last = np.cumsum(reps) - 1
        codes = np.full(count, span - 1, dtype=np.int64)
        codes[last] = gaps - (reps - 1) * span - 1
        values = np.full(count, tensor.fill, dtype=tensor.dtype)
        values[last] = tensor.values
        return Encoded(
            self.name,
            {"gaps": pack_codes(codes, width), "values": values},
            {"width": width, "count": count},
        )

    def decode(self, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any],
               shape: tuple[int, ...], fill: np.ndarray) -> np.ndarray:
        count = int(params["count"])
        codes = unpack_codes(arrays["gaps"], int(params["width"]), count)
        positions = np.cumsum(codes) + np.arange(count)
        return scatter_dense(arrays["values"], positions, shape, fill)

    def build(self, builder: DecodeBuilder, encoded: Encoded, stored: Mapping[str, ir.Value],
              decoder: str) -> ir.Value:
        n = builder.n
        count = int(encoded.params["count"])
        width = int(encoded.params["width"])
        dense = builder.fill(builder.fill_value, n)
        if count == 0:
            return dense
        if width >= 8:
            codes = builder.to_index(stored["gaps"])
        else:
            table = builder.const(code_table(width), np.uint8)
            unpacked = builder.op("Gather", table, builder.to_index(stored["gaps"]), axis=0)
            flat = builder.op("Reshape", unpacked, builder.shape_const([-1]))
            codes = builder.to_index(builder.op("Slice", flat, builder.shape_const([0]), builder.shape_const([count])))
        cumulative = builder.op("CumSum", codes, builder.index_const(0))
        positions = builder.op("Add", cumulative, builder.range(count))
        return builder.op("ScatterElements", dense, positions, stored["values"], axis=0)

