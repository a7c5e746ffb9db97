"""Prunable groups as data a training script can use (``inspect --groups FILE.json``).

Group-lasso training needs exactly the groups ``prune`` removes: for every unit (channel, head,
KV group, FFN neuron) the slice of every weight it owns.  This module writes them as versioned
JSON (``"format": "onnxsparse-groups"``, ``"version": 1``; schema in
``onnxsparse/schemas/groups.schema.json``, format in ``docs/groups.md``): per group its kind,
unit count, prunable or why not, and per initializer member its name, shape, axis, roles, the
index map in closed form and the explicit positions of every unit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dependency import DependencyGraph, Group
from .index_maps import Block, Identity, IndexMap, Offset, Stride, simplify
from .slots import Role

__all__ = ["GROUPS_FORMAT", "GROUPS_VERSION", "groups_document", "map_spec"]

GROUPS_FORMAT = "onnxsparse-groups"
GROUPS_VERSION = 1

#: running statistics (BatchNorm mean / variance) are not trained: no penalty applies to them
_NOT_TRAINED = frozenset({Role.STAT})


def map_spec(index_map: IndexMap) -> dict[str, Any]:
    """An index map as data; ``table`` when no closed form fits (then only ``indices`` say it)."""
    if isinstance(index_map, Identity):
        return {"type": "identity"}
    if isinstance(index_map, Offset):
        return {"type": "offset", "offset": index_map.offset}
    if isinstance(index_map, Block):
        return {"type": "block", "size": index_map.size, "offset": index_map.offset}
    if isinstance(index_map, Stride):
        return {"type": "stride", "stride": index_map.stride, "count": index_map.count, "offset": index_map.offset}
    return {"type": "table"}


def _member(dg: DependencyGraph, group: Group, weight: Any, in_file: set[str]) -> dict[str, Any]:
    value = dg.value(weight.slot.value)
    shape = list(value.shape.numpy()) if value is not None and value.shape is not None else []
    dtype = value.dtype.name.lower() if value is not None and value.dtype is not None else "unknown"
    positions = np.asarray(weight.positions, dtype=np.int64)
    name = dg.shared_copies.get(weight.slot.value, weight.slot.value)  # a per-node copy of a shared constant
    return {
        "initializer": name,
        "in_file": name in in_file,
        "shape": shape,
        "dtype": dtype,
        "axis": weight.slot.axis,
        "roles": sorted(r.value for r in weight.roles),
        "trainable": not weight.roles or bool(weight.roles - _NOT_TRAINED),
        "map": map_spec(simplify(positions)),
        "indices": positions.tolist(),
    }


def _unit_weights(member: dict[str, Any]) -> int:
    """Weights of one unit's slice of a member (``|g|`` of the group-lasso penalty sums these): positions per unit times the other axes' extent."""
    shape, axis = member["shape"], member["axis"]
    rest = int(np.prod([d for i, d in enumerate(shape) if i != axis], dtype=np.int64))
    return len(member["indices"][0]) * rest if member["indices"] else 0


def groups_document(dg: DependencyGraph, *, model: str = "", in_file: set[str] | None = None) -> dict[str, Any]:
    """Every group of ``dg`` (prunable or not) as the version-1 groups document.

    ``in_file``: initializer names of the model file as given, so a member made by normalisation
    (a split packed QKV weight, a lifted constant) says it has no counterpart there.
    """
    names = in_file if in_file is not None else set(dg.model.graph.initializers)
    groups = []
    for g in dg.groups:
        members = [_member(dg, g, w, names) for w in dg.weights(g)]
        groups.append({
            "id": g.id,
            "kind": g.kind,
            "units": g.size,
            "channels": g.channels,
            "root": {"value": g.root.value, "axis": g.root.axis, "size": g.root.size},
            "prunable": g.prunable,
            "reasons": list(g.reasons),
            "nodes": list(g.nodes),
            "weights_per_unit": sum(_unit_weights(m) for m in members if m["trainable"]),
            "members": members,
        })
    return {"format": GROUPS_FORMAT, "version": GROUPS_VERSION, "model": model, "groups": groups}

