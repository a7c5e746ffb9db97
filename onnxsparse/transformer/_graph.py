"""Small onnx_ir helpers shared by the transformer matchers and rules.

Everything here reads the graph or makes a *new* value; nothing mutates a value
that another node might share (callers decide whether an in-place edit is safe).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx_ir as ir

from ..graph._shapes import constant, constant_ints

__all__ = [
    "Skip",
    "const_array",
    "const_ints",
    "is_const",
    "static_shape",
    "rank_of",
    "attr_int",
    "attr_ints",
    "attr_float",
    "set_attr_int",
    "set_attr_ints",
    "new_initializer",
    "replace_const",
    "onnx_domain",
    "opset_version",
    "users",
    "normalize_axis",
    "remove_dead",
    "rewrite_matches",
]

_STANDARD = ("", "ai.onnx")
_counter = itertools.count()


class Skip(Exception):
    """A matcher or rule refuses a block; the message is the reason shown to the user."""


def onnx_domain(node: ir.Node) -> bool:
    return node.domain in _STANDARD


def opset_version(graph: ir.Graph, domain: str = "") -> int:
    opsets = graph.opset_imports
    return int(opsets.get(domain, opsets.get("ai.onnx", 0) if domain == "" else 0))


def is_const(value: ir.Value | None) -> bool:
    """True for initializers that are not overridable graph inputs."""
    return value is not None and value.const_value is not None and not value.is_graph_input()


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The array of a constant that is not an overridable graph input (``None`` otherwise)."""
    return constant(value) if is_const(value) else None


def const_ints(value: ir.Value | None) -> list[int] | None:
    """:func:`const_array` of an integer constant, as a list the caller may edit."""
    ints = constant_ints(value) if is_const(value) else None
    return None if ints is None else list(ints)


def static_shape(value: ir.Value | None) -> list[int | None] | None:
    """Dims as ints, ``None`` for symbolic/unknown ones; ``None`` when the rank is unknown."""
    if value is None:
        return None
    if value.const_value is not None:
        return [int(d) for d in value.const_value.shape]
    shape = value.shape
    if shape is None:
        return None
    return [d if isinstance(d, int) else None for d in shape.dims]


def rank_of(value: ir.Value | None) -> int | None:
    shape = static_shape(value)
    return None if shape is None else len(shape)


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise Skip(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def attr_int(node: ir.Node, name: str, default: int | None = None) -> int | None:
    attr = node.attributes.get(name)
    if attr is None:
        return default
    if attr.is_ref():
        raise Skip(f"{node.op_type} node {node.name!r}: attribute {name} is a function reference")
    return int(attr.as_int())


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    if attr is None:
        return None
    if attr.is_ref():
        raise Skip(f"{node.op_type} node {node.name!r}: attribute {name} is a function reference")
    return [int(v) for v in attr.as_ints()]


def attr_float(node: ir.Node, name: str, default: float | None = None) -> float | None:
    attr = node.attributes.get(name)
    if attr is None:
        return default
    return float(attr.as_float())


def set_attr_int(node: ir.Node, name: str, value: int) -> None:
    node.attributes[name] = ir.AttrInt64(name, int(value))


def set_attr_ints(node: ir.Node, name: str, values: Sequence[int]) -> None:
    node.attributes[name] = ir.AttrInt64s(name, [int(v) for v in values])


def users(value: ir.Value) -> list[tuple[ir.Node, int]]:
    return [(u.node, u.idx) for u in value.uses()]


def _unique_name(graph: ir.Graph, base: str) -> str:
    taken = graph.initializers
    name = base
    while name in taken:
        name = f"{base}_{next(_counter)}"
    return name


def new_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """Register a fresh initializer (never reuses a name)."""
    name = _unique_name(graph, base)
    tensor = ir.tensor(np.asarray(array).copy(order="C"), name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def replace_const(
    graph: ir.Graph,
    value: ir.Value,
    array: np.ndarray,
    uses: Iterable[tuple[ir.Node, int]],
    *,
    suffix: str = "pruned",
) -> ir.Value:
    """Give ``uses`` a constant holding ``array`` instead of ``value``.

    When every use of ``value`` is in ``uses`` the initializer is edited in place
    (it keeps its name, e.g. a state-dict key); otherwise a new initializer is
    made for ``uses`` and the others keep the original.
    """
    uses = list(uses)
    all_uses = set(users(value))
    if (
        set(uses) == all_uses
        and value.is_initializer()
        and not value.is_graph_output()
        and not value.is_graph_input()
    ):
        name = value.name
        value.const_value = ir.tensor(np.asarray(array).copy(order="C"), name=name)
        value.shape = ir.Shape(array.shape)
        return value
    new = new_initializer(graph, f"{value.name or 'const'}.{suffix}", array)
    for node, idx in uses:
        node.replace_input_with(idx, new)
    return new


def rewrite_matches(graph: ir.Graph, match: Callable[[ir.Node], object | None],
                    rewrite: Callable[[ir.Graph, object], tuple[str, list[ir.Node]]],
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
        if not value.uses() and not value.is_graph_output() and graph.initializers.get(value.name) is value:
            graph.initializers.pop(value.name)
