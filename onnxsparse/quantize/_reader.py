"""Feed an onnxsparse :class:`DataSource` to onnxruntime's calibrators."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ..calibration.data import DataSource, InputSpec
from ._ort import ort_quantization

__all__ = ["make_reader", "calibration_batch_size"]

#: Batch used for calibration when the model's batch axis is dynamic.
DYNAMIC_BATCH = 16


def calibration_batch_size(specs: list[InputSpec]) -> int:
    """The model's fixed batch size if it has one, else :data:`DYNAMIC_BATCH`."""
    fixed = {spec.shape[0] for spec in specs if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0}
    if len(fixed) == 1:
        return int(next(iter(fixed)))
    return DYNAMIC_BATCH


def make_reader(
    source: DataSource, batch_size: int, limit: int | None, on_batch: Callable[[], None] | None = None
):
    """A ``CalibrationDataReader`` over ``source`` (rewindable, with a length).

    ``on_batch`` is called for every batch handed out (progress bars).
    """
    base = ort_quantization().CalibrationDataReader

    # ignore: the base is onnxruntime's class looked up at run time (lazy import), not a static type
    class DataSourceReader(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.batches: list[dict[str, np.ndarray]] = [
                {k: np.ascontiguousarray(v) for k, v in batch.items()}
                for batch in source.batches(batch_size, limit)
                if next(iter(batch.values())).shape[0] == batch_size or batch_size == DYNAMIC_BATCH
            ]
            self._iter: Iterator[dict[str, np.ndarray]] = iter(self.batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._iter, None)
            if batch is not None and on_batch is not None:
                on_batch()
            return batch

        def rewind(self) -> None:
            self._iter = iter(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._iter = iter(self.batches[start_index:end_index])

        def __len__(self) -> int:
            return len(self.batches)

        @property
        def samples(self) -> int:
            return sum(next(iter(b.values())).shape[0] for b in self.batches)

    return DataSourceReader()
