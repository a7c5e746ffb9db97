"""Concrete shapes of every value, given shapes for the model inputs.

ONNX shape inference (with data propagation, so ``Shape -> Gather -> Concat ->
Reshape`` chains resolve) runs on a *copy* of the model whose input dims were
replaced by the ``--shape`` values; the caller's model is never touched.
Symbolic dims the user did not fix are reported as ``None``.

Large weights are stripped from the copy before inference (only their dims
matter), so inference never hits protobuf's 2 GiB limit.  External tensors stay
references and are never read; in-memory weights are copied once while the copy
is built (peak memory: twice the inline weights, for a moment).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping

import onnx
import onnx_ir as ir

from ..errors import UsageError
from ._contrib_shapes import contrib_value_info

__all__ = ["Shape", "infer_shapes", "static_shape", "input_dim_bindings"]

logger = logging.getLogger(__name__)

#: One tensor shape: ints for known dims, ``None`` for unknown ones.
Shape = tuple["int | None", ...]

#: Tensors with more elements than this are stripped before inference: they are
#: weights, never the small shape/axes/scales constants data propagation reads.
_STRIP_ABOVE_ELEMENTS = 4096

#: Rounds of contrib-op rules + inference at most (each crosses one run of standard ops).
_CONTRIB_ROUNDS = 64

#: Fold-and-infer rounds at most (each resolves shape computations the previous exposed).
_FOLD_ROUNDS = 4


def static_shape(shape: ir.Shape | None) -> Shape | None:
    """An ``onnx_ir`` shape as a tuple of ints / ``None`` (``None`` if rank unknown)."""
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in shape)


def input_dim_bindings(
    model: ir.Model, shapes: Mapping[str, tuple[int, ...]] | None
) -> dict[str, int]:
    """Symbolic dim name -> value implied by the ``shapes`` given for the inputs.

    ``--shape input_ids=1x128`` also fixes ``batch``/``seq`` in every other input
    that uses the same symbolic names (e.g. ``attention_mask``).  Raises
    :class:`UsageError` for unknown input names, wrong ranks, contradicting
    fixed dims, or one symbol given two different values.
    """
    shapes = dict(shapes or {})
    inputs = {v.name or "": v for v in model.graph.inputs if not v.is_initializer()}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise UsageError(f"--shape names unknown input(s) {unknown}; model inputs are {sorted(inputs)}")
    bindings: dict[str, int] = {}
    for name, dims in shapes.items():
        value = inputs[name]
        declared = value.shape
        if declared is None:
            continue
        if len(declared) != len(dims):
            raise UsageError(
                f"--shape {name}: gives {len(dims)} dims, input has rank {len(declared)} {_fmt(declared)}"
            )
        for axis, (want, given) in enumerate(zip(declared, dims)):
            if isinstance(want, int):
                if want != given:
                    raise UsageError(
                        f"--shape {name}: axis {axis} is fixed to {want} in the model, got {given}"
                    )
            elif want.value is not None:
                symbol = want.value
                if bindings.setdefault(symbol, given) != given:
                    raise UsageError(
                        f"--shape: dim {symbol!r} given as both {bindings[symbol]} and {given}"
                    )
    return bindings


def _fmt(shape: ir.Shape) -> str:
    return "[" + ",".join(str(d) if isinstance(d, int) else str(d.value or "?") for d in shape) + "]"


def _input_proto_dims(
    value: onnx.ValueInfoProto,
    shapes: Mapping[str, tuple[int, ...]],
    bindings: Mapping[str, int],
) -> None:
    """Fix the dims of one graph-input ValueInfoProto in place (it belongs to the copy)."""
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        if value.name in shapes:
            for d in shapes[value.name]:
                ttype.shape.dim.add().dim_value = int(d)
        return
    given = shapes.get(value.name)
    for axis, dim in enumerate(ttype.shape.dim):
        if given is not None:
            dim.Clear()
            dim.dim_value = int(given[axis])
        elif dim.HasField("dim_param") and dim.dim_param in bindings:
            symbol = dim.dim_param
            dim.Clear()
            dim.dim_value = int(bindings[symbol])


def _numel(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count


def _strip_tensor(tensor: onnx.TensorProto) -> None:
    """Drop a tensor's payload, keep name/type/dims; mark it external so nothing reads it."""
    dims, dtype, name = list(tensor.dims), tensor.data_type, tensor.name
    tensor.Clear()
    tensor.dims.extend(dims)
    tensor.data_type = dtype
    tensor.name = name
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "onnxsparse-stripped-weight"


def _strip_large_tensors(graph: onnx.GraphProto, main: bool = True) -> None:
    """Make big weights shape-only in the copy.

    In the main graph they become graph inputs (so no pass ever tries to read
    or fold them); in subgraphs (which take no inputs) their payload is dropped.
    """
    declared = {v.name: v for v in graph.input}
    keep: list[onnx.TensorProto] = []
    for tensor in graph.initializer:
        if _numel(tensor) <= _STRIP_ABOVE_ELEMENTS:
            keep.append(tensor)
        elif main:
            _as_input(graph, declared, tensor.name, tensor.data_type, tensor.dims)
        else:
            _strip_tensor(tensor)
            keep.append(tensor)
    if len(keep) != len(graph.initializer):
        kept = [onnx.TensorProto() for _ in keep]
        for new, old in zip(kept, keep):
            new.CopyFrom(old)
        del graph.initializer[:]
        graph.initializer.extend(kept)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        big_constant = (
            main
            and node.op_type == "Constant"
            and node.domain in ("", "ai.onnx")
            and len(node.attribute) == 1
            and node.attribute[0].type == onnx.AttributeProto.TENSOR
            and _numel(node.attribute[0].t) > _STRIP_ABOVE_ELEMENTS
        )
        if big_constant:
            t = node.attribute[0].t
            _as_input(graph, declared, node.output[0], t.data_type, t.dims)
            continue
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and _numel(attr.t) > _STRIP_ABOVE_ELEMENTS:
                _strip_tensor(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _strip_large_tensors(attr.g, main=False)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _strip_large_tensors(sub, main=False)
    if len(nodes) != len(graph.node):
        copies = [onnx.NodeProto() for _ in nodes]
        for new_node, old in zip(copies, nodes):
            new_node.CopyFrom(old)
        del graph.node[:]
        graph.node.extend(copies)


def _as_input(graph: onnx.GraphProto, declared: dict, name: str, dtype: int, dims) -> None:
    info = onnx.helper.make_tensor_value_info(name, dtype, list(dims))
    if name in declared:  # IR < 4: the weight is already an input; trust the tensor's dims
        declared[name].CopyFrom(info)
    else:
        graph.input.append(info)
        declared[name] = graph.input[-1]


def _proto_dims(value: onnx.ValueInfoProto) -> Shape | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
        for d in value.type.tensor_type.shape.dim
    )


@contextlib.contextmanager
def _payload_free(model: ir.Model) -> Iterator[None]:
    """Big main-graph initializers stand in as external tensors (same name, dtype, dims) while the
    model is serialised, so ``ir.to_proto`` copies no weight bytes: shape inference needs only their
    dims (:func:`_strip_large_tensors` turns them into inputs).  143M float weights cost 0.5 s of
    copying per serialisation otherwise.  The real tensors are put back on exit."""
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.size <= _STRIP_ABOVE_ELEMENTS:
                continue
            stand_in = ir.ExternalTensor("shape-only", 0, tensor.nbytes, tensor.dtype, shape=ir.Shape(tensor.shape.numpy()),
                                         name=value.name or "")
            swapped.append((value, tensor))
            value.const_value = stand_in
        yield
    finally:
        for value, tensor in swapped:
            value.const_value = tensor


def shape_only_proto(model: ir.Model) -> onnx.ModelProto:
    """``model`` as a proto whose big weights are shape-only graph inputs (nothing is copied)."""
    with _payload_free(model):
        proto = ir.to_proto(model)
    _strip_large_tensors(proto.graph)
    return proto


def _collect_weights(
    graph: onnx.GraphProto,
    out: dict[str, Shape],
    subgraph: Callable[[onnx.GraphProto, dict[str, Shape]], None] | None = None,
) -> None:
    """Dims of initializers and Constant tensors; subgraphs go to ``subgraph`` (default: this function)."""
    subgraph = subgraph or _collect_weights
    for tensor in graph.initializer:
        out[tensor.name] = tuple(tensor.dims)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.type == onnx.AttributeProto.TENSOR and node.output:
                out[node.output[0]] = tuple(attr.t.dims)
            elif attr.type == onnx.AttributeProto.GRAPH:
                subgraph(attr.g, out)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    subgraph(sub, out)


def _collect(graph: onnx.GraphProto, out: dict[str, Shape]) -> None:
    """Declared value shapes, then weight dims, of ``graph`` and its subgraphs."""
    for group in (graph.input, graph.value_info, graph.output):
        for value in group:
            dims = _proto_dims(value)
            if dims is not None:
                _merge(out, {value.name: dims})
    _collect_weights(graph, out, _collect)


def _ir_shapes(model: ir.Model, out: dict[str, Shape]) -> None:
    """Shapes already stored on the ``onnx_ir`` values (e.g. by ``normalize``)."""
    for graph in model.graphs():
        for node in graph:
            for value in (*node.inputs, *node.outputs):
                if value is None or not value.name:
                    continue
                dims = static_shape(value.shape)
                if dims is not None and value.name not in out:
                    out[value.name] = dims


def _onnx_infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference is best effort; unknown dims stay None
        logger.warning("onnx shape inference failed (%s); some shapes stay unknown", exc)
        return proto


def _folded_copy(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """Fold shape computations (``Shape -> Gather -> Slice`` ends ...) in a copy.

    onnx's data propagation does not reach every op (e.g. ``Slice`` with
    computed ends, ``Shape`` of a ``Reshape`` output); once the input dims are
    concrete, folding turns those computations into constants and inference
    resolves the rest.  ``proto`` should carry the shapes inferred so far.
    """
    from onnxscript.optimizer import fold_constants

    from ..io import strip_unsupported_types

    try:
        stripped = onnx.ModelProto()
        stripped.CopyFrom(proto)
        strip_unsupported_types(stripped)  # onnx_ir holds no map types (ZipMap outputs)
        copy = ir.serde.deserialize_model(stripped)
        fold_constants(copy, onnx_shape_inference=True)
        return _onnx_infer(ir.to_proto(copy))
    except Exception as exc:  # noqa: BLE001 - best effort
        logger.debug("folding shape computations failed: %s", exc)
        return None


def _merge(into: dict[str, Shape], other: Mapping[str, Shape]) -> None:
    for name, dims in other.items():
        mine = into.get(name)
        if mine is None or (len(mine) == len(dims) and sum(d is None for d in dims) < sum(d is None for d in mine)):
            into[name] = dims


def _has_unknown(graph: onnx.GraphProto, shapes: Mapping[str, Shape]) -> bool:
    for node in graph.node:
        for name in node.output:
            dims = shapes.get(name)
            if name and (dims is None or None in dims):
                return True
    return False


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {t.name: t.data_type for t in graph.initializer}
    for group in (graph.input, graph.value_info, graph.output):
        for value in group:
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types[value.name] = value.type.tensor_type.elem_type
    return types


def _unknown_count(graph: onnx.GraphProto, shapes: Mapping[str, Shape]) -> int:
    return sum(
        1 for node in graph.node for name in node.output
        if name and ((shape := shapes.get(name)) is None or None in shape)
    )


def _inputs_concrete(graph: onnx.GraphProto) -> bool:
    for value in graph.input:
        dims = _proto_dims(value)
        if dims is None or None in dims:
            return False
    return True


def infer_shapes(
    model: ir.Model,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
) -> dict[str, Shape]:
    """Shape of every named value (inputs, intermediates, outputs, weights).

    ``shapes`` maps input names to concrete shapes (``--shape``); ``dims`` maps
    symbolic dim names to values (e.g. ``{"batch": 1}``).  Dims that stay
    symbolic are ``None``.  The model is not modified.
    """
    shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    bindings = {**dict(dims or {}), **input_dim_bindings(model, shapes)}
    with _payload_free(model):
        proto = ir.to_proto(model)
    out: dict[str, Shape] = {}
    _collect_weights(proto.graph, out)
    _strip_large_tensors(proto.graph)
    initializer_names = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name not in initializer_names:
            _input_proto_dims(value, shapes, bindings)
    # Stale value_info (exporters sometimes record traced dims) would fight the new dims.
    if shapes or bindings:
        del proto.graph.value_info[:]
        for value in proto.graph.output:
            value.type.tensor_type.ClearField("shape")
    inferred = _onnx_infer(proto)
    found: dict[str, Shape] = {}
    _collect(inferred.graph, found)
    for _ in range(_CONTRIB_ROUNDS):  # ops onnx does not know (com.microsoft fused attention, ...)
        added = contrib_value_info(proto.graph, found, _elem_types(inferred.graph))
        if not added:
            break
        proto.graph.value_info.extend(added)
        inferred = _onnx_infer(proto)
        _collect(inferred.graph, found)
    if _has_unknown(proto.graph, found) and _inputs_concrete(proto.graph):
        current = inferred
        for _ in range(_FOLD_ROUNDS):
            folded = _folded_copy(current)
            if folded is None:
                break
            extra: dict[str, Shape] = {}
            _collect(folded.graph, extra)
            before = _unknown_count(proto.graph, found)
            _merge(found, extra)
            if not _has_unknown(proto.graph, found) or _unknown_count(proto.graph, found) == before:
                break
            current = folded
    if _has_unknown(proto.graph, found):
        _merge(found, _runtime_symbolic(proto))
    _merge(out, found)
    if not (shapes or bindings):
        _ir_shapes(model, out)
    return out


def _runtime_symbolic(proto: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes from onnxruntime's symbolic shape inference, for what onnx's inference left unknown.

    It tracks dims through ``Shape``-derived ``Reshape``/``Expand``/``Where``
    chains that onnx's data propagation drops (a TorchScript BERT's attention
    mask: ``[None, 12, 128, 128]`` after ``--shape input_ids=1x128``); with
    symbolic inputs it still gives ranks.  ``proto`` is the stripped copy.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.graph.value_info[:]
    inferred = runtime_symbolic_inference(copy)
    if inferred is None:
        return {}
    found: dict[str, Shape] = {}
    _collect(inferred.graph, found)
    return found


def runtime_symbolic_inference(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic shape inference (``auto_merge``), quietly; ``None`` when it fails.

    When inference is incomplete it saves ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data``
    into the working directory before raising: it runs in a scratch directory that is removed.
    """
    from .._workdir import scratch_dir

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with _quiet_logging(), scratch_dir():
            return SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=False)
    except Exception as exc:  # noqa: BLE001 - best effort; onnx's shapes stand
        logger.debug("onnxruntime symbolic shape inference failed: %s", exc)
        return None


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime's symbolic inference logs every op it cannot handle at WARNING; we only want its result."""
    ssi_logger = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = ssi_logger.level
    ssi_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ssi_logger.setLevel(level)
