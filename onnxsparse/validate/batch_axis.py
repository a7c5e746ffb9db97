"""Which axis of an output indexes samples.

Most outputs are batch-major (``[batch, ...]``), but not all: a CTC recogniser
exported from PyTorch returns ``[T, batch, classes]``, a recurrent model
``[seq, batch, hidden]``.  Task metrics and per-sample fidelity need the samples
on axis 0, so the batch axis is found by structure: the output axis whose
symbolic dimension is the one the inputs carry on their first axis (exporters
name it ``batch``, ``s0``, ``N``, ``unk__3``: the name does not matter, only that it is
shared).  Without symbolic dims, the one axis whose run-time size equals the
batch fed is used; when that is ambiguous, axis 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["batch_symbols", "batch_axis", "samples_first"]


def batch_symbols(input_shapes: Sequence[Sequence[object] | None]) -> set[str]:
    """The symbolic names the inputs carry on their first axis."""
    return {shape[0] for shape in input_shapes if shape and isinstance(shape[0], str) and shape[0]}


def batch_axis(declared: Sequence[object] | None, runtime: Sequence[int], batch: int, symbols: set[str]) -> int:
    """The axis of an output that indexes samples.

    ``declared``: the output's shape as the session reports it (ints, names or None);
    ``runtime``: the shape of one batch's value; ``batch``: the samples fed.
    """
    if declared is not None and len(declared) == len(runtime):
        named = [i for i, dim in enumerate(declared) if isinstance(dim, str) and dim in symbols]
        if named:
            return named[0]
    if runtime and runtime[0] == batch:
        return 0
    sized = [i for i, size in enumerate(runtime) if size == batch]
    return sized[0] if len(sized) == 1 else 0


def samples_first(value: np.ndarray, axis: int) -> np.ndarray:
    """``value`` with its batch axis moved to axis 0 (a view)."""
    return value if axis == 0 or value.ndim <= axis else np.moveaxis(value, axis, 0)
