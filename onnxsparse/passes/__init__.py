"""Model transformations, each an ``onnx_ir`` pass."""

from .normalize import NormalizePass, normalize

__all__ = ["NormalizePass", "normalize"]
