"""Parameters: which tensors are weights, how many elements and bytes, how sparse.

What counts as a parameter (one rule, used everywhere): the **constant values
the computation reads**.  A value is *constant* when it does not depend on a
graph input: an initializer, a ``Constant`` node, or the output of a standard
op whose inputs are all constant (``ConstantOfShape``, ``Identity`` of a shared
weight, ``DequantizeLinear`` of an int8 weight, a sparse-format decode
subgraph, ...).  A constant value is a parameter when a non-constant node reads
it (or it is a graph output), and its type is floating point or a narrow
integer (int8/uint8/int16/uint16/int4/uint4/int2/uint2; ``int32`` only when a
quantized op reads it as a bias).  ``int64``/``bool``/``string`` values
(shapes, axes, indices, masks) never count, nor do rank-0 scalars (``Clip``
bounds, GELU's ``sqrt(2)``) or the scale/zero-point inputs of quantization ops.  For ``MatMulNBits`` the packed weight counts as its
logical ``N*K`` elements.

So ``count_params`` does not change when a model is normalised (constants
lifted, subgraphs folded), quantized, or stored in a sparse format: it counts
the weights the layers see.  Shared weights count once; a tensor no node reads
does not count.  (For the onnx "light" ResNet-50 this gives 25,610,152 =
torchvision's 25,557,032 parameters + the 53,120 BatchNorm running statistics.)

``weight_bytes`` is different: the bytes of the tensors the file holds
(initializers and ``Constant`` tensors of any type).

Sparsity is the fraction of exact zeros.  Values of computed parameters (e.g. a
decoded sparse weight) are evaluated once with onnxruntime, up to
``EVALUATE_LIMIT_BYTES``; beyond that their zeros are not measured (``None``).
``nm_pattern`` is ``"N:M"`` when every group of ``M`` consecutive elements
along the weight's reduction axis (Conv: input channels; Gemm/MatMul: the K
axis) holds at most ``N`` nonzeros, for the smallest ``M`` in (4, 8, 16) with
``N <= M/2``; the last axis is tried when the reduction axis shows no pattern.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

__all__ = [
    "WeightRef",
    "WeightStats",
    "iter_weights",
    "count_params",
    "weight_bytes",
    "weight_stats",
    "all_weight_stats",
    "nm_pattern",
    "reduction_axis",
    "is_parameter_dtype",
    "NM_GROUP_SIZES",
    "EVALUATE_LIMIT_BYTES",
]

logger = logging.getLogger(__name__)

_PARAM_DTYPES = frozenset(
    getattr(ir.DataType, name)
    for name in (
        "FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16",
        "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0",
        "FLOAT4E2M1", "FLOAT6E2M3", "FLOAT6E3M2",
        "INT8", "UINT8", "INT16", "UINT16", "INT4", "UINT4", "INT2", "UINT2",
    )
    if hasattr(ir.DataType, name)
)

#: Inputs that are quantization metadata (scales, zero points), not weights.
_METADATA_INPUTS: dict[tuple[str, str], frozenset[int]] = {
    ("", "QuantizeLinear"): frozenset({1, 2}),
    ("", "DequantizeLinear"): frozenset({1, 2}),
    ("", "QLinearConv"): frozenset({1, 2, 4, 5, 6, 7}),
    ("", "QLinearMatMul"): frozenset({1, 2, 4, 5, 6, 7}),
    ("", "ConvInteger"): frozenset({2, 3}),
    ("", "MatMulInteger"): frozenset({2, 3}),
    ("com.microsoft", "MatMulNBits"): frozenset({2, 3, 4, 5}),
    ("com.microsoft", "DynamicQuantizeMatMul"): frozenset({2, 3}),
    ("com.microsoft", "DynamicQuantizeLSTM"): frozenset({8, 9, 10, 11}),
    ("com.microsoft", "MatMulIntegerToFloat"): frozenset({2, 3, 4, 5}),
    ("com.microsoft", "QGemm"): frozenset({1, 2, 4, 5, 7, 8}),
}

#: Ops whose ``int32`` inputs are parameters (quantized biases).
_INT32_PARAM_CONSUMERS = frozenset({"DequantizeLinear", "QLinearConv", "QGemm", "ConvInteger"})

#: Ops that never make a constant, even from constant inputs.
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})

#: Group sizes tried for N:M detection, smallest first.
NM_GROUP_SIZES: tuple[int, ...] = (4, 8, 16)

#: Computed parameters are evaluated (to measure their zeros) only up to this size in total.
EVALUATE_LIMIT_BYTES = 512 * 1024 * 1024


def _domain(node: ir.Node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def is_parameter_dtype(dtype: ir.DataType | None, consumers: tuple[ir.Node, ...] = ()) -> bool:
    """The dtype half of the parameter rule (see module docstring)."""
    if dtype is None:
        return False
    if dtype in _PARAM_DTYPES:
        return True
    if dtype == ir.DataType.INT32:
        return any(node.op_type in _INT32_PARAM_CONSUMERS for node in consumers)
    return False


@dataclass(frozen=True)
class WeightRef:
    """A parameter: the constant value a layer reads, and how it is stored.

    ``source`` is ``"initializer"``, ``"constant"`` (a ``Constant`` node) or
    ``"computed"`` (made by constant ops, e.g. ConstantOfShape or a decode
    subgraph).  ``numel`` is the logical element count.
    """

    name: str
    value: ir.Value
    source: str
    shape: tuple[int, ...]
    dtype: ir.DataType
    numel: int
    graph: ir.Graph = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    @property
    def nbytes(self) -> int:
        """Bytes of the values in memory (sub-byte types packed)."""
        return (self.numel * self.dtype.bitwidth + 7) // 8

    def numpy(self) -> np.ndarray | None:
        """The values (``None`` for computed values that are not evaluated here)."""
        tensor = ir.convenience.get_const_tensor(self.value)
        return None if tensor is None else tensor.numpy()


def _is_constant_node(node: ir.Node, const: set[int]) -> bool:
    if node.op_type == "Constant" and _domain(node) == "":
        return True
    if _domain(node) != "" or node.op_type in _NONDETERMINISTIC:
        return False
    if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
        return False
    present = [v for v in node.inputs if v is not None]
    return bool(present) and all(id(v) in const for v in present)


def _mark_constants(graph: ir.Graph, const: set[int]) -> None:
    for value in graph.initializers.values():
        const.add(id(value))
    for value in graph.inputs:  # IR < 4: weights are inputs with an initializer
        if value.const_value is not None:
            const.add(id(value))
    for node in graph:  # nodes are topologically sorted
        if _is_constant_node(node, const):
            const.update(id(v) for v in node.outputs)
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                _mark_constants(attr.as_graph(), const)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.as_graphs():
                    _mark_constants(sub, const)


def _all_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    yield graph
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _all_graphs(attr.as_graph())
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.as_graphs():
                    yield from _all_graphs(sub)


def _is_run_time_scale(value: ir.Value | None) -> bool:
    """The scale a ``DynamicQuantizeLinear`` computes for an activation (its second output)."""
    producer = value.producer() if value is not None else None
    return (value is not None and producer is not None and producer.op_type == "DynamicQuantizeLinear"
            and value.index() == 1)


def _metadata_inputs(node: ir.Node) -> frozenset[int]:
    """Input positions of ``node`` that hold quantization metadata, by op and by structure.

    Dynamic quantization multiplies the weight scale with the activation's
    run-time scale (``Mul(DynamicQuantizeLinear[1], w_scale)``) to rescale an
    integer result: that constant is metadata too, per-channel or not.
    """
    skip = _METADATA_INPUTS.get((_domain(node), node.op_type), frozenset())
    if node.op_type == "Mul" and len(node.inputs) == 2 and any(_is_run_time_scale(v) for v in node.inputs):
        skip = skip | {i for i, v in enumerate(node.inputs) if not _is_run_time_scale(v)}
    return skip


def _frontier(model: ir.Model, const: set[int]) -> dict[int, tuple[ir.Value, ir.Graph]]:
    """Constant values read by non-constant nodes (or returned), in graph order."""
    found: dict[int, tuple[ir.Value, ir.Graph]] = {}
    for graph in _all_graphs(model.graph):
        for node in graph:
            if _is_constant_node(node, const):
                continue
            skip = _metadata_inputs(node)
            for index, value in enumerate(node.inputs):
                if value is not None and index not in skip and id(value) in const:
                    found.setdefault(id(value), (value, graph))
        for value in graph.outputs:
            if id(value) in const:
                found.setdefault(id(value), (value, graph))
    return found


def _source(value: ir.Value) -> str:
    if value.const_value is not None:
        return "initializer"
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        return "constant"
    return "computed"


def _logical_numel(value: ir.Value, numel: int) -> int:
    for node in value.consumers():
        if node.op_type == "MatMulNBits" and len(node.inputs) > 1 and node.inputs[1] is value:
            n, k = node.attributes.get_int("N", 0), node.attributes.get_int("K", 0)
            if n and k:
                return n * k
    return numel


def iter_weights(
    model: ir.Model, value_shapes: Mapping[str, tuple[int | None, ...]] | None = None
) -> Iterator[WeightRef]:
    """Every parameter of the model (main graph and subgraphs), once each.

    ``value_shapes`` (from :func:`~onnxsparse.analysis.infer_shapes`) gives the
    shapes of computed parameters; it is inferred here when needed and missing.
    """
    const: set[int] = set()
    _mark_constants(model.graph, const)
    shapes = value_shapes
    for value, graph in _frontier(model, const).values():
        source = _source(value)
        tensor = ir.convenience.get_const_tensor(value) if source != "computed" else None
        if tensor is not None:
            dtype = tensor.dtype
            shape: tuple[int, ...] | None = tuple(int(d) for d in tensor.shape.numpy())
        else:
            dtype = value.dtype  # type: ignore[assignment]
            shape = None
            if value.shape is not None and value.shape.is_static():
                shape = tuple(int(d) for d in value.shape.numpy())
            if shape is None or dtype is None:
                if shapes is None:
                    from .shapes import infer_shapes

                    shapes = infer_shapes(model)
                known = shapes.get(value.name or "")
                if known is not None and None not in known:
                    shape = tuple(int(d) for d in known)  # type: ignore[arg-type]
                if dtype is None:
                    dtype = _infer_dtype(value)
        if dtype is None or not is_parameter_dtype(dtype, tuple(value.consumers())):
            continue
        if shape is None:
            logger.warning("parameter %r has an unknown shape; not counted", value.name)
            continue
        if not shape:
            continue  # rank-0 scalars are op constants (Clip bounds, GELU's sqrt(2)), not weights
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        yield WeightRef(value.name or "", value, source, shape, dtype, _logical_numel(value, numel), graph)


def _infer_dtype(value: ir.Value) -> ir.DataType | None:
    """Element type of a computed value whose type was not recorded."""
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "ConstantOfShape":
        attr = node.attributes.get("value")
        return attr.as_tensor().dtype if attr is not None else ir.DataType.FLOAT
    if node.op_type == "Cast":
        return ir.DataType(node.attributes.get_int("to", 1))
    if node.op_type == "DequantizeLinear":
        attr = node.attributes.get("output_dtype")
        if attr is not None and attr.as_int():
            return ir.DataType(attr.as_int())
        scale = node.inputs[1] if len(node.inputs) > 1 else None
        return scale.dtype if scale is not None and scale.dtype is not None else ir.DataType.FLOAT
    for inp in node.inputs:  # shape-preserving ops keep the type of their data input
        if inp is not None:
            return inp.dtype or (_infer_dtype(inp) if inp.producer() is not None else None)
    return None


def count_params(model: ir.Model) -> int:
    """Number of parameter elements (see the module docstring for the rule)."""
    return sum(ref.numel for ref in iter_weights(model))


def weight_bytes(model: ir.Model) -> int:
    """Bytes of the tensors the model stores: used initializers and ``Constant`` tensors."""
    total = 0
    for graph in _all_graphs(model.graph):
        for value in graph.initializers.values():
            if value.const_value is not None and (value.uses() or value.is_graph_output()):
                total += value.const_value.nbytes
        for node in graph:
            if node.op_type == "Constant" and _domain(node) == "" and node.outputs:
                try:
                    tensor = ir.convenience.get_const_tensor(node.outputs[0])
                except ValueError:
                    tensor = None
                if tensor is not None and tensor.dtype != ir.DataType.STRING:
                    total += tensor.nbytes
    return total


# --------------------------------------------------------------------------- evaluation


def _evaluate(model: ir.Model, refs: list[WeightRef]) -> dict[int, np.ndarray]:
    """Values of computed main-graph parameters, via one onnxruntime run of their subgraph."""
    targets = [r for r in refs if r.source == "computed" and r.graph is model.graph]
    if not targets or sum(r.nbytes for r in targets) > EVALUATE_LIMIT_BYTES:
        return {}
    nodes: dict[int, ir.Node] = {}
    tensors: dict[int, ir.Value] = {}
    stack = [r.value for r in targets]
    while stack:
        value = stack.pop()
        if value.const_value is not None:
            tensors[id(value)] = value
            continue
        node = value.producer()
        if node is None or id(node) in nodes:
            continue
        nodes[id(node)] = node
        stack.extend(v for v in node.inputs if v is not None)
    if sum(v.const_value.nbytes for v in tensors.values() if v.const_value is not None) > EVALUATE_LIMIT_BYTES:
        return {}
    order = {id(n): i for i, n in enumerate(model.graph)}
    try:
        graph = onnx.GraphProto(name="evaluate_parameters")
        for value in tensors.values():
            array = value.const_value.numpy()  # type: ignore[union-attr]
            tensor = ir.serde.serialize_tensor(ir.Tensor(array, name=value.name))
            graph.initializer.append(tensor)
        for node in sorted(nodes.values(), key=lambda n: order.get(id(n), 0)):
            graph.node.append(ir.serde.serialize_node(node))
        for ref in targets:
            graph.output.append(onnx.helper.make_tensor_value_info(ref.name, ref.dtype.value, None))
        proto = onnx.helper.make_model(
            graph,
            opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()],
        )
        from .._ort import make_session, session_options
        from ..io import max_runtime_ir_version

        proto.ir_version = min(model.ir_version, max_runtime_ir_version())
        session = make_session(proto, session_options(optimize=False))
        values = session.run(None, {})
    except Exception as exc:  # noqa: BLE001 - zeros of computed weights are best effort
        logger.warning("could not evaluate computed parameters (%s); their zeros are not measured", exc)
        return {}
    return {id(ref.value): np.asarray(v) for ref, v in zip(targets, values)}


# --------------------------------------------------------------------------- sparsity


def reduction_axis(value: ir.Value, rank: int) -> int | None:
    """Axis a weight is summed over by its first consumer that tells (``None``: unknown)."""
    if rank < 2:
        return None
    for node in value.consumers():
        op = node.op_type
        index = next((i for i, v in enumerate(node.inputs) if v is value), None)
        if op in ("Conv", "ConvInteger", "ConvTranspose") and index == 1:
            return 0 if op == "ConvTranspose" else 1
        if op == "QLinearConv" and index == 3:
            return 1
        if op == "Gemm":
            attrs = node.attributes
            if index == 1:
                return 1 if attrs.get_int("transB", 0) else 0
            if index == 0:
                return 0 if attrs.get_int("transA", 0) else 1
        if op in ("MatMul", "MatMulInteger", "FusedMatMul"):
            if index == 1:
                return rank - 2
            if index == 0:
                return rank - 1
        if op == "QLinearMatMul":
            if index == 3:
                return rank - 2
            if index == 0:
                return rank - 1
        if op in ("DequantizeLinear", "Identity", "Cast") and index == 0:
            out = node.outputs[0]
            if out is not None:
                return reduction_axis(out, rank)
    return None


def nm_pattern(array: np.ndarray, axis: int) -> str | None:
    """``"N:M"`` if every group of M along ``axis`` has at most N nonzeros (N <= M/2)."""
    if array.ndim == 0 or array.size == 0:
        return None
    moved = np.moveaxis(array != 0, axis, -1)
    length = moved.shape[-1]
    if not moved.any():
        return None
    for m in NM_GROUP_SIZES:
        if length < m or length % m:
            continue
        per_group = moved.reshape(-1, m).sum(axis=1)
        n = int(per_group.max())
        if n <= m // 2:
            return f"{n}:{m}"
    return None


@dataclass(frozen=True)
class WeightStats:
    """One row of the per-weight table; ``zeros`` is ``None`` when not measured."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    source: str
    params: int
    bytes: int
    zeros: int | None
    sparsity: float | None
    nm_pattern: str | None
    nm_axis: int | None


def weight_stats(ref: WeightRef, array: np.ndarray | None = None, *, measure: bool = True) -> WeightStats:
    """Zero count, sparsity and N:M structure of one weight (reads its values)."""
    zeros: int | None = None
    pattern, pattern_axis = None, None
    if measure:
        if array is None:
            array = ref.numpy()
        if array is not None and array.size == ref.numel:
            zeros = int(array.size - np.count_nonzero(array))
            if zeros and array.ndim >= 2:
                axis = reduction_axis(ref.value, array.ndim)
                for candidate in dict.fromkeys(a for a in (axis, array.ndim - 1) if a is not None):
                    pattern = nm_pattern(array, candidate)
                    if pattern:
                        pattern_axis = candidate
                        break
    return WeightStats(
        name=ref.name,
        shape=ref.shape,
        dtype=ref.dtype.name.lower(),
        source=ref.source,
        params=ref.numel,
        bytes=ref.nbytes,
        zeros=zeros,
        sparsity=None if zeros is None else (zeros / ref.numel if ref.numel else 0.0),
        nm_pattern=pattern,
        nm_axis=pattern_axis,
    )


def all_weight_stats(model: ir.Model, refs: list[WeightRef], *, measure: bool = True) -> list[WeightStats]:
    """:func:`weight_stats` for every ref; computed weights are evaluated together once."""
    computed = _evaluate(model, refs) if measure else {}
    return [weight_stats(ref, computed.get(id(ref.value)), measure=measure) for ref in refs]
