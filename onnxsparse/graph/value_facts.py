"""Small helpers to read shapes, constants and attributes from ``onnx_ir`` objects."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

Dims = tuple[int | None, ...]


def dims(value: ir.Value | None) -> Dims | None:
    """Static dims of a value (``None`` for symbolic/unknown dims); ``None`` if rank unknown.

    A negative dim (``-1``: how some exporters write "dynamic" as a ``dim_value``) is unknown.
    """
    if value is None:
        return None
    shape = value.shape
    if shape is None:
        const = value.const_value
        if const is not None:
            return tuple(d if isinstance(d, int) else None for d in const.shape)  # a tensor's dims are ints
        return None
    out: list[int | None] = []
    for d in shape:
        out.append(d if isinstance(d, int) and d >= 0 else None)
    return tuple(out)


def symbolic_dims(value: ir.Value | None) -> tuple[int | str | None, ...] | None:
    """Dims with symbolic names kept (``None`` for anonymous unknown dims)."""
    if value is None or value.shape is None:
        return dims(value)
    out: list[int | str | None] = []
    for d in value.shape:
        if isinstance(d, int):
            out.append(d if d >= 0 else None)
        else:
            out.append(getattr(d, "value", None))
    return tuple(out)


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The constant array of an initializer value (``None`` otherwise)."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except Exception:  # noqa: BLE001 - unreadable constant: treat as unknown
        return None


def constant_ints(value: ir.Value | None) -> tuple[int, ...] | None:
    arr = constant(value)
    if arr is None or arr.dtype.kind not in "iu":
        return None
    return tuple(int(x) for x in arr.reshape(-1))


def copy_dtype(dst: ir.Value, src: ir.Value) -> None:
    """Give ``dst`` the element type of ``src``; nothing when that is unknown (onnx_ir would record a
    tensor type without an element type)."""
    if src.dtype is not None:
        dst.dtype = src.dtype


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def opset_version(model_or_graph_opsets: dict[str, int], domain: str) -> int:
    if domain in ("", "ai.onnx"):
        return model_or_graph_opsets.get("", model_or_graph_opsets.get("ai.onnx", 1))
    return model_or_graph_opsets.get(domain, 1)


def unknown_negative_dims(values, named=()) -> int:
    """Replace negative static dims (``dim_value: -1``) by named symbolic dims; returns how many values changed.

    ONNX says a ``dim_value`` is >= 0; some exporters (older paddle2onnx) and the common
    "make the batch dynamic" edit write ``-1`` for a dynamic axis.  Read as a size it is
    nonsense (a slot of -1 positions), and onnx shape inference propagates it into
    Reshape targets as a second ``-1`` and gives up on the whole model.  Each such dim
    becomes what it means, an unknown dim: named ``<value>_dim<k>`` on the values in
    ``named`` (the graph inputs), so that inference can carry it through the graph,
    anonymous elsewhere (inference then fills in the name it derives).
    """
    named = {id(v) for v in named}
    changed = 0
    for value in values:
        shape = value.shape if value is not None else None
        if shape is None or not any(isinstance(d, int) and d < 0 for d in shape):
            continue
        value.shape = ir.Shape([
            (ir.SymbolicDim(f"{value.name}_dim{k}") if id(value) in named else ir.SymbolicDim(None))
            if isinstance(d, int) and d < 0 else d
            for k, d in enumerate(shape)
        ])
        changed += 1
    return changed


def missing_shapes(graph: ir.Graph) -> int:
    """Node outputs of ``graph`` without a known rank, or with a dim nobody could name (anonymous, or
    onnx's made-up ``unk__N``: a TorchScript head split behind ``Shape -> Gather -> Concat`` targets);
    initializers and graph inputs excepted."""
    return sum(1 for node in graph for v in node.outputs
               if v is not None and v.name and (v.shape is None or dims(v) is None
                                                or any(_unnamed(d) for d in v.shape.dims)))


def _unnamed(d) -> bool:
    if isinstance(d, int):
        return d < 0
    name = getattr(d, "value", None)
    return not name or str(name).startswith("unk__")


def infer_missing(model: ir.Model) -> int:
    """Fill in shapes the model lacks with onnx shape inference (non-strict, with data propagation).

    Normalisation infers shapes in strict mode: one node onnx cannot infer (a
    Reshape target with two ``-1``, an unknown domain) leaves *every* value
    without a shape, and a rule then cannot tell, e.g., the rank of a MatMul
    after a run-time Flatten.  Non-strict inference skips the nodes it cannot
    infer and keeps the rest.  Only values without a shape, or with unknown dims
    that inference knows (as a number or a symbol), are updated; returns how many.
    """
    import onnx
    from onnx_ir.passes.common import _c_api_utils

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)

    try:
        inferred = ir.serde.deserialize_model(_c_api_utils.call_onnx_api(infer, model))
    except Exception:  # noqa: BLE001 - onnx gives up on the whole model (a rank clash): onnxruntime's may not
        return _symbolic_ints(model)
    known = ir.convenience.create_value_mapping(inferred.graph)
    changed = 0
    for name, value in ir.convenience.create_value_mapping(model.graph).items():
        other = known.get(name)
        if other is None or other.shape is None or value.const_value is not None:
            continue
        if value.shape is None:
            value.shape = other.shape
        elif len(value.shape) == len(other.shape) and any(
            not _informative(a) and _informative(b) for a, b in zip(value.shape, other.shape)
        ):
            value.shape = ir.Shape([b if not _informative(a) and _informative(b) else a
                                    for a, b in zip(value.shape, other.shape)])
        else:
            continue
        if value.dtype is None and other.dtype is not None:
            value.dtype = other.dtype
        changed += 1
    return changed + _symbolic_ints(model)


def _symbolic_ints(model: ir.Model) -> int:
    """Dims still unnamed after onnx's inference that onnxruntime's symbolic inference knows.

    As numbers: sizes fixed by weights and constants (the head count of a
    ``[batch, 4, seq, 16]`` head split whose target is computed at run time).
    As names: onnx gives every op's unknown output dim a fresh ``unk__N``, so a
    TorchScript merge-back ``Reshape(x, Concat(Shape(h)[0], Shape(h)[1], -1))``
    cannot show that ``x``'s ``unk__26`` is ``h``'s ``unk__7`` (both the batch);
    onnxruntime's inference carries one symbol through the graph (merging the
    dims that broadcasting and MatMul equate), so it can.  Only unnamed dims are
    replaced; a value onnxruntime gives no shape of the same rank keeps its own.
    Returns how many values changed.
    """
    values = ir.convenience.create_value_mapping(model.graph)
    todo = {name: v for name, v in values.items()
            if v.const_value is None and v.shape is not None and any(_unnamed(d) for d in v.shape.dims)}
    if not todo:
        return 0
    found = _runtime_symbolic_named(model)
    changed = 0
    for name, value in todo.items():
        other, shape = found.get(name), value.shape
        if other is None or shape is None or len(other) != len(shape):
            continue
        merged = [b if _unnamed(a) and b is not None else a for a, b in zip(shape.dims, other)]
        new = [ir.SymbolicDim(d) if isinstance(d, str) else d for d in merged]
        if [_dim_key(d) for d in new] != [_dim_key(d) for d in shape.dims]:
            value.shape = ir.Shape(new)
            changed += 1
    return changed


def _dim_key(d):
    return d if isinstance(d, int) else ("sym", getattr(d, "value", None))


def _runtime_symbolic_named(model: ir.Model) -> dict[str, tuple[int | str | None, ...]]:
    """Value shapes from onnxruntime's symbolic inference, with its symbol names (``{}`` if it fails).

    A dim is an int, a symbol name (never onnx's made-up ``unk__N``), or ``None``.
    """
    from ..analysis.shapes import runtime_symbolic_inference, shape_only_proto

    proto = shape_only_proto(model)  # weights become shape-only inputs: inference reads no payload
    del proto.graph.value_info[:]
    inferred = runtime_symbolic_inference(proto)
    if inferred is None:
        return {}
    out: dict[str, tuple[int | str | None, ...]] = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            continue
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param and not _unnamed(ir.SymbolicDim(d.dim_param)):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out[vi.name] = tuple(dims)
    return out


def _informative(d) -> bool:
    """A static dim, or a named symbolic one."""
    if isinstance(d, int):
        return d >= 0
    return bool(getattr(d, "value", None))


#: constant inputs up to this many elements are handed to per-node inference as data (shape vectors)
_DATA_LIMIT = 1024


def infer_node(node: ir.Node, version: int) -> int:
    """Fill in the shapes of ``node``'s outputs that are missing, by onnx's inference of this one node.

    Whole-model inference leaves a value without a shape as soon as one producer
    upstream has none: onnx cannot resolve a run-time Reshape target such as
    ``Concat(Shape(x)[0:1], [-1])`` whose ``-1`` must cancel a symbolic batch, so
    the Reshape output, the MatMul after it and everything downstream stay
    unknown.  The Reshape rule proves such targets (``runtime_shape``) and sets
    the output's shape; running onnx's inference node by node during the analysis
    carries it on.  Returns how many outputs got a shape.
    """
    import onnx

    missing = [v for v in node.outputs if v is not None and v.name and dims(v) is None]
    if not missing or node.domain not in ("", "ai.onnx"):
        return 0
    schema = onnx.defs.get_schema(node.op_type, version, "")
    input_types: dict[str, onnx.TypeProto] = {}
    input_data: dict[str, onnx.TensorProto] = {}
    for v in node.inputs:
        if v is None or not v.name:
            continue
        tensor = v.const_value
        elem = v.dtype if v.dtype is not None else (tensor.dtype if tensor is not None else None)
        d = symbolic_dims(v)
        if elem is None or d is None:
            return 0  # an input of unknown rank: nothing to infer from
        input_types[v.name] = onnx.helper.make_tensor_type_proto(int(elem), list(d))
        if tensor is not None and tensor.size <= _DATA_LIMIT:
            input_data[v.name] = ir.serde.serialize_tensor(tensor)
    out_types = onnx.shape_inference.infer_node_outputs(schema, ir.serde.serialize_node(node), input_types,
                                                        input_data)
    filled = 0
    for v in missing:
        tp = out_types.get(v.name or "")
        if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
            continue
        v.shape = ir.Shape([
            d.dim_value if d.HasField("dim_value") and d.dim_value >= 0
            else ir.SymbolicDim(d.dim_param or None)
            for d in tp.tensor_type.shape.dim
        ])
        if v.dtype is None and tp.tensor_type.elem_type:
            v.dtype = ir.DataType(tp.tensor_type.elem_type)
        filled += 1
    return filled
