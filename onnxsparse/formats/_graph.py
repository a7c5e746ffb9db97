"""Emit decode subgraphs into an ``onnx_ir`` graph, marked so densify and the loader find them.

Markers (short, because they are repeated in every node and input):

* every decode node and its output value are named ``onnxsparse:<id>:<i>``
  where ``<id>`` is 8 hex digits of the SHA-1 of the tensor name;
* the last node (the ``Reshape`` whose output carries the tensor's original
  name) has the node metadata ``onnxsparse.decode = <tensor name>``;
* payload initializers are named ``<tensor>/onnxsparse/<role>``; small shared
  constants (scalars, lookup tables) ``onnxsparse:c:<digest>``, reused across tensors.

No decode node reads only constants: when one would, one of its constant inputs is
read through a *guard*, ``Tile(x, ConstantOfShape([rank], 1))`` (a copy) or, for an
integer scalar, ``Add(x, ConstantOfShape([], 0))``.  onnxscript's constant folder never
folds ``ConstantOfShape`` ("preserved by default", 0.5 and later), so every decode node
has a non-constant input and ``onnxscript.optimizer.optimize`` folds none of them back
into dense weights (or full-size fill buffers); onnxruntime still folds everything at
session creation.  The guard is a copy, not a ``Reshape``: onnxscript rewrites a
``Reshape`` whose output shape it knows to a constant shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from .base import contiguous, index_dtype

__all__ = [
    "DecodeBuilder",
    "NODE_PREFIX",
    "NODE_META_KEY",
    "CONST_PREFIX",
    "payload_name",
    "is_decode_node",
    "decode_target",
]

NODE_PREFIX = "onnxsparse:"
NODE_META_KEY = "onnxsparse.decode"
CONST_PREFIX = "onnxsparse:c:"


def tensor_id(target: str) -> str:
    """8 hex digits identifying a stored tensor in node names."""
    return hashlib.sha1(target.encode("utf-8")).hexdigest()[:8]


def payload_name(target: str, role: str) -> str:
    return f"{target}/onnxsparse/{role}"


def is_decode_node(node: ir.Node) -> bool:
    name = node.name or ""
    return NODE_META_KEY in node.metadata_props or (name.startswith(NODE_PREFIX) and not name.startswith(CONST_PREFIX))


def decode_group(node: ir.Node) -> str | None:
    """Key shared by the nodes of one decode subgraph (the tensor id in the name, else the metadata)."""
    name = node.name or ""
    if name.startswith(NODE_PREFIX):
        parts = name.split(":")
        if len(parts) >= 3:
            return parts[1]
    target = node.metadata_props.get(NODE_META_KEY)
    return tensor_id(target) if target else None


def decode_target(node: ir.Node) -> str | None:
    """The tensor name recorded on the last node of a decode subgraph."""
    return node.metadata_props.get(NODE_META_KEY)


def _dtype(value: npt.DTypeLike | ir.DataType) -> ir.DataType:
    return value if isinstance(value, ir.DataType) else ir.DataType.from_numpy(np.dtype(value))


class DecodeBuilder:
    """Collects the nodes and initializers of one tensor's decode subgraph."""

    def __init__(self, graph: ir.Graph, target: str, shape: Sequence[int], fill: np.ndarray) -> None:
        self.graph = graph
        self.target = target
        self.shape = tuple(int(d) for d in shape)
        self.n = int(np.prod(self.shape, dtype=np.int64))
        self.fill_value = np.asarray(fill)
        self.index_dtype = index_dtype(self.n + 1)
        self.tid = tensor_id(target)
        self.nodes: list[ir.Node] = []
        self._count = 0
        self._guarded: dict[int, ir.Value] = {}
        self._ones: dict[int, ir.Value] = {}
        self.payload: dict[str, ir.Value] = {}
        self.consts: dict[str, ir.Value] = {}
        self._new_consts: list[ir.Value] = []

    # ----------------------------------------------------------------- values
    def stored(self, role: str, array: np.ndarray) -> ir.Value:
        """A payload initializer (one per role per tensor)."""
        name = payload_name(self.target, role)
        suffix = 0
        while name in self.graph.initializers:
            suffix += 1
            name = payload_name(self.target, f"{role}.{suffix}")
        value = ir.Value(name=name, const_value=ir.Tensor(contiguous(array), name=name))
        value.shape = ir.Shape(array.shape)
        value.dtype = _dtype(array.dtype)
        self.payload[role] = value
        return value

    def const(self, array: Any, dtype: np.dtype | type | None = None) -> ir.Value:
        """A small shared constant initializer (deduplicated by content across the model)."""
        arr = contiguous(np.asarray(array, dtype=dtype))
        digest = hashlib.sha1(arr.tobytes() + f"{arr.dtype.name}{arr.shape}".encode()).hexdigest()[:10]
        name = f"{CONST_PREFIX}{digest}"
        if name in self.consts:
            return self.consts[name]
        existing = self.graph.initializers.get(name)
        if existing is None:
            existing = ir.Value(name=name, const_value=ir.Tensor(arr, name=name))
            existing.shape = ir.Shape(arr.shape)
            existing.dtype = _dtype(arr.dtype)
            self._new_consts.append(existing)
        self.consts[name] = existing
        return existing

    def index_const(self, value: int | Sequence[int]) -> ir.Value:
        return self.const(value, self.index_dtype)

    def shape_const(self, dims: Sequence[int]) -> ir.Value:
        return self.const(np.asarray(list(dims), dtype=np.int64).reshape(len(dims)))

    # ------------------------------------------------------------------ nodes
    def op(self, op_type: str, *inputs: ir.Value | None, **attributes: Any) -> ir.Value:
        if op_type != "ConstantOfShape" and all(v is None or v.producer() is None for v in inputs):
            inputs = self._guard_one(inputs)
        return self._node(op_type, *inputs, **attributes)

    def _node(self, op_type: str, *inputs: ir.Value | None, **attributes: Any) -> ir.Value:
        label = f"{NODE_PREFIX}{self.tid}:{self._count}"
        self._count += 1
        node = ir.node(op_type, inputs=list(inputs), attributes=attributes or None, name=label)
        node.outputs[0].name = label
        self.nodes.append(node)
        return node.outputs[0]

    # ---------------------------------------------------------------- guards
    def _guard_one(self, inputs: Sequence[ir.Value | None]) -> tuple[ir.Value | None, ...]:
        """``inputs`` with one constant routed through a guard (the data input if it can be)."""
        out = list(inputs)
        for index, value in enumerate(inputs):
            if value is None:
                continue
            guarded = self._guarded.get(id(value)) or self._guard(value)
            if guarded is not None:
                self._guarded[id(value)] = guarded
                out[index] = guarded
                return tuple(out)
        raise AssertionError(f"no input of a decode node of {self.target!r} can be guarded")  # pragma: no cover

    def _guard(self, value: ir.Value) -> ir.Value | None:
        """A bit-exact copy of constant ``value`` that onnxscript cannot fold, or None."""
        rank = len(value.shape) if value.shape is not None else None
        dtype = value.dtype
        if rank is None or dtype is None:
            return None
        if rank == 0:
            if not dtype.is_integer():
                return None
            zero = self._node("ConstantOfShape", self.const(np.zeros(0, np.int64)),
                              value=ir.tensor(np.zeros(1, dtype.numpy())))
            return self._node("Add", value, zero)  # x + 0: exact for integers
        if rank not in self._ones:
            self._ones[rank] = self._node("ConstantOfShape", self.shape_const([rank]),
                                          value=ir.tensor(np.ones(1, np.int64)))
        if dtype == ir.DataType.BFLOAT16:  # onnxruntime has no bfloat16 Tile: tile float32 (exact both ways)
            wide = self._node("Cast", value, to=ir.DataType.FLOAT)
            return self._node("Cast", self._node("Tile", wide, self._ones[rank]), to=ir.DataType.BFLOAT16)
        return self._node("Tile", value, self._ones[rank])  # one repeat per axis: a copy

    # --------------------------------------------------------------- helpers
    @staticmethod
    def ir_dtype(dtype: npt.DTypeLike | ir.DataType) -> ir.DataType:
        return _dtype(dtype)

    def to_index(self, value: ir.Value) -> ir.Value:
        return self.op("Cast", value, to=_dtype(self.index_dtype))

    def fill(self, fill: np.ndarray, count: int, *, shape: Sequence[int] | None = None) -> ir.Value:
        """A tensor of ``count`` (or ``shape``) copies of the fill value."""
        dims = self.shape_const(shape if shape is not None else [count])
        fill = np.asarray(fill)
        if fill.dtype.name == "bfloat16":
            # onnxruntime has no bfloat16 Expand kernel: expand float32 (exact) and cast.
            wide = self.op("Expand", self.const(fill.astype(np.float32).reshape(())), dims)
            return self.op("Cast", wide, to=ir.DataType.BFLOAT16)
        return self.op("Expand", self.const(fill.reshape(())), dims)

    def unpool(self, values: ir.Value, positions: ir.Value, count: int) -> ir.Value:
        """``values`` (``[1, 1, count]``) at the int64 flat ``positions`` of ``n`` zeros, shape ``[1, 1, n]``.

        ``kernel_shape = n - count + 1`` makes MaxUnpool's output length static
        (``(count - 1) + kernel``), which onnxruntime needs before it folds a node.
        """
        return self.op("MaxUnpool", values, positions, kernel_shape=[self.n - count + 1])

    def range(self, count: int) -> ir.Value:
        """``[0, 1, ..., count-1]`` in the index dtype."""
        return self.op("Range", self.index_const(0), self.index_const(count), self.index_const(1))

    def expand_runs(self, ends: ir.Value, runs: int, total: int) -> ir.Value:
        """For each of ``total`` items, the number of run ends <= its position.

        ``ends`` (``runs`` values, index dtype, non-decreasing, <= total) are the
        exclusive ends of consecutive runs; the result maps item ``j`` to the run
        that holds it.  Uses ScatterElements(reduction=add) + CumSum (opset 16):
        no data-dependent shapes, so onnxruntime folds it.
        """
        marks = self.op(
            "ScatterElements",
            self.fill(np.zeros((), self.index_dtype), total + 1),
            ends,
            self.fill(np.ones((), self.index_dtype), runs),
            axis=0,
            reduction="add",
        )
        counts = self.op("CumSum", marks, self.index_const(0))
        return self.op("Slice", counts, self.shape_const([0]), self.shape_const([total]))

    # ------------------------------------------------------------------ apply
    def finish(self, output: ir.Value, shape: Sequence[int]) -> ir.Value:
        """Reshape ``output`` to ``shape``: the last node, marked with the tensor name."""
        final = self.op("Reshape", output, self.shape_const(shape))
        node = final.producer()
        if node is None:  # pragma: no cover - op() returns the output of the node it adds
            raise AssertionError("decode output without its node")
        node.metadata_props[NODE_META_KEY] = self.target
        return final

    def commit(self, output: ir.Value, shape: Sequence[int], like: ir.Value | None = None) -> ir.Value:
        """Finish the subgraph; register initializers and insert the nodes first in the graph."""
        final = self.finish(output, shape)
        if like is not None:
            final.shape = like.shape
            final.type = like.type
        used_payload = [value for value in self.payload.values() if value.uses()]  # none for an all-fill tensor
        for value in used_payload + self._new_consts:
            if value.name not in self.graph.initializers:
                self.graph.register_initializer(value)
        if len(self.graph) > 0:
            self.graph.insert_before(self.graph[0], self.nodes)
        else:
            self.graph.extend(self.nodes)
        return final

    def extra_bytes(self) -> int:
        """Serialized size of the decode nodes and the new small constants (file overhead)."""
        total = 0
        for node in self.nodes:
            total += ir.serde.serialize_node(node).ByteSize()
        for value in self._new_consts:
            tensor = value.const_value
            if tensor is not None:
                total += tensor.nbytes + len(value.name or "") + 16
        for value in self.payload.values():
            total += len(value.name or "") + 16 if value.uses() else 0
        return total

    def payload_bytes(self) -> int:
        """Bytes of the payload arrays the decode graph reads."""
        return sum(value.const_value.nbytes for value in self.payload.values()
                   if value.uses() and value.const_value is not None)
