"""Small onnx_ir helpers shared by the exact attention rewrites.

Shapes and constants are read with :mod:`onnxsparse.graph.value_facts`, run-time shape
targets with :mod:`onnxsparse.graph._runtime_shape`.  :func:`is_const` and the
readers built on it add one rule those lack: an initializer that is also a graph
input can be overridden at run time, so a rewrite that must stay exact never
reads (and bakes in) its value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import onnx_ir as ir

from ..graph.value_facts import constant, constant_ints, dims

__all__ = [
    "attr_int",
    "attr_ints",
    "const_array",
    "const_ints",
    "drop_if_unused",
    "is_const",
    "new_constant",
    "onnx_domain",
    "producer",
    "rank_of",
    "remove_dead",
    "rewrite_matches",
]

_STANDARD = ("", "ai.onnx")

Found = TypeVar("Found")


def onnx_domain(node: ir.Node) -> bool:
    return node.domain in _STANDARD


def is_const(value: ir.Value | None) -> bool:
    """True for initializers that are not overridable graph inputs."""
    return value is not None and value.const_value is not None and not value.is_graph_input()


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """:func:`~onnxsparse.graph.value_facts.constant` of a value that is :func:`is_const` (``None`` otherwise)."""
    return constant(value) if is_const(value) else None


def const_ints(value: ir.Value | None) -> list[int] | None:
    """:func:`~onnxsparse.graph.value_facts.constant_ints` of a value that is :func:`is_const`, as a list."""
    ints = constant_ints(value) if is_const(value) else None
    return None if ints is None else list(ints)


def rank_of(value: ir.Value | None) -> int | None:
    shape = dims(value)
    return None if shape is None else len(shape)


def attr_int(node: ir.Node, name: str, default: int | None = None) -> int | None:
    attr = node.attributes.get(name)
    if attr is None:
        return default
    if attr.is_ref():
        raise ValueError(f"{node.op_type} node {node.name!r}: attribute {name} is a function reference")
    return int(attr.as_int())


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    if attr is None:
        return None
    if attr.is_ref():
        raise ValueError(f"{node.op_type} node {node.name!r}: attribute {name} is a function reference")
    return [int(v) for v in attr.as_ints()]


def new_constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register an initializer holding ``array``, named ``name`` (``name.1``, ``name.2``, .. when taken)."""
    base, k = name, 0
    while name in graph.initializers:
        k += 1
        name = f"{base}.{k}"
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.Tensor(np.ascontiguousarray(array), name=name))
    graph.register_initializer(value)
    return value


def drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove the initializer ``value`` once nothing reads it (and it is no graph output)."""
    if value is None or value.name is None or value.uses() or value.is_graph_output():
        return
    if graph.initializers.get(value.name) is value:
        graph.initializers.pop(value.name)


def producer(value: ir.Value | None, op: str) -> ir.Node | None:
    """The standard-domain ``op`` node producing ``value`` (``None`` for anything else)."""
    node = None if value is None else value.producer()
    if node is None or node.op_type != op or not onnx_domain(node):
        return None
    return node


def rewrite_matches(graph: ir.Graph, match: Callable[[ir.Node], Found | None],
                    rewrite: Callable[[ir.Graph, Found], tuple[str, list[ir.Node]]],
                    dead_ops: tuple[str, ...]) -> list[str]:
    """Try ``match`` on every node still in ``graph``; ``rewrite`` each match and remove what it left dead.

    ``match`` only reads the graph, so anything it raises means "not this pattern".
    ``rewrite(graph, found)`` returns (a name, the pattern's nodes); those nodes and the shape
    reads (``dead_ops``) feeding them go once nothing reads them (:func:`remove_dead`).
    Returns the names, in graph order.
    """
    done = []
    for node in list(graph):
        if node.graph is not graph:
            continue  # removed by an earlier rewrite
        try:
            found = match(node)
        except Exception:  # noqa: BLE001 - "not this pattern"
            found = None
        if found is None:
            continue
        name, pattern = rewrite(graph, found)
        remove_dead(graph, pattern, dead_ops)
        done.append(name)
    return done


def remove_dead(graph: ir.Graph, pattern: list[ir.Node], ops: tuple[str, ...]) -> None:
    """Remove the pattern's nodes, and the shape reads (``ops``) that fed them, once nothing reads them."""
    candidates = set(pattern)
    for node in pattern:  # Shape/Gather/Max feeding the targets
        stack = list(node.inputs)
        while stack:
            v = stack.pop()
            p = None if v is None else v.producer()
            if p is not None and p not in candidates and p.op_type in ops:
                candidates.add(p)
                stack.extend(p.inputs)
    consts: set[ir.Value] = set()
    changed = True
    while changed:
        changed = False
        for node in list(graph):
            if node in candidates and all(not o.uses() and not o.is_graph_output() for o in node.outputs):
                consts.update(v for v in node.inputs if v is not None and is_const(v))
                graph.remove(node, safe=True)
                candidates.discard(node)
                changed = True
    for value in consts:
        drop_if_unused(graph, value)
