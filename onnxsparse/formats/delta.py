"""``delta``: gap-coded positions + values, close to the information bound at high sparsity.

Entries are written in position order; each stores the *step* to the next
entry in a fixed width of 2, 4, 8 or 16 bits (the smallest total is chosen per
tensor).  Sub-byte codes mean ``step - 1`` (steps ``1..2**width``); byte-wide
codes are the step itself (``1..2**width - 1``), which saves the decode an
``Add``.  A step too long for the width is split by *filler* entries that store
the fill value: they land on genuine zeros, so decoding stays exact with no
escape logic.  The first entry sits at position 0 (a filler *anchor* is added
when position 0 is a zero), so an exclusive ``CumSum`` of the steps gives every
position directly.

Two decode graphs put the values in place:

* ``unpool`` (float32/float16 with a zero fill): ``MaxUnpool`` writes the ``k``
  values at their positions into a zero tensor; its ``kernel_shape`` makes the
  output length static, so onnxruntime folds it.  The only full-size nodes are
  ``MaxUnpool`` and the final ``Reshape``, which is why it folds fast.
* ``scatter`` (any dtype and fill): ``ScatterElements`` into an ``Expand`` of
  the fill value — one more full-size node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Decline
from .base import Codec, CodecOptions, Encoded, TensorData, scatter_dense
from ._bits import code_table, pack_codes, packed_size, unpack_codes
from ._registry_instance import FORMATS

if TYPE_CHECKING:
    import onnx_ir as ir

    from ._graph import DecodeBuilder

__all__ = ["DeltaCodec"]

_WIDTHS = (2, 4, 8, 16)


def _max_step(width: int) -> int:
    return 1 << width if width < 8 else (1 << width) - 1


def _entry_positions(tensor: TensorData) -> np.ndarray:
    """Positions of the non-fill values, with the anchor at 0 prepended when needed."""
    positions = tensor.positions
    if positions.size and positions[0] != 0:
        return np.concatenate([np.zeros(1, dtype=positions.dtype), positions])
    return positions


def _sizes(gaps: np.ndarray, entries: int, tensor: TensorData, options: CodecOptions) -> dict[int, int]:
    """Payload bytes for each allowed width, from the gaps between ``entries`` consecutive positions."""
    out = {}
    for width in options.delta_widths:
        count = int(_steps_needed(gaps, width).sum()) + min(entries, 1)
        out[width] = packed_size(count, width) + count * tensor.dtype.itemsize
    return out


def _steps_needed(gaps: np.ndarray, width: int) -> np.ndarray:
    """Entries each gap between consecutive positions needs at this width (1 + fillers)."""
    span = _max_step(width)
    needed = gaps + (span - 1)
    needed //= span
    return needed


@FORMATS.register("delta")
class DeltaCodec(Codec):
    name = "delta"
    summary = "gap-coded positions (2/4/8/16-bit) + values; CumSum + MaxUnpool (or ScatterElements) decode"
    decoders = ("unpool", "scatter")
    unpool_roles = ("gaps", "values")
    cost_rank = 1

    def check(self, tensor: TensorData, options: CodecOptions) -> None:
        bad = [w for w in options.delta_widths if w not in _WIDTHS]
        if bad or not options.delta_widths:
            raise Decline(f"delta widths must be among {_WIDTHS}, got {options.delta_widths}")

    def sizes(self, tensor: TensorData, options: CodecOptions) -> dict[int, int]:
        """Payload bytes for each allowed width."""
        entries = _entry_positions(tensor)
        return _sizes(np.diff(entries), entries.size, tensor, options)

    def encode(self, tensor: TensorData, options: CodecOptions) -> Encoded:
        # In-place steps and early ``del``: a large tensor's int64 temporaries bound the peak (issue 16).
        entries = _entry_positions(tensor)
        size = entries.size
        index = np.dtype(np.int32 if tensor.n < np.iinfo(np.int32).max else np.int64)  # positions and counts fit
        gaps = np.subtract(entries[1:], entries[:-1], out=np.empty(max(size - 1, 0), dtype=index), casting="unsafe")
        del entries
        sizes = _sizes(gaps, size, tensor, options)
        width = min(sizes, key=lambda w: (sizes[w], w))
        span = _max_step(width)
        after = _steps_needed(gaps, width)  # entries each gap needs, then (cumulated) the index of each real entry
        count = int(after.sum()) + min(size, 1)
        np.cumsum(after, out=after)
        gaps -= 1  # the step from a real entry's last filler to the next real entry: ((gap - 1) % span) + 1
        gaps %= span
        gaps += 1
        steps = np.full(count, span, dtype=index)
        steps[-1:] = 1  # the last entry's step is never read
        after -= 1
        steps[after] = gaps
        after += 1
        del gaps
        values = np.full(count, tensor.fill, dtype=tensor.dtype)
        if size > tensor.k:  # an anchor at 0: every real value sits after it
            values[after] = tensor.values
        elif size:
            values[0] = tensor.values[0]
            values[after] = tensor.values[1:]
        del after
        if width < 8:
            steps -= 1  # sub-byte codes store step - 1
        return Encoded(
            self.name,
            {"gaps": pack_codes(steps, width), "values": values},
            {"width": width, "count": count, "anchored": True},
        )

    def decode(self, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any],
               shape: tuple[int, ...], fill: np.ndarray) -> np.ndarray:
        count, width = int(params["count"]), int(params["width"])
        codes = unpack_codes(np.ravel(arrays["gaps"]), width, count)
        values = np.ravel(arrays["values"])
        if not params.get("anchored"):  # files written before the anchored layout
            return scatter_dense(values, np.cumsum(codes) + np.arange(count), shape, fill)
        steps = codes + 1 if width < 8 else codes
        positions = np.concatenate([np.zeros(min(count, 1), dtype=np.int64), np.cumsum(steps[:-1])])
        return scatter_dense(values, positions, shape, fill)

    def build(self, builder: DecodeBuilder, encoded: Encoded, stored: Mapping[str, ir.Value],
              decoder: str) -> ir.Value:
        count = int(encoded.params["count"])
        width = int(encoded.params["width"])
        if count == 0:
            return builder.fill(builder.fill_value, builder.n)
        unpool = decoder == "unpool"
        index = np.dtype(np.int64) if unpool else builder.index_dtype
        axis = 2 if unpool else 0
        if width >= 8:
            steps = builder.op("Cast", stored["gaps"], to=builder.ir_dtype(index))
        else:
            table = builder.const(code_table(width) + 1, np.uint8)  # code -> step
            unpacked = builder.op("Gather", table, builder.to_index(stored["gaps"]), axis=0)
            flat = builder.op("Reshape", unpacked, builder.shape_const([1, 1, -1] if unpool else [-1]))
            if packed_size(count, width) * (8 // width) != count:
                flat = builder.op("Slice", flat, builder.shape_const([0]), builder.shape_const([count]),
                                  builder.shape_const([axis]))
            steps = builder.op("Cast", flat, to=builder.ir_dtype(index))
        positions = builder.op("CumSum", steps, builder.const(axis, index), exclusive=1)
        if unpool:
            return builder.unpool(stored["values"], positions, count)
        return builder.op("ScatterElements", builder.fill(builder.fill_value, builder.n), positions,
                          stored["values"], axis=0)
