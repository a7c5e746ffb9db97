"""Fill in value shapes the matchers need but onnx shape inference leaves unknown.

onnx's inference does not know ``com.microsoft`` ops (everything after a fused
``Attention`` is rank-unknown) and gives up on some run-time shape arithmetic
(tf2onnx's ``Concat(Slice(Shape(x)), [H, D])``).  We state the output shapes of
the fused attention ops ourselves, re-run onnx inference, and as a last resort
ask onnxruntime's symbolic shape inference (which knows contrib ops, and follows
the ``Shape``-computed Reshape targets and masks of TorchScript exports).  Only
missing shapes and dims onnx could not name are filled; nothing already inferred
is changed.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common

from ._graph import attr_int, attr_ints

__all__ = ["complete_shapes"]

logger = logging.getLogger(__name__)

_MS_SAME_SHAPE = {"Gelu", "FastGelu", "QuickGelu", "BiasGelu", "SkipLayerNormalization",
                  "SimplifiedLayerNormalization"}


def _unknown_dim(d: object) -> bool:
    """A dim nobody knows: anonymous, or a name onnx's inference made up (``unk__3``)."""
    if isinstance(d, int):
        return d < 0
    name = getattr(d, "value", d)
    return not name or (isinstance(name, str) and name.startswith("unk__"))


def _missing(model: ir.Model) -> list[ir.Value]:
    """Outputs with no shape, 1-D shape tensors whose length is unknown, and values with dims onnx's
    inference could not name (a run-time mask's ``[batch, 1, seq, seq]``, a TorchScript head split's
    ``[batch, 4, seq, 16]`` behind ``Shape -> Gather -> Concat`` targets)."""
    out = []
    for n in model.graph:
        for o in n.outputs:
            if not o.name:
                continue
            if o.shape is None or (len(o.shape) == 1 and not isinstance(o.shape[0], int)
                                   and n.op_type in ("Shape", "Slice", "Concat", "Gather", "Unsqueeze")):
                out.append(o)
            elif o.const_value is None and not o.is_graph_output() and any(_unknown_dim(d) for d in o.shape.dims):
                out.append(o)
    return out


def _dims(value: ir.Value | None) -> list | None:
    if value is None or value.shape is None:
        return None
    return list(value.shape.dims)


def _annotate_fused(model: ir.Model) -> int:
    count = 0
    for node in model.graph:
        out = node.outputs[0] if node.outputs else None
        if out is None or out.shape is not None or node.domain != "com.microsoft":
            continue
        dims = _dims(node.inputs[0]) if node.inputs else None
        if dims is None:
            continue
        new = None
        if node.op_type in _MS_SAME_SHAPE:
            new = dims
        elif node.op_type == "Attention" and len(dims) == 3 and node.inputs[1] is not None:
            w = _dims(node.inputs[1])
            sizes = attr_ints(node, "qkv_hidden_sizes")
            if w is not None and isinstance(w[1], int):
                new = dims[:2] + [sizes[2] if sizes else w[1] // 3]
        elif node.op_type in ("MultiHeadAttention", "GroupQueryAttention") and len(dims) == 3:
            value = node.inputs[2] if len(node.inputs) > 2 else None
            vd = _dims(value)
            if vd is not None and len(vd) == 3:
                width = vd[2]
                if node.op_type == "GroupQueryAttention" and isinstance(width, int):
                    hq, hkv = attr_int(node, "num_heads"), attr_int(node, "kv_num_heads")
                    width = width // hkv * hq if hq and hkv else None
                new = dims[:2] + [width]
        if new is not None and all(d is not None for d in new):
            out.shape = ir.Shape(new)
            if out.type is None and node.inputs[0] is not None:
                out.type = node.inputs[0].type
            count += 1
    return count


def _onnxruntime_symbolic(model: ir.Model, missing: list[ir.Value]) -> int:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return 0
    try:
        from .._workdir import scratch_dir

        with scratch_dir():  # it writes debug files into the working directory on failure
            inferred = SymbolicShapeInference.infer_shapes(
                ir.to_proto(model), auto_merge=True, guess_output_rank=True
            )
    except Exception as exc:  # noqa: BLE001 - best effort
        logger.debug("symbolic shape inference failed: %s", exc)
        return 0
    if inferred is None:
        return 0
    found = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            found[vi.name] = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in vi.type.tensor_type.shape.dim], vi.type.tensor_type.elem_type)
    count = 0
    for value in missing:
        item = found.get(value.name or "")
        if item is None:
            continue
        dims, elem = item
        if value.shape is not None:
            if len(value.shape) != len(dims):
                continue
            # only dims nobody knew are filled: a number, or the symbolic name onnxruntime tracked
            dims = [d if _unknown_dim(old) and not _unknown_dim(d) else old
                    for old, d in zip(value.shape.dims, dims)]
        if value.shape is None or list(value.shape.dims) != dims:
            value.shape = ir.Shape(dims)
            if value.type is None and elem:
                value.type = ir.TensorType(ir.DataType(elem))
            count += 1
    return count


def complete_shapes(model: ir.Model) -> int:
    """Fill missing output shapes in the main graph; returns how many values got one."""
    if not _missing(model):
        return 0
    count = _annotate_fused(model)
    if count:
        try:
            common.ShapeInferencePass(data_prop=True)(model)
        except Exception as exc:  # noqa: BLE001 - best effort
            logger.debug("shape inference failed: %s", exc)
    missing = _missing(model)
    if missing:
        count += _onnxruntime_symbolic(model, missing)
    return count
