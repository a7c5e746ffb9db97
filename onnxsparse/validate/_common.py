"""Pieces ``validate`` and ``bench`` share: batches, feeds, model facts, environment, progress."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from .._progress import progress_bar as tqdm_bar
from .._version import __version__
from ..calibration.data import DataSource, InputSpec
from ..errors import UsageError
from .compat import PreparedModel
from .result import ModelInfo

__all__ = [
    "environment",
    "is_random",
    "fixed_batch",
    "resolve_batch",
    "latency_feeds",
    "model_info",
    "progress_bar",
    "check_counts",
]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where the numbers were measured (goes into every report)."""
    return {
        "onnxsparse": __version__,
        "onnxruntime": ort.__version__,
        "available_providers": list(ort.get_available_providers()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def is_random(data: Any) -> bool:
    """``None`` and ``"random"`` both mean: generate inputs from the signature."""
    return data is None or (isinstance(data, str) and data == "random")


def fixed_batch(specs: Sequence[InputSpec]) -> int | None:
    """The batch size the model insists on (a fixed axis 0 on its inputs), if any."""
    sizes = {spec.shape[0] for spec in specs if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0}
    dynamic = [spec for spec in specs if spec.shape and not (isinstance(spec.shape[0], int) and spec.shape[0] > 0)]
    if len(sizes) == 1 and not dynamic:
        return sizes.pop()
    return None


def resolve_batch(specs: Sequence[InputSpec], batch: int | None, label: str = "model") -> int:
    """``batch`` or the model's fixed batch; a batch the model cannot take is a usage error."""
    fixed = fixed_batch(specs)
    if batch is None:
        return fixed or 1
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    if fixed is not None and batch != fixed:
        raise UsageError(f"the {label} has a fixed batch size of {fixed} (input axis 0); --batch {batch} cannot run")
    return batch


def check_counts(warmup: int, runs: int, session_repeats: int = 1) -> None:
    if session_repeats < 1:
        raise UsageError(f"--session-repeats must be >= 1, got {session_repeats}")
    if runs < 1:
        raise UsageError(f"--runs must be >= 1, got {runs}")
    if warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {warmup}")


def latency_feeds(source: DataSource, batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` samples (repeated when the data has fewer), contiguous."""
    count = len(source)
    index = np.arange(batch) % count
    return {name: np.ascontiguousarray(arr[index]) for name, arr in source.arrays.items()}


def model_info(model: PreparedModel, shapes: Mapping[str, tuple[int, ...]] | None) -> ModelInfo:
    """Signature, bytes on disk, params/MACs (per ``shapes``) of a prepared model."""
    params = macs = zero_fraction = None
    note = None
    try:
        from ..analysis import model_stats
        from ..io import load_model

        stats = model_stats(load_model(model.path), dict(shapes) if shapes else None)
        params, macs, zero_fraction = stats.params, stats.macs, stats.sparsity
        if macs is None:
            note = "MACs unknown for some ops (see onnxsparse inspect)"
    except Exception as exc:  # noqa: BLE001 - stats are informative; the validation still stands
        note = f"params/MACs not computed: {type(exc).__name__}: {exc}"
    return ModelInfo(
        role=model.label,
        path=model.display,
        file_bytes=model.file_bytes,
        size_note=model.size_note,
        params=params,
        macs=macs,
        zero_fraction=zero_fraction,
        inputs=[{"name": s.name, "dtype": str(s.dtype), "shape": list(s.shape)} for s in model.inputs],
        outputs=[{"name": n, "dtype": d, "rank": r} for n, d, r in model.outputs],
        stats_note=note,
    )


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar on stderr when enabled and stderr is a terminal, else a no-op."""
    bar = tqdm_bar(total, desc, unit="run", enabled=enabled and sys.stderr.isatty(), dynamic_ncols=True)
    return _NoBar() if bar is None else bar
