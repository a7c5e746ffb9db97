"""Structural validation of a parsed model, before anything trusts it.

A corrupt or hostile file otherwise surfaces deep inside numpy, onnx_ir or
onnxruntime (``cannot reshape array of size 250 into shape (32,16,3,3)``, a
37 GiB allocation for a COO tensor that claims 10^10 elements, a decode graph
that fails only at run time).  :func:`check_model` reads only the proto
(external data is not loaded) and raises :class:`ModelLoadError` with one line
naming the first problem:

* opsets: negative versions, duplicate domains, ``ai.onnx.ml`` newer than onnx knows;
* every tensor in the file (initializers, ``Constant`` values, COO parts): a
  known data type, non-negative dims, a dense size within the memory budget
  (:mod:`onnxsparse.limits`), and as many bytes / values as the dims need
  (external data: the declared ``length``);
* COO ``sparse_initializer``: indices in range, one index per value;
* graphs: duplicate initializer or output names, empty ``op_type``, inputs
  nothing produces, cycles, graph outputs nothing produces;
* ``ConstantOfShape`` with a constant shape: the output fits the budget;
* onnxsparse's storage metadata (``onnxsparse.storage``): JSON of the
  expected schema whose payloads exist and whose column indices are in range;
* then onnx's own checker (attribute types, op schemas) on a copy without the
  large tensors, so a 500 MB model is checked in milliseconds.

Non-finite float weights are logged as a warning (attention masks hold
``-inf`` on purpose); commands that cannot work with them refuse on their own.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from . import limits
from .errors import DataError, ModelLoadError

__all__ = ["check_finite_weights", "check_model"]

logger = logging.getLogger(__name__)

#: Tensors with more bytes than this are left out of the copy handed to onnx's checker.
_CHECKER_INLINE_BYTES = 1024

_KNOWN_TYPES = frozenset(v for v in onnx.TensorProto.DataType.values() if v != onnx.TensorProto.UNDEFINED)
_DEFAULT_DOMAINS = ("", "ai.onnx")


def check_model(proto: onnx.ModelProto, base_dir: Path | None = None) -> None:
    """Raise :class:`ModelLoadError` for the first structural problem of ``proto``.

    ``base_dir`` is the model's folder (to size external data without a ``length``).
    """
    try:
        _check_opsets(proto)
        names = _check_graph(proto.graph, set(), base_dir, "graph")
        _check_storage_metadata(proto, names)
    except DataError as exc:  # limits.TooLarge: the budget speaks of data; here it is the model
        raise ModelLoadError(str(exc)) from None
    _run_onnx_checker(proto)


# ---------------------------------------------------------------------------------------- opsets


def _latest_versions() -> dict[str, int]:
    ml = max(row[3] for row in onnx.helper.VERSION_TABLE)
    training = max(row[4] for row in onnx.helper.VERSION_TABLE if len(row) > 4)
    return {"": onnx.defs.onnx_opset_version(), "ai.onnx": onnx.defs.onnx_opset_version(),
            "ai.onnx.ml": ml, "ai.onnx.training": training}


def _check_opsets(proto: onnx.ModelProto) -> None:
    latest = _latest_versions()
    seen: set[str] = set()
    for opset in proto.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        label = opset.domain or "ai.onnx"
        if domain in seen:
            raise ModelLoadError(f"opset domain {label!r} is imported twice")
        seen.add(domain)
        if opset.version < 1:
            raise ModelLoadError(f"opset version {opset.version} for domain {label!r} is not a valid version")
        if domain in latest and opset.version > latest[domain]:
            raise ModelLoadError(
                f"model uses {label} opset {opset.version}, newer than supported "
                f"(onnx {onnx.__version__} knows up to {latest[domain]})"
            )


# --------------------------------------------------------------------------------------- tensors


def _dims(tensor: onnx.TensorProto | onnx.SparseTensorProto, what: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{what} has a negative dimension in its dims {list(dims)}")
    return dims


def _np_dtype(data_type: int, what: str) -> np.dtype:
    if data_type not in _KNOWN_TYPES:
        name = "UNDEFINED" if data_type == onnx.TensorProto.UNDEFINED else str(data_type)
        raise ModelLoadError(f"{what} has data type {name}, not a valid tensor type")
    if data_type == onnx.TensorProto.STRING:
        return np.dtype(object)
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))


def _external_length(tensor: onnx.TensorProto, base_dir: Path | None) -> int | None:
    info = {entry.key: entry.value for entry in tensor.external_data}
    if info.get("length"):
        return int(info["length"])
    if base_dir is None or not info.get("location"):
        return None
    path = base_dir / info["location"]
    return path.stat().st_size - int(info.get("offset", 0) or 0) if path.is_file() else None


def _value_count(tensor: onnx.TensorProto) -> int:
    field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
    return len(getattr(tensor, field))


def _check_tensor(tensor: onnx.TensorProto, what: str, base_dir: Path | None,
                  warn_nonfinite: bool = False) -> tuple[tuple[int, ...], np.dtype]:
    """Type, dims, budget and byte length of one tensor; returns its dims and numpy dtype."""
    dtype = _np_dtype(tensor.data_type, what)
    dims = _dims(tensor, what)
    n = math.prod(dims)
    if tensor.data_type == onnx.TensorProto.STRING:
        if len(tensor.string_data) != n:
            raise ModelLoadError(f"{what} holds {len(tensor.string_data)} strings, its dims {list(dims)} need {n}")
        return dims, dtype
    limits.check_alloc(what, dims, dtype)
    bits = ir.DataType(tensor.data_type).bitwidth
    need = (n * bits + 7) // 8
    type_name = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        have = _external_length(tensor, base_dir)
        if have is not None and have < need:
            raise ModelLoadError(
                f"{what}: external data length {have} bytes is shorter than its dims {list(dims)} "
                f"({type_name}) need ({need} bytes)"
            )
        return dims, dtype
    if tensor.HasField("raw_data"):
        raw = tensor.raw_data  # one copy out of protobuf: each access copies
        if len(raw) != need:
            raise ModelLoadError(
                f"{what} has {len(raw)} bytes of data, its dims {list(dims)} ({type_name}) need {need}"
            )
        if warn_nonfinite and dtype.kind == "f" and n:
            _warn_nonfinite(np.frombuffer(raw, dtype=dtype.newbyteorder("<")), what)
        return dims, dtype
    count = _value_count(tensor)
    per_value = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
    expected = math.ceil(n * bits / 8) if bits < 8 else n * per_value
    if count != expected and not (n == 0 and count == 0):
        raise ModelLoadError(f"{what} holds {count} values, its dims {list(dims)} ({type_name}) need {expected}")
    return dims, dtype


def _warn_nonfinite(values: np.ndarray, what: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad = values[~finite]
        logger.warning("%s has %d non-finite values (%d NaN, %d Inf)", what, bad.size,
                       int(np.isnan(bad).sum()), int(np.isinf(bad).sum()))


def _check_sparse(sparse: onnx.SparseTensorProto, base_dir: Path | None) -> str:
    name = sparse.values.name
    what = f"sparse initializer {name!r}"
    dims = _dims(sparse, what)
    values_dims, dtype = _check_tensor(sparse.values, f"{what} values", base_dir)
    index_dims, _ = _check_tensor(sparse.indices, f"{what} indices", base_dir)
    limits.check_alloc(f"{what} (dense)", dims, dtype)
    if len(values_dims) != 1:
        raise ModelLoadError(f"{what}: values must be 1-D, got dims {list(values_dims)}")
    nnz = values_dims[0]
    if sparse.indices.data_type != onnx.TensorProto.INT64:
        raise ModelLoadError(f"{what}: indices must be int64")
    if len(index_dims) not in (1, 2) or index_dims[0] != nnz or (len(index_dims) == 2 and index_dims[1] != len(dims)):
        raise ModelLoadError(
            f"{what}: {nnz} values but indices of dims {list(index_dims)} "
            f"(expected [{nnz}] or [{nnz}, {len(dims)}])"
        )
    if sparse.indices.data_location == onnx.TensorProto.EXTERNAL or nnz == 0:
        return name
    indices = onnx.numpy_helper.to_array(sparse.indices)
    bounds = np.array([math.prod(dims)] if indices.ndim == 1 else list(dims), dtype=np.int64)
    bad = (indices < 0) | (indices >= bounds)
    if bad.any():
        where = int(np.argwhere(bad)[0][0])
        raise ModelLoadError(
            f"{what}: index {indices[where].tolist()} (entry {where}) is out of range for dims {list(dims)}"
        )
    return name


# ---------------------------------------------------------------------------------------- graphs


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _constant_shape(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> None:
    """A ``ConstantOfShape`` whose shape is in the file: its output must fit the budget."""
    if node.op_type != "ConstantOfShape" or node.domain not in _DEFAULT_DOMAINS or not node.input:
        return
    shape_tensor = consts.get(node.input[0])
    if shape_tensor is None or shape_tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    shape = onnx.numpy_helper.to_array(shape_tensor).reshape(-1)
    value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
    dtype = _np_dtype(value.data_type, "ConstantOfShape value") if value is not None else np.dtype(np.float32)
    limits.check_alloc(f"ConstantOfShape {node.name or node.output[0]!r} output", shape, dtype)


def _check_graph(graph: onnx.GraphProto, outer: set[str], base_dir: Path | None, where: str) -> set[str]:
    """Check one graph (and its subgraphs); returns the initializer names of this graph."""
    label = f" in subgraph {graph.name!r}" if where != "graph" else ""
    consts: dict[str, onnx.TensorProto] = {}
    for tensor in graph.initializer:
        what = f"initializer {tensor.name!r}{label}"
        if tensor.name in consts:
            raise ModelLoadError(f"duplicate initializer name {tensor.name!r}{label}")
        _check_tensor(tensor, what, base_dir, warn_nonfinite=True)
        consts[tensor.name] = tensor
    for sparse in graph.sparse_initializer:
        name = _check_sparse(sparse, base_dir)
        if name in consts:
            raise ModelLoadError(f"duplicate initializer name {name!r}{label}")
        consts[name] = sparse.values
    defined = set(outer) | set(consts) | {value.name for value in graph.input}
    produced_by_nodes: set[str] = set()
    all_outputs = {out for node in graph.node for out in node.output if out}
    for index, node in enumerate(graph.node):
        node_label = f"node {node.name or index!r}{label}"
        if not node.op_type:
            raise ModelLoadError(f"{node_label} has an empty op_type")
        for name in node.input:
            if name and name not in defined:
                if name in all_outputs:
                    raise ModelLoadError(
                        f"{node_label} ({node.op_type}) reads {name!r} before it is produced: "
                        "the graph has a cycle or is not topologically sorted"
                    )
                raise ModelLoadError(
                    f"{node_label} ({node.op_type}) reads {name!r}, which no node, initializer or graph input produces"
                )
        for sub in _subgraphs(node):
            _check_graph(sub, defined, base_dir, "subgraph")
        _constant_shape(node, consts)
        for name in node.output:
            if not name:
                continue
            if name in produced_by_nodes or name in consts or (name in defined and name not in outer):
                raise ModelLoadError(f"value {name!r}{label} is produced twice ({node_label} and before)")
            produced_by_nodes.add(name)
            defined.add(name)
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    _check_tensor(attr.t, f"Constant {node.name or index!r}{label}", base_dir)
                    if node.output:
                        consts[node.output[0]] = attr.t
    for value in graph.output:
        if value.name not in defined:
            raise ModelLoadError(f"graph output {value.name!r}{label} is not produced by any node or input")
    return set(consts)


# ------------------------------------------------------------------------------ storage metadata


def _check_storage_metadata(proto: onnx.ModelProto, initializers: set[str]) -> None:
    from .formats import FORMATS
    from .formats.storage import META_KEY, StoredTensor

    text = next((p.value for p in reversed(proto.metadata_props) if p.key == META_KEY), None)
    if not text:
        return
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ModelLoadError(f"corrupt {META_KEY} metadata: not JSON ({exc})") from None
    tensors = data.get("tensors") if isinstance(data, dict) else None
    if not isinstance(tensors, dict):
        raise ModelLoadError(f"corrupt {META_KEY} metadata: expected an object with a 'tensors' object")
    by_name = {t.name: t for t in proto.graph.initializer}
    for name, raw in tensors.items():
        try:
            spec = StoredTensor.from_json(name, raw)
            dtype = spec.numpy_dtype
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"corrupt {META_KEY} metadata for {name!r}: {type(exc).__name__}: {exc}") from None
        if spec.format not in FORMATS:
            raise ModelLoadError(f"{META_KEY} metadata: tensor {name!r} has unknown format {spec.format!r}")
        limits.check_alloc(f"stored tensor {name!r}", spec.shape, dtype)
        if any(init not in initializers for init in spec.inputs.values()):
            # stale, not corrupt: an optimiser (onnxruntime's, onnxscript's) folded the decode graph;
            # densify evaluates what is left or drops the entry, with a warning
            continue
        _check_column_indices(spec, by_name)


def _check_column_indices(spec, by_name: dict[str, onnx.TensorProto]) -> None:
    """Column indices of row-compressed formats (``col_indices``, ``block_col_indices``) lie inside the row."""
    from .formats.storage import META_KEY

    try:
        cols = int(spec.params["cols"]) if "cols" in spec.params else None
        block = spec.params.get("block")
        bound = None if cols is None else (-(-cols // int(block[1])) if block else cols)
    except (TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise ModelLoadError(f"corrupt {META_KEY} metadata for {spec.name!r}: bad params ({exc})") from None
    for role, init in spec.inputs.items():
        if not role.endswith("col_indices") or bound is None:
            continue
        tensor = by_name.get(init)
        if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        indices = onnx.numpy_helper.to_array(tensor).astype(np.int64, copy=False)
        if indices.size and (indices.min() < 0 or indices.max() >= bound):
            raise ModelLoadError(
                f"{META_KEY} metadata: stored tensor {spec.name!r} has {role} outside [0, {bound}) "
                f"(min {indices.min()}, max {indices.max()})"
            )


# -------------------------------------------------------------------------------- onnx's checker


def _skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` without its large/external initializers (declared as graph inputs instead)."""
    skeleton = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(skeleton, field, getattr(proto, field))
    skeleton.opset_import.extend(proto.opset_import)
    skeleton.functions.extend(proto.functions)
    graph, source = skeleton.graph, proto.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    inputs = {value.name for value in source.input}
    external = onnx.TensorProto.EXTERNAL
    for sparse in source.sparse_initializer:  # external parts were checked by io; onnx would read them from the cwd
        if external not in (sparse.values.data_location, sparse.indices.data_location):
            graph.sparse_initializer.append(sparse)
        elif sparse.values.name not in inputs:
            graph.input.append(onnx.helper.make_tensor_value_info(sparse.values.name, sparse.values.data_type,
                                                                  list(sparse.dims)))
    for tensor in source.initializer:
        small = (tensor.data_location != onnx.TensorProto.EXTERNAL
                 and math.prod(tensor.dims) * ir.DataType(tensor.data_type).bitwidth <= 8 * _CHECKER_INLINE_BYTES)
        if small:
            graph.initializer.append(tensor)
        elif tensor.name not in inputs:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return skeleton


def _one_line(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _run_onnx_checker(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(_skeleton(proto), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"invalid model: {_one_line(str(exc))}") from None


# ------------------------------------------------------------------------------ finite weights

#: Ops whose constant inputs quantizers turn into integers with a scale from their range.
_QUANTIZED_WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Gather", "LSTM", "GRU", "Attention"})


def check_finite_weights(model: ir.Model, purpose: str) -> None:
    """Raise :class:`ModelLoadError` if a weight read by a quantizable op holds NaN or Inf.

    A scale computed from such a range is meaningless (onnxruntime's quantizer
    stops with ``AssertionError: scale issue``).  Other constants may hold
    ``-inf`` on purpose (attention masks) and are not looked at.
    """
    for graph in model.graphs():
        for node in graph:
            if node.op_type not in _QUANTIZED_WEIGHT_OPS:
                continue
            for value in node.inputs:
                tensor = None if value is None else value.const_value
                if value is None or tensor is None or tensor.dtype is None or not tensor.dtype.is_floating_point():
                    continue
                array = tensor.numpy()
                finite = np.isfinite(array)
                if not finite.all():
                    bad = array[~finite]
                    raise ModelLoadError(
                        f"weight {value.name!r} of {node.op_type} {node.name!r} has {bad.size} non-finite values "
                        f"({int(np.isnan(bad).sum())} NaN, {int(np.isinf(bad).sum())} Inf); {purpose} needs finite weights"
                    )
