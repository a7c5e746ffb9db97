"""Bring every model into the shape later passes rely on.

Exports keep weights in many places: initializers, ``Constant`` nodes (Paddle,
tf2onnx), ``ConstantOfShape`` and other foldable subgraphs, and (IR < 4) as
graph inputs too.  After this pass every weight is an initializer, foldable
subgraphs are folded, and shapes are inferred.  Outputs are unchanged.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnx_ir.passes import PassResult
from onnxscript.optimizer import fold_constants

from ..limits import check_constant_of_shape

__all__ = ["NormalizePass", "normalize"]

logger = logging.getLogger(__name__)

#: Fold subgraphs of any size: weights made by ConstantOfShape can be large.
_NO_LIMIT = 1 << 62


class NormalizePass(ir.passes.InPlacePass):
    """Lift constants to initializers, fold constant subgraphs, infer shapes."""

    def __init__(self, *, fold: bool = True, infer_shapes: bool = True) -> None:
        super().__init__()
        self.fold = fold
        self.infer_shapes = infer_shapes

    def call(self, model: ir.Model) -> PassResult:
        # IR < 4 exports list every initializer as an input too; those are weights.
        modified = common.RemoveInitializersFromInputsPass()(model).modified
        if model.ir_version < 4:  # IR 4 is the first that allows initializers that are not inputs
            model.ir_version = 4
            modified = True
        before = _signature(model)
        if self.fold:
            result = fold_constants(
                model,
                input_size_limit=_NO_LIMIT,
                output_size_limit=_NO_LIMIT,
                should_fold=_fold_weight_generators,
            )
            modified |= bool(getattr(result, "modified", False))
        for step in (
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common.LiftSubgraphInitializersToMainGraphPass(),
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedOpsetsPass(),
        ):
            modified |= step(model).modified
        if self.infer_shapes:
            try:
                modified |= _infer_shapes(model)
            except Exception as exc:  # noqa: BLE001 - inference is best effort
                logger.warning("shape inference failed: %s", exc)
        after = _signature(model)
        if before != after:  # pragma: no cover - guarded invariant
            raise AssertionError(f"normalisation changed the model signature: {before} -> {after}")
        return PassResult(model, modified=modified)


#: ``ai.onnx.ml`` ops that keep their input's shape (onnx infers only their type): skl2onnx pipelines
_SHAPE_PRESERVING_ML = {"Scaler": onnx.TensorProto.FLOAT, "Normalizer": onnx.TensorProto.FLOAT,
                        "Binarizer": None, "Imputer": None}


def _shape_preserving_ml_outputs(proto: onnx.ModelProto) -> int:
    """Give shape-preserving ML ops' outputs their input's shape (symbolic dims kept); returns how many."""
    graph = proto.graph
    infos = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    added = 0
    for node in graph.node:
        if node.domain != "ai.onnx.ml" or node.op_type not in _SHAPE_PRESERVING_ML or not node.input:
            continue
        src = infos.get(node.input[0])
        if src is None or not src.type.tensor_type.HasField("shape"):
            continue
        out = infos.get(node.output[0])
        if out is not None and out.type.tensor_type.HasField("shape"):
            continue
        info = onnx.ValueInfoProto()
        info.name = node.output[0]
        info.type.CopyFrom(src.type)
        elem = _SHAPE_PRESERVING_ML[node.op_type]
        if elem is not None:
            info.type.tensor_type.elem_type = elem
        if out is not None:
            out.type.CopyFrom(info.type)
        else:
            graph.value_info.append(info)
            infos[info.name] = graph.value_info[-1]
        added += 1
    return added


def _forget_removed_inputs(graph: ir.Graph) -> None:
    """Drop the zero counts ``call_onnx_api`` leaves in ``graph.inputs``' reference counter.

    It lists every initializer as a graph input for the call and removes it after; onnx_ir 1.1
    keeps each removed value as a zero-count key, so every weight (even one replaced later, e.g. by
    a sparse encoding) stayed alive as long as the model (issue 16: peak memory).
    """
    counter = getattr(graph.inputs, "_ref_counter", None)  # private: no public way to prune it
    if counter is not None:
        for value in [v for v, count in counter.items() if count <= 0]:
            del counter[value]


def _infer_shapes(model: ir.Model) -> bool:
    """onnx shape inference (with data propagation) merged into ``model``'s values.

    Like ``onnx_ir``'s ``ShapeInferencePass``, except that types onnx_ir cannot
    represent (maps: skl2onnx's ZipMap output) are left off instead of failing.
    """
    from onnx_ir.passes.common import _c_api_utils

    from ..io import strip_unsupported_types

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        for _ in range(8):  # each round may reveal the input of the next shape-preserving ML op
            if not _shape_preserving_ml_outputs(inferred):
                break
            inferred = onnx.shape_inference.infer_shapes(inferred, check_type=True, strict_mode=True, data_prop=True)
        strip_unsupported_types(inferred)
        return inferred

    inferred = ir.serde.deserialize_model(_c_api_utils.call_onnx_api(infer, model))
    _forget_removed_inputs(model.graph)
    modified = False
    for graph, new_graph in zip(model.graphs(), inferred.graphs()):
        known = ir.convenience.create_value_mapping(new_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            other = known.get(name)
            if other is None:
                continue
            if other.shape is not None and value.shape != other.shape:
                value.shape = other.shape
                modified = True
            if other.dtype is not None and value.dtype != other.dtype:
                value.dtype = other.dtype
                modified = True
    return modified


#: Broadcasting ops whose folded output can be much larger than what they read.
_GROWING = frozenset({"Expand", "Tile"})

#: Ops that hold a model's quantization: folding them would turn int8 weights back into float ones.
_QUANTIZATION = frozenset({"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"})

#: A folded output up to this many elements is always fine (shape tensors, small tables).
_SMALL = 4096


def _fold_weight_generators(node: ir.Node) -> bool | None:
    """Fold ``ConstantOfShape`` (onnxscript keeps it by default): it makes weights.

    Never fold quantization ops.  Do not fold an ``Expand``/``Tile`` of a constant into a bigger constant
    (a class token or position table broadcast over a fixed batch): that only
    makes the file and the parameter count larger than the input's.
    """
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "ConstantOfShape":
        return check_constant_of_shape(node)
    if node.op_type in _QUANTIZATION:
        return False  # a quantized weight stays quantized (onnxscript 0.5 folds DequantizeLinear of constants)
    if node.op_type in _GROWING:
        read = sum(v.const_value.size for v in node.inputs if v is not None and v.const_value is not None)
        written = _static_size(node.outputs[0]) or _broadcast_size(node)
        if written is not None and written > max(read, _SMALL):
            return False
    return None


def _broadcast_size(node: ir.Node) -> int | None:
    """Output elements of an ``Expand``/``Tile`` whose inputs are constants."""
    import numpy as np

    data, arg = (*node.inputs, None, None)[:2]
    if data is None or arg is None or data.const_value is None or arg.const_value is None:
        return None
    shape = tuple(data.const_value.shape.numpy())  # a tensor's shape is always concrete
    other = [int(d) for d in arg.const_value.numpy().reshape(-1)]
    try:
        if node.op_type == "Expand":
            return int(np.prod(np.broadcast_shapes(shape, tuple(other))))
        return int(np.prod([d * r for d, r in zip(shape, other)]))
    except ValueError:
        return None


def _static_size(value: ir.Value) -> int | None:
    shape = value.shape
    if shape is None or not shape.is_static():
        return None
    size = 1
    for d in shape.numpy():
        size *= d
    return size


def _signature(model: ir.Model) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (
        tuple(v.name or "" for v in model.graph.inputs),
        tuple(v.name or "" for v in model.graph.outputs),
    )


def normalize(model: ir.Model, *, fold: bool = True, infer_shapes: bool = True) -> ir.Model:
    """Normalise ``model`` in place and return it."""
    NormalizePass(fold=fold, infer_shapes=infer_shapes)(model)
    return model
