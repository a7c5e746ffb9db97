"""The storage-format registry instance (kept apart so codec modules can import it without cycles)."""

from __future__ import annotations

from .._registry import Registry
from .base import Codec

__all__ = ["FORMATS"]

#: Storage codecs by name; ``auto`` is not a codec but a choice among those with ``in_auto``.
FORMATS: Registry[type[Codec]] = Registry("storage format")
