"""The memory budget: refuse a tensor whose size, read from dims or a header, does not fit.

Hostile or corrupt files claim sizes they do not have (a COO tensor of 10^10
elements, an ``.npz`` header of 2^46 floats, a ``ConstantOfShape`` of
100000 x 100000).  Every place that allocates from a claimed size calls
:func:`check_alloc` first, so the user gets one line naming the tensor instead of
a ``MemoryError`` or the machine swapping.  The budget defaults to half the
memory available when the process starts; ``--max-memory`` (e.g. ``4G``) or
:func:`set_budget` change it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable, Iterator

import numpy as np

from .errors import DataError, UsageError

__all__ = [
    "TooLarge",
    "budget",
    "check_alloc",
    "check_constant_of_shape",
    "default_budget",
    "max_memory",
    "nbytes",
    "parse_size",
    "set_budget",
]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)

_budget: int | None = None


class TooLarge(DataError):
    """A tensor's claimed size exceeds the memory budget."""


def parse_size(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (binary units)."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise UsageError(f"bad memory size {text!r}: expected a number with an optional K/M/G/T suffix, e.g. 4G")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not math.isfinite(value) or value < 1:
        raise UsageError(f"bad memory size {text!r}: must be at least 1 byte")
    return int(value)


def default_budget() -> int:
    """Half of the memory available now (``MemAvailable`` in /proc/meminfo, else total physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (OSError, ValueError, AttributeError):  # pragma: no cover - non-POSIX without /proc
        return 8 << 30


def set_budget(size: int | str | None) -> None:
    """Set the budget in bytes (or a ``parse_size`` string); ``None`` goes back to the machine default."""
    global _budget
    _budget = parse_size(size) if isinstance(size, str) else size


@contextlib.contextmanager
def max_memory(size: int | str | None) -> Iterator[None]:
    """Within the block the budget is ``size`` (``None``: the machine default); the previous one is restored."""
    global _budget
    previous = _budget
    set_budget(size)
    try:
        yield
    finally:
        _budget = previous


def budget() -> int:
    """The current budget in bytes."""
    global _budget
    if _budget is None:
        _budget = default_budget()
    return _budget


def _human(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def nbytes(shape: Iterable[int], dtype: np.dtype | type | str) -> int:
    """Exact bytes of a dense array (Python ints: no overflow for 2^40 x 2^20)."""
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * np.dtype(dtype).itemsize


def check_alloc(name: str, shape: Iterable[int], dtype: np.dtype | type | str) -> int:
    """Raise :class:`TooLarge` if a dense ``shape``/``dtype`` array would exceed the budget; returns its bytes."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise DataError(f"{name}: negative dimension in shape {list(shape)}")
    size = nbytes(shape, dtype)
    limit = budget()
    if size > limit:
        raise TooLarge(
            f"{name} would need {_human(size)} (shape {list(shape)}, {np.dtype(dtype).name}), "
            f"over the memory budget of {_human(limit)} (raise it with --max-memory)"
        )
    return size


def check_constant_of_shape(node) -> bool:
    """Before folding an ``onnx_ir`` ``ConstantOfShape`` node whose shape is known, check its output fits.

    Returns ``True`` (so it can sit in a fold predicate); raises :class:`TooLarge` otherwise.
    """
    shape_value = node.inputs[0] if node.inputs else None
    if shape_value is None or shape_value.const_value is None:
        return True
    shape = np.asarray(shape_value.const_value.numpy()).reshape(-1)
    attr = node.attributes.get("value")
    dtype = attr.as_tensor().dtype.numpy() if attr is not None else np.dtype(np.float32)
    check_alloc(f"ConstantOfShape {node.name or node.outputs[0].name!r} output", shape, dtype)
    return True
