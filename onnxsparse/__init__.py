"""onnxsparse: make exported ONNX models smaller and faster after training.

Public API (each also a subcommand of ``python -m onnxsparse``): :func:`load_model`,
:func:`save_model`, :func:`normalize`; the analysis, pruning, sparsity,
quantization and validation entry points live in their subpackages and are
re-exported here as they land.
"""

from ._version import __version__
from .errors import DataError, ModelLoadError, ModelSaveError, OnnxSparseError, UsageError
from .io import load_model, save_model
from .passes.normalize import normalize

__all__ = [
    "__version__",
    "load_model",
    "save_model",
    "normalize",
    "OnnxSparseError",
    "ModelLoadError",
    "ModelSaveError",
    "DataError",
    "UsageError",
]
