"""onnxsparse: make exported ONNX models smaller and faster after training.

Each entry point is also a subcommand of ``python -m onnxsparse``:

- :func:`model_stats` (``inspect``): params, MACs per node, sparsity;
- :func:`prune` (``prune``; its keywords are the command's options, :class:`PruneOptions`) and
  :func:`prune_heads`: structured pruning into a smaller dense model;
- :func:`sparsify` / :func:`densify`: sparse storage that decodes with standard ops,
  and :func:`session` to load such a model with a fast numpy decode;
- :func:`quantize`: int8 dynamic/static and int4 weight-only, keeping zeros exact;
- :func:`validate`: fidelity, accuracy and latency against the original;
- :mod:`onnxsparse.recipe`: all of it chained from a YAML recipe (``run``).
"""

import importlib
from typing import Any

from ._version import __version__
from .errors import DataError, Decline, ModelLoadError, ModelSaveError, OnnxSparseError, UsageError

# Heavy entry points load on first use, so ``import onnxsparse`` and the CLI start fast.
_LAZY: dict[str, tuple[str, str | None]] = {
    "load_model": (".io", "load_model"),
    "save_model": (".formats", "save_model"),  # io.save_model + coo tensors as sparse_initializer
    "normalize": (".passes.normalize", "normalize"),
    "model_stats": (".analysis", "model_stats"),
    "count_params": (".analysis", "count_params"),
    "count_macs": (".analysis", "count_macs"),
    "prune": (".passes.prune", "prune"),
    "PrunePass": (".passes.prune", "PrunePass"),
    "PruneOptions": (".options.prune", "PruneOptions"),
    "PruneResult": (".passes.prune", "PruneResult"),
    "prune_heads": (".passes.prune_heads", "prune_heads"),
    "sparsify": (".passes.sparsify", "sparsify"),
    "SparsifyConfig": (".passes.sparsify", "SparsifyConfig"),
    "densify": (".passes.densify", "densify"),
    "session": (".runtime", "session"),
    "quantize": (".quantize", None),  # callable package: onnxsparse.quantize(...)
    "validate": (".validate", None),  # callable package: onnxsparse.validate(...)
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'onnxsparse' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "load_model",
    "save_model",
    "normalize",
    "model_stats",
    "count_params",
    "count_macs",
    "prune",
    "PrunePass",
    "PruneOptions",
    "PruneResult",
    "prune_heads",
    "sparsify",
    "SparsifyConfig",
    "densify",
    "session",
    "quantize",
    "validate",
    "OnnxSparseError",
    "Decline",
    "ModelLoadError",
    "ModelSaveError",
    "DataError",
    "UsageError",
]
