"""What every storage codec shares: the tensor it encodes, what it stores, its interface.

A codec turns one dense tensor into a few ordinary arrays (``Encoded.arrays``,
stored as initializers) plus small JSON parameters, and back:

* ``encode`` / ``decode`` are pure numpy and bit-exact (values are compared as
  raw bit patterns, so ``-0.0`` and NaN payloads survive);
* ``build`` emits the decode subgraph of standard ONNX ops that recomputes the
  dense tensor inside the model (onnxruntime folds it once at session creation).

"Zero" means the tensor's *fill* value: ``0`` for float weights, the (uniform)
zero point for quantized weights, so pruned quantized weights stay exact.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import Decline

if TYPE_CHECKING:
    import onnx_ir as ir

    from ._graph import DecodeBuilder

__all__ = [
    "TensorData",
    "Encoded",
    "Codec",
    "CodecOptions",
    "SUPPORTED_DTYPES",
    "bits_view",
    "nonfill_mask",
    "narrowest_uint",
    "index_dtype",
    "contiguous",
    "scatter_dense",
    "UNPOOL_DTYPES",
    "check_unpool",
    "unpool_layout",
]

#: numpy dtype names a codec may encode (ONNX: FLOAT, FLOAT16, BFLOAT16, DOUBLE, INT8, ...).
SUPPORTED_DTYPES: frozenset[str] = frozenset(
    {"float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64"}
)

_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous without promoting 0-d arrays to 1-d (unlike ``np.ascontiguousarray``)."""
    array = np.asarray(array)
    return array if array.flags.c_contiguous else array.copy(order="C")


def bits_view(array: np.ndarray) -> np.ndarray:
    """The raw bit patterns of ``array`` as unsigned integers (same shape)."""
    array = contiguous(array)
    return array.view(_UINT_OF_SIZE[array.dtype.itemsize])


def nonfill_mask(array: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Flat bool mask of the elements whose bits differ from ``fill``'s bits."""
    fill_bits = bits_view(np.asarray(fill, dtype=array.dtype).reshape(1))[0]
    return bits_view(array).reshape(-1) != fill_bits


def narrowest_uint(max_value: int) -> np.dtype:
    """Smallest integer dtype holding ``0..max_value`` (uint8, uint16, int32, int64)."""
    if max_value < 1 << 8:
        return np.dtype(np.uint8)
    if max_value < 1 << 16:
        return np.dtype(np.uint16)
    if max_value < 1 << 31:
        return np.dtype(np.int32)
    return np.dtype(np.int64)


def index_dtype(count: int) -> np.dtype:
    """int32 indices when every flat position fits, else int64."""
    return np.dtype(np.int32) if count < (1 << 31) - 1 else np.dtype(np.int64)


def scatter_dense(values: np.ndarray, index: np.ndarray, shape: tuple[int, ...], fill: np.ndarray) -> np.ndarray:
    """Numpy decode of the scatter formats: ``fill`` everywhere, ``values`` at the flat ``index``
    (positions or a bool mask), reshaped to ``shape``."""
    values = np.asarray(values)
    out = np.full(int(np.prod(shape, dtype=np.int64)), fill, dtype=values.dtype)
    out[index] = values
    return out.reshape(shape)


#: value dtypes onnxruntime's MaxUnpool kernel accepts (the ``unpool`` decode graphs)
UNPOOL_DTYPES: frozenset[str] = frozenset({"float32", "float16"})


def check_unpool(fmt: str, tensor: TensorData) -> None:
    """Declines with why an ``unpool`` decode (MaxUnpool into zeros) cannot rebuild ``tensor``."""
    if tensor.dtype.name not in UNPOOL_DTYPES:
        raise Decline(f"{fmt}'s unpool decode (MaxUnpool) takes float32/float16, not {tensor.dtype.name}")
    if int(bits_view(tensor.fill.reshape(1))[0]) != 0:
        raise Decline(f"{fmt}'s unpool decode (MaxUnpool) fills with zeros; this tensor's fill value is not 0")


def unpool_layout(encoded: Encoded, roles: tuple[str, ...]) -> Encoded:
    """``encoded`` with the per-value arrays shaped ``[1, 1, k]``, as MaxUnpool reads them."""
    arrays = {role: array.reshape(1, 1, -1) if role in roles else array for role, array in encoded.arrays.items()}
    return Encoded(encoded.format, arrays, dict(encoded.params))


@dataclass(frozen=True)
class CodecOptions:
    """Knobs a user may set for the codecs (all optional)."""

    #: BSR block shape ``(rows, cols)``; ``None`` = try several and keep the smallest.
    block: tuple[int, int] | None = None
    #: gap-code widths (bits) the ``delta`` codec may choose from.
    delta_widths: tuple[int, ...] = (2, 4, 8, 16)


class TensorData:
    """One tensor to encode: its values, its fill value, and where they differ."""

    def __init__(self, name: str, array: np.ndarray, fill: np.ndarray | float | int = 0) -> None:
        self.name = name
        self.array = contiguous(array)
        self.fill = np.asarray(fill, dtype=self.array.dtype).reshape(())
        self.mask = nonfill_mask(self.array, self.fill)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def n(self) -> int:
        return int(self.array.size)

    @functools.cached_property
    def k(self) -> int:
        return int(np.count_nonzero(self.mask))

    @functools.cached_property
    def positions(self) -> np.ndarray:
        """Flat positions of the non-fill elements, ascending (int64)."""
        return np.flatnonzero(self.mask)

    @functools.cached_property
    def values(self) -> np.ndarray:
        return self.array.reshape(-1)[self.positions]

    @property
    def sparsity(self) -> float:
        return 1.0 - self.k / self.n if self.n else 0.0

    def matrix_shape(self) -> tuple[int, int]:
        """The 2-D view ``[shape[0], prod(shape[1:])]`` row formats work on (1-D: one row)."""
        if len(self.shape) >= 2:
            return self.shape[0], self.n // max(self.shape[0], 1) if self.shape[0] else 0
        return 1, self.n


@dataclass
class Encoded:
    """What a codec stores for one tensor: payload arrays + small JSON parameters."""

    format: str
    arrays: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def payload_bytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


class Codec:
    """Base class of storage formats; subclasses are registered in ``FORMATS``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: decode-graph variants, preferred first (see ``min_opset``)
    decoders: ClassVar[tuple[str, ...]] = ("default",)
    #: relative session-creation cost of the decode graph (lower is cheaper); auto breaks near-ties with it
    cost_rank: ClassVar[int] = 0
    #: ``auto`` considers this format
    in_auto: ClassVar[bool] = True
    #: payload arrays with one entry per stored value, shaped ``[1, 1, k]`` for the ``unpool`` decoder
    unpool_roles: ClassVar[tuple[str, ...]] = ()

    def check(self, tensor: TensorData, options: CodecOptions) -> str | None:
        """Returns when the codec can store ``tensor``; raises :class:`~onnxsparse.errors.Decline` with the
        reason when it cannot (every built-in codec does).  A reason returned as a string, as codecs
        written for earlier versions do, is read the same way (``formats.storage.codec_refusal`` is the
        one place that adapts it)."""
        return None

    def decoder_order(self, tensor: TensorData) -> tuple[str, ...]:
        """Decode graphs to try for this tensor, cheapest to fold first."""
        return self.decoders

    def check_decoder(self, decoder: str, tensor: TensorData) -> str | None:
        """Returns when ``decoder`` can decode ``tensor``, else declines like :meth:`check`."""
        if decoder == "unpool":
            check_unpool(self.name, tensor)
        return None

    def encode(self, tensor: TensorData, options: CodecOptions) -> Encoded:
        raise NotImplementedError

    def layout(self, encoded: Encoded, decoder: str) -> Encoded:
        """Shape the payload arrays the way ``decoder``'s graph reads them (the bytes do not change)."""
        return unpool_layout(encoded, self.unpool_roles) if decoder == "unpool" else encoded

    def decode(self, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any],
               shape: tuple[int, ...], fill: np.ndarray) -> np.ndarray:
        """Numpy decode (the Python loader and densify use it)."""
        raise NotImplementedError

    def largest_intermediate(self, encoded: Encoded, decoder: str, tensor: TensorData) -> int:
        """Bytes of the largest tensor the decode graph computes (by default the dense output)."""
        dense = tensor.n * tensor.dtype.itemsize
        if decoder == "unpool":  # MaxUnpool reads one int64 position per stored entry
            return max(dense, int(encoded.params["count"]) * 8)
        return dense

    def min_opset(self, decoder: str, dtype: np.dtype) -> int:
        """Lowest default-domain opset the decode graph needs."""
        return 13 if dtype.name == "bfloat16" else 11

    def build(self, builder: DecodeBuilder, encoded: Encoded, stored: Mapping[str, ir.Value],
              decoder: str) -> ir.Value:
        """Emit the decode subgraph; return the value holding the flat dense tensor."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<format {self.name}>"
