"""What a model is made of: shapes, parameters, MACs per node, existing sparsity.

``model_stats(model, shapes)`` gathers everything ``inspect`` shows; other
commands use ``count_params`` / ``count_macs`` for before/after numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from ..formats import is_decode_node, read_storage
from .macs import MacContext, Macs, NodeMacs, count_macs, macs_table, mac_counters, node_macs, register_macs
from .params import (
    WeightRef,
    WeightStats,
    all_weight_stats,
    count_params,
    iter_weights,
    nm_pattern,
    weight_bytes,
    weight_stats,
)
from .shapes import Shape, infer_shapes, input_dim_bindings

__all__ = [
    "ModelStats",
    "NodeStats",
    "StoredTensorStats",
    "TensorInfo",
    "model_stats",
    "count_params",
    "count_macs",
    "node_macs",
    "infer_shapes",
    "weight_bytes",
    "weight_stats",
    "iter_weights",
    "nm_pattern",
    "register_macs",
    "mac_counters",
    "MacContext",
    "Macs",
    "NodeMacs",
    "WeightRef",
    "WeightStats",
    "Shape",
]


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: declared dims (symbols as strings) and resolved dims."""

    name: str
    dtype: str
    declared: tuple[int | str | None, ...] | None
    shape: Shape | None


@dataclass(frozen=True)
class NodeStats:
    """One row of the per-node table."""

    name: str
    op_type: str
    domain: str
    graph: str
    macs: int | None
    params: int
    output_shapes: tuple[Shape | None, ...]
    counted: bool
    activations_only: bool
    reason: str | None
    attention_macs: int | None = 0


@dataclass(frozen=True)
class StoredTensorStats:
    """A weight kept in one of our sparse formats (decoded by a graph the runtime folds)."""

    name: str
    format: str
    decoder: str
    shape: tuple[int, ...]
    dtype: str
    bytes_dense: int
    bytes_stored: int


@dataclass(frozen=True)
class ModelStats:
    """Everything ``inspect`` reports about a model (JSON via :meth:`to_dict`)."""

    producer: str
    ir_version: int
    opsets: dict[str, int]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    params: int
    macs: int | None
    weight_bytes: int
    nodes: int
    op_histogram: dict[str, int]
    node_rows: tuple[NodeStats, ...]
    weight_rows: tuple[WeightStats, ...]
    zeros: int | None
    dims: dict[str, int] = field(default_factory=dict)
    #: weights stored sparsely by ``onnxsparse sparsify`` and the decode nodes that rebuild them
    stored: tuple[StoredTensorStats, ...] = ()
    decode_nodes: int = 0

    @property
    def sparsity(self) -> float | None:
        """Fraction of parameter elements that are exactly zero (``None``: not measured)."""
        if self.zeros is None:
            return None
        measured = self.measured_params
        return self.zeros / measured if measured else 0.0

    @property
    def measured_params(self) -> int:
        """Parameter elements whose zeros were counted (computed weights past the limit are not)."""
        return sum(w.params for w in self.weight_rows if w.zeros is not None)

    @property
    def attention_macs(self) -> int | None:
        """MACs of products between two activations (attention ``Q K^T`` / ``P V``)."""
        if any(r.counted and r.attention_macs is None for r in self.node_rows):
            return None
        return sum(r.attention_macs or 0 for r in self.node_rows)

    @property
    def nm_patterns(self) -> dict[str, int]:
        """N:M pattern -> number of weights that follow it."""
        return dict(Counter(w.nm_pattern for w in self.weight_rows if w.nm_pattern))

    @property
    def unknown_macs(self) -> tuple[NodeStats, ...]:
        return tuple(r for r in self.node_rows if r.counted and r.macs is None)

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON layout (documented in docs/inspect.md)."""
        sparse_weights = [w for w in self.weight_rows if w.zeros]
        return {
            "producer": self.producer,
            "ir_version": self.ir_version,
            "opsets": dict(self.opsets),
            "inputs": [_tensor_dict(t) for t in self.inputs],
            "outputs": [_tensor_dict(t) for t in self.outputs],
            "dims": dict(self.dims),
            "params": self.params,
            "macs": self.macs,
            "attention_macs": self.attention_macs,
            "weight_bytes": self.weight_bytes,
            "nodes": self.nodes,
            "op_histogram": dict(self.op_histogram),
            "sparsity": {
                "zeros": self.zeros,
                "zero_fraction": self.sparsity,
                "measured_params": self.measured_params if self.zeros is not None else 0,
                "weights_with_zeros": len(sparse_weights),
                "unmeasured_weights": [w.name for w in self.weight_rows if w.zeros is None],
                "nm_patterns": self.nm_patterns,
            },
            "storage": {
                "decode_nodes": self.decode_nodes,
                "bytes_dense": sum(t.bytes_dense for t in self.stored),
                "bytes_stored": sum(t.bytes_stored for t in self.stored),
                "tensors": [
                    {"name": t.name, "format": t.format, "decoder": t.decoder, "shape": list(t.shape),
                     "dtype": t.dtype, "bytes_dense": t.bytes_dense, "bytes_stored": t.bytes_stored}
                    for t in self.stored
                ],
            },
            "unknown_macs": [
                {"name": r.name, "op_type": r.op_type, "reason": r.reason} for r in self.unknown_macs
            ],
            "per_node": [
                {
                    "name": r.name,
                    "op_type": r.op_type,
                    "domain": r.domain,
                    "graph": r.graph,
                    "macs": r.macs,
                    "params": r.params,
                    "output_shapes": [list(s) if s is not None else None for s in r.output_shapes],
                    "attention_macs": r.attention_macs,
                }
                for r in self.node_rows
            ],
            "per_weight": [
                {
                    "name": w.name,
                    "shape": list(w.shape),
                    "dtype": w.dtype,
                    "source": w.source,
                    "params": w.params,
                    "bytes": w.bytes,
                    "zeros": w.zeros,
                    "sparsity": w.sparsity,
                    "nm_pattern": w.nm_pattern,
                    "nm_axis": w.nm_axis,
                }
                for w in self.weight_rows
            ],
        }


def _tensor_dict(t: TensorInfo) -> dict[str, Any]:
    return {
        "name": t.name,
        "dtype": t.dtype,
        "declared_shape": list(t.declared) if t.declared is not None else None,
        "shape": list(t.shape) if t.shape is not None else None,
    }


def _declared(value: ir.Value) -> tuple[int | str | None, ...] | None:
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else d.value for d in value.shape)


def _tensor_info(value: ir.Value, shapes: Mapping[str, Shape]) -> TensorInfo:
    dtype = value.dtype.name.lower() if value.dtype is not None else "?"
    return TensorInfo(value.name or "", dtype, _declared(value), shapes.get(value.name or ""))


def _op_key(node: ir.Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def model_stats(
    model: ir.Model,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
    sparsity: bool = True,
) -> ModelStats:
    """Params, MACs, bytes, op histogram, per-node and per-weight rows of ``model``.

    ``shapes`` fixes input shapes (``{"input": (1, 3, 224, 224)}``), ``dims``
    fixes symbolic dims by name (``{"batch": 1}``).  ``sparsity=False`` skips
    reading weight values (zeros and N:M are then ``None``/absent).
    The model is not modified.
    """
    bindings = {**dict(dims or {}), **input_dim_bindings(model, shapes)}
    value_shapes = infer_shapes(model, shapes, dims=dims)
    rows, total = macs_table(model, value_shapes)

    refs = list(iter_weights(model, value_shapes))
    numel_by_value = {id(ref.value): ref.numel for ref in refs}
    nodes = list(_walk(model.graph))
    assert len(nodes) == len(rows)
    decoding = {id(node) for node in nodes if is_decode_node(node)}
    node_rows = []
    for node, row in zip(nodes, rows):
        if id(node) in decoding:  # part of a stored weight, reported under storage
            continue
        params = sum(numel_by_value.get(id(v), 0) for v in node.inputs if v is not None)
        outs = tuple(value_shapes.get(v.name or "") if v is not None else None for v in node.outputs)
        node_rows.append(
            NodeStats(
                row.name, row.op_type, row.domain, row.graph, row.macs, params, outs,
                row.counted, row.activations_only, row.reason, row.attention_macs,
            )
        )
    weight_rows = tuple(all_weight_stats(model, refs, measure=sparsity))
    histogram = Counter(_op_key(node) for node in nodes if id(node) not in decoding)
    return ModelStats(
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        ir_version=int(model.ir_version),
        opsets={(k or "ai.onnx"): int(v) for k, v in model.opset_imports.items()},
        inputs=tuple(_tensor_info(v, value_shapes) for v in model.graph.inputs if not v.is_initializer()),
        outputs=tuple(_tensor_info(v, value_shapes) for v in model.graph.outputs),
        params=sum(ref.numel for ref in refs),
        macs=total,
        weight_bytes=weight_bytes(model),
        nodes=len(nodes) - len(decoding),
        op_histogram=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        node_rows=tuple(node_rows),
        weight_rows=weight_rows,
        zeros=sum(w.zeros for w in weight_rows if w.zeros is not None) if sparsity else None,
        dims=bindings,
        stored=_stored_tensors(model),
        decode_nodes=len(decoding),
    )


def _stored_tensors(model: ir.Model) -> tuple[StoredTensorStats, ...]:
    rows = []
    for name, spec in read_storage(model).items():
        payload = [model.graph.initializers.get(init) for init in spec.inputs.values()]
        stored = sum(v.const_value.nbytes for v in payload if v is not None and v.const_value is not None)
        dense = int(np.prod(spec.shape, dtype=np.int64)) * spec.numpy_dtype.itemsize
        rows.append(StoredTensorStats(name, spec.format, spec.decoder, tuple(spec.shape), spec.dtype, dense, stored))
    return tuple(sorted(rows, key=lambda r: r.name))


def _walk(graph: ir.Graph):
    for node in graph:
        yield node
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _walk(attr.as_graph())
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.as_graphs():
                    yield from _walk(sub)
