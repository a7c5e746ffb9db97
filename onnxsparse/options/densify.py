"""The options of ``densify``: none yet, declared once so the command, the API and the recipe step agree.

Decoding is bit-exact and has no knobs; the class carries the recipe step's model-state rules (it
clears the ``sparse`` state), and an option added here appears as a flag, a recipe key and an API
keyword at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Options

__all__ = ["DensifyOptions"]


@dataclass(frozen=True, kw_only=True)
class DensifyOptions(Options):
    """Turn onnxsparse sparse storage back into dense initializers (``onnxsparse densify``)."""

    kind: ClassVar[str] = "densify"
    help: ClassVar[str] = "decode sparse-stored weights back to dense (e.g. before pruning a sparse input)"
    clears: ClassVar[frozenset[str]] = frozenset({"sparse"})
