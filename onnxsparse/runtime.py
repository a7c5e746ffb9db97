"""``onnxsparse.session(path)``: an onnxruntime session for a sparse-stored model, decoded with numpy.

onnxruntime runs our files unchanged (it folds the decode subgraphs at session
creation), but folding costs time and memory.  This loader decodes every stored
tensor with numpy instead and hands the dense weights to onnxruntime:

* ``strategy="external"`` (default): the decode nodes and payload are removed
  from the proto, each tensor becomes an *external-data placeholder*, and the
  arrays are supplied with ``SessionOptions.add_external_initializers``
  (no copy into the protobuf; measured fastest, see ``benchmarks/bench_sparsity.py``);
* ``strategy="inline"``: the decoded tensors are written into the proto and the
  session is created from the serialized bytes.

Models without onnxsparse storage are opened directly from their path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ModelLoadError, UsageError
from .formats import CONST_PREFIX, META_KEY, NODE_PREFIX, NODE_META_KEY, StoredTensor
from .formats.storage import decode_arrays
from .io import load_proto, max_runtime_ir_version

__all__ = ["session", "decode_model_proto", "STRATEGIES"]

STRATEGIES = ("external", "inline")
_PLACEHOLDER_LOCATION = "onnxsparse-in-memory.bin"
_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def _specs(proto: onnx.ModelProto) -> dict[str, StoredTensor]:
    import json

    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            try:
                data = json.loads(entry.value)
                return {name: StoredTensor.from_json(name, spec) for name, spec in data.get("tensors", {}).items()}
            except (ValueError, KeyError, TypeError) as exc:
                raise ModelLoadError(f"corrupt {META_KEY} metadata: {exc}") from exc
    return {}


def _has_markers(proto: onnx.ModelProto) -> bool:
    return any(
        node.name.startswith(NODE_PREFIX) or any(p.key == NODE_META_KEY for p in node.metadata_props)
        for node in proto.graph.node
    )


def decode_model_proto(proto: onnx.ModelProto, base_dir: str | os.PathLike | None = None
                       ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Strip decode subgraphs from ``proto`` (in place); return it and the decoded arrays by name.

    The graph still references each decoded tensor by name but no longer
    defines it: the caller adds it back (placeholder or initializer).
    """
    graph = proto.graph
    specs = _specs(proto)
    inits = {t.name: t for t in graph.initializer}
    base = str(base_dir) if base_dir is not None else None
    arrays: dict[str, np.ndarray] = {}
    payload: set[str] = set()
    for name, spec in specs.items():
        stored = {}
        for role, init_name in spec.inputs.items():
            tensor = inits.get(init_name)
            if tensor is None:
                raise ModelLoadError(f"sparse storage of {name!r} refers to a missing initializer {init_name!r}")
            stored[role] = numpy_helper.to_array(tensor, base) if base else numpy_helper.to_array(tensor)
            payload.add(init_name)
        arrays[name] = decode_arrays(spec, stored)
    decode_nodes = [n for n in graph.node if n.name.startswith(NODE_PREFIX)
                    or any(p.key == NODE_META_KEY for p in n.metadata_props)]
    produced = {out for n in decode_nodes for out in n.output}
    missing = {out for out in produced if not out.startswith(NODE_PREFIX)} - set(arrays)
    if missing:
        raise ModelLoadError(f"decode subgraphs without metadata for {sorted(missing)}; run onnxsparse densify")
    dropped = {id(n) for n in decode_nodes}
    keep = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in _all_nodes(graph) for i in n.input}
    remaining = [t for t in graph.initializer
                 if not ((t.name in payload or t.name.startswith(CONST_PREFIX)) and t.name not in used)]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    for entry in list(proto.metadata_props):
        if entry.key == META_KEY:
            proto.metadata_props.remove(entry)
    return proto, arrays


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)


def _placeholder(name: str, array: np.ndarray) -> onnx.TensorProto:
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", _PLACEHOLDER_LOCATION), ("offset", "0"), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _ortvalue(array: np.ndarray):
    import onnxruntime as ort

    array = np.ascontiguousarray(array)
    onnx_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    raw = array.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[array.dtype.itemsize])
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, onnx_type), array


def _session_via_densify(path: Path, providers, sess_options, **kwargs):
    import onnx_ir as ir
    import onnxruntime as ort

    from .io import load_model
    from .passes.densify import densify

    model = load_model(path)
    densify(model)
    proto = ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    return ort.InferenceSession(proto.SerializeToString(), sess_options, providers=providers, **kwargs)


def session(
    model: str | os.PathLike,
    providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
    sess_options: Any = None,
    *,
    strategy: str = "external",
    **kwargs: Any,
):
    """An ``onnxruntime.InferenceSession`` for ``model`` with sparse-stored tensors decoded by numpy.

    ``sess_options`` (optional) receives the decoded initializers, so give each
    session its own options object.  Extra keyword arguments go to
    ``InferenceSession`` (e.g. ``provider_options``).
    """
    import onnxruntime as ort

    if strategy not in STRATEGIES:
        raise UsageError(f"unknown loader strategy {strategy!r}; choose from {STRATEGIES}")
    providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
    path = Path(model)
    proto = load_proto(path)
    if not _specs(proto) and not _has_markers(proto):
        return ort.InferenceSession(str(path), sess_options, providers=providers, **kwargs)
    base_dir = path.resolve().parent
    if not _specs(proto):
        # decode graphs whose metadata a tool dropped: densify through the IR (runs the graphs)
        return _session_via_densify(path, providers, sess_options, **kwargs)
    proto, arrays = decode_model_proto(proto, base_dir)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    options = sess_options if sess_options is not None else ort.SessionOptions()
    keep_alive: list[Any] = []
    if strategy == "inline":
        for name, array in arrays.items():
            proto.graph.initializer.append(numpy_helper.from_array(array, name))
    else:
        names, values = [], []
        for name, array in arrays.items():
            proto.graph.initializer.append(_placeholder(name, array))
            value, backing = _ortvalue(array)
            names.append(name)
            values.append(value)
            keep_alive += [value, backing]
        options.add_external_initializers(names, values)
    if any(t.data_location == onnx.TensorProto.EXTERNAL and t.name not in arrays for t in proto.graph.initializer):
        options.add_session_config_entry(_FOLDER_KEY, str(base_dir))
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=providers, **kwargs)
    sess._onnxsparse_keep_alive = keep_alive  # the session reads these buffers; keep them alive
    return sess
