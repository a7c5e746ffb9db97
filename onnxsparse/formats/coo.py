"""``coo``: ONNX's own ``sparse_initializer`` (values + int64 flat indices), for tools that read it.

In memory (``onnx_ir`` has no sparse initializers) the tensor is a small
ScatterElements decode like the other formats, so the model stays valid and
runnable; :func:`onnxsparse.formats.save_model` turns it into a real
``sparse_initializer`` when writing the file (``onnx.checker`` demands int64
indices, sorted).  onnxruntime densifies it at session creation.  Only a zero
fill value can be stored (the implicit value of a sparse tensor is 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Decline
from .base import Codec, CodecOptions, Encoded, TensorData, bits_view, scatter_dense
from ._registry_instance import FORMATS

if TYPE_CHECKING:
    import onnx_ir as ir

    from ._graph import DecodeBuilder

__all__ = ["CooCodec"]


@FORMATS.register("coo")
class CooCodec(Codec):
    name = "coo"
    summary = "ONNX sparse_initializer (int64 indices); onnxruntime densifies it at load"
    decoders = ("sparse_initializer",)
    cost_rank = 1
    in_auto = False

    def check(self, tensor: TensorData, options: CodecOptions) -> None:
        if int(bits_view(tensor.fill.reshape(1))[0]) != 0:
            raise Decline(f"coo implies zeros but the fill value is {tensor.fill.item()!r} (quantized zero point)")

    def encode(self, tensor: TensorData, options: CodecOptions) -> Encoded:
        return Encoded(
            self.name,
            {"values": tensor.values, "indices": tensor.positions.astype(np.int64)},
            {"count": tensor.k},
        )

    def decode(self, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any],
               shape: tuple[int, ...], fill: np.ndarray) -> np.ndarray:
        return scatter_dense(arrays["values"], np.asarray(arrays["indices"], dtype=np.int64), shape, fill)

    def build(self, builder: DecodeBuilder, encoded: Encoded, stored: Mapping[str, ir.Value],
              decoder: str) -> ir.Value:
        dense = builder.fill(builder.fill_value, builder.n)
        if int(encoded.params["count"]) == 0:
            return dense
        return builder.op("ScatterElements", dense, stored["indices"], stored["values"], axis=0)
