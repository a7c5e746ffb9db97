"""Opening onnxruntime sessions the same way everywhere, and reading their input types.

onnxruntime is imported only when a session is made, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

__all__ = ["CPU", "ORT_TYPE_TO_NUMPY", "session_options", "make_session"]

#: The provider list of a plain CPU session.
CPU: tuple[str, ...] = ("CPUExecutionProvider",)

#: onnxruntime ``NodeArg.type`` strings -> numpy dtypes.
ORT_TYPE_TO_NUMPY: dict[str, type] = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_, "tensor(int16)": np.int16,
}


def session_options(
    *,
    log_severity: int = 3,
    threads: int | None = None,
    optimize: bool = True,
    config: Mapping[str, str] | None = None,
):
    """``SessionOptions`` with onnxruntime's logging at ``log_severity`` (3: errors only; failures still raise).

    ``threads``: intra-op threads (inter-op then 1); ``optimize=False`` turns graph optimizations off;
    ``config`` entries go to ``add_session_config_entry``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_severity
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return options


#: onnxruntime session config: where external data lives when the model comes as bytes
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


def external_data_config(model: Any) -> dict[str, str]:
    """Session config letting onnxruntime read ``model``'s (an ``onnx_ir`` model) external data from bytes.

    A model serialised from memory keeps its external-data references relative to
    the file it was loaded from; onnxruntime resolves them against this folder.
    """
    import onnx_ir as ir

    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and tensor.base_dir:
            return {EXTERNAL_DATA_FOLDER: os.fspath(tensor.base_dir)}
    return {}


def make_session(
    model: str | os.PathLike | bytes | onnx.ModelProto,
    options: Any = None,
    providers: Sequence[str] = CPU,
):
    """An ``InferenceSession`` for a file, serialized bytes or a ``ModelProto`` (CPU unless ``providers``)."""
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        source: str | bytes = model.SerializeToString()
    elif isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
    else:
        source = model
    return ort.InferenceSession(source, options, providers=list(providers))
