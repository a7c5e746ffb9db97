"""``dense``: leave the tensor as an ordinary initializer (the reference every format is measured against)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Codec, CodecOptions, Encoded, TensorData
from ._registry_instance import FORMATS

__all__ = ["DenseCodec"]


@FORMATS.register("dense")
class DenseCodec(Codec):
    name = "dense"
    summary = "ordinary initializer (no decode graph)"
    decoders = ("none",)
    cost_rank = 0

    def encode(self, tensor: TensorData, options: CodecOptions) -> Encoded:
        return Encoded(self.name, {"data": tensor.array})

    def decode(self, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any],
               shape: tuple[int, ...], fill: np.ndarray) -> np.ndarray:
        return np.asarray(arrays["data"]).reshape(shape)

    def min_opset(self, decoder: str, dtype: np.dtype) -> int:
        return 1
