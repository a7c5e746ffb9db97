"""Save a model whose ``coo`` tensors become real ONNX ``sparse_initializer`` entries.

``onnx_ir`` cannot hold sparse initializers, so the model is written by
:func:`onnxsparse.io.save_model` without the ``coo`` decode graphs (their
outputs left as dangling names) and the ``.onnx`` file is then patched: each
such tensor is added as a ``SparseTensorProto`` (values + sorted int64 flat
indices, as ``onnx.checker`` requires) and the file is replaced atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from ..errors import ModelSaveError
from ..io import save_model as _io_save_model
from .base import contiguous
from .storage import _decode_groups, _drop_orphan_consts, _initializer, read_storage, write_storage

__all__ = ["save_model"]

#: ``sparse_initializer`` exists since IR version 6
_MIN_SPARSE_IR = 6


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    protect: tuple[str | os.PathLike, ...] = (),
    force: bool = False,
    external_data: bool | None = None,
    source: str | os.PathLike | None = None,
) -> Path:
    """Like :func:`onnxsparse.io.save_model`, writing ``coo`` tensors as ``sparse_initializer``."""
    specs = read_storage(model)
    coo = {name: spec for name, spec in specs.items() if spec.format == "coo"}
    if not coo:
        return _io_save_model(model, path, protect=protect, force=force, external_data=external_data, source=source)

    clone = model.clone()
    graph = clone.graph
    groups = _decode_groups(graph)
    sparse: list[onnx.SparseTensorProto] = []
    for name, spec in coo.items():
        if int(spec.params.get("count", -1)) == 0:  # all zeros: no payload was stored
            values, indices = np.zeros(0, dtype=spec.numpy_dtype), np.zeros(0, dtype=np.int64)
        else:
            values = _initializer(graph, spec.inputs["values"])
            indices = _initializer(graph, spec.inputs["indices"]).astype(np.int64)
        nodes = groups.get(name, [])
        output = next((v for n in nodes for v in n.outputs if v.name == name), None)
        if output is None:
            raise ModelSaveError(f"coo tensor {name!r} has no decode nodes to replace")
        # Keep the consumers pointing at a value named like the tensor, with no producer.
        placeholder = ir.Value(name=name, shape=output.shape, type=output.type)
        output.name = None
        output.replace_all_uses_with(placeholder, replace_graph_outputs=True)
        graph.remove(nodes, safe=True)
        for role_name in spec.inputs.values():
            value = graph.initializers.get(role_name)
            if value is not None and not value.uses():
                graph.initializers.pop(role_name)
        tensor_values = numpy_helper.from_array(contiguous(values), name)
        sparse.append(
            onnx.helper.make_sparse_tensor(
                tensor_values, numpy_helper.from_array(indices, name + "_indices"), list(spec.shape)
            )
        )
        specs.pop(name)
    _drop_orphan_consts(graph)
    write_storage(clone, specs)

    out = _io_save_model(clone, path, protect=protect, force=force, external_data=external_data, source=source)
    proto = onnx.load(str(out), load_external_data=False)
    proto.graph.sparse_initializer.extend(sparse)
    proto.ir_version = max(proto.ir_version, _MIN_SPARSE_IR)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(proto.SerializeToString())
        os.replace(tmp, out)
    except OSError as exc:
        raise ModelSaveError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
