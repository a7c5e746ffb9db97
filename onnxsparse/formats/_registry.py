"""Kept so that ``from onnxsparse.formats._registry import Registry`` still works: see :mod:`onnxsparse._registry`."""

from __future__ import annotations

from .._registry import Registry

__all__ = ["Registry"]
