"""Apply a :class:`~onnxsparse.graph.plan.PrunePlan`: slice weights, fix nodes, update shapes.

Order matters: node rules rewrite first (they read the old shapes and the
keep-masks), then every initializer with a changed slot is sliced once along
all its changed axes (a weight shared by several nodes is coupled, so it is
sliced consistently for all of them), then the shapes of changed activations
are updated in place.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

from .context import RewriteContext
from .plan import PrunePlan
from .slots import SlotKey

__all__ = ["apply_plan"]


class _RewriteState:
    def __init__(self, model: ir.Model, masks: dict[SlotKey, np.ndarray]) -> None:
        self.model = model
        self.masks = masks
        self._counter = itertools.count()

    def set_input_constant(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        graph = self.model.graph
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        old = node.inputs[index]
        array = np.ascontiguousarray(array)
        if old is not None and old.is_initializer() and len(old.uses()) == 1 and not old.is_graph_output():
            old.const_value = ir.Tensor(array, name=old.name)
            old.shape = ir.Shape(array.shape)
            return
        base = old.name if old is not None and old.name else f"{node.name}_input{index}"
        name = f"{base}__pruned{next(self._counter)}"
        while name in graph.initializers:
            name = f"{base}__pruned{next(self._counter)}"
        value = ir.Value(name=name, shape=ir.Shape(array.shape), const_value=ir.Tensor(array, name=name))
        value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
        graph.register_initializer(value)
        node.replace_input_with(index, value)
        if old is not None and old.is_initializer() and not old.uses() and not old.is_graph_output():
            graph.initializers.pop(old.name, None)


def _slice(array: np.ndarray, masks: dict[int, np.ndarray]) -> np.ndarray:
    for axis, mask in sorted(masks.items()):
        array = np.compress(mask, array, axis=axis)
    return np.ascontiguousarray(array)


def apply_plan(plan: PrunePlan) -> ir.Model:
    """Prune ``plan.graph.model`` in place and return it."""
    dg = plan.graph
    model = dg.model
    masks = plan.masks()
    if not masks:
        dg.restore_sharing()
        return model
    state = _RewriteState(model, masks)
    changed_values = {key[0] for key in masks}
    virtual_nodes = {key[0].split("#")[1] for key in masks if key[0].startswith("#")}

    # 1. node rules (old shapes still in place)
    for node in list(model.graph):
        touched = node.name in virtual_nodes or any(
            v is not None and v.name in changed_values for v in (*node.inputs, *node.outputs)
        )
        if not touched:
            continue
        rule = dg.rule_for(node.name or "")
        if rule is None:  # pragma: no cover - a node without rule blocks all its slots
            raise AssertionError(f"node {node.name} has no rule but its slots changed")
        rule.rewrite(node, RewriteContext(state, node, dg.version_for(node.name or "")))

    # 2. weights and 3. shapes
    per_value: dict[str, dict[int, np.ndarray]] = {}
    for (name, axis), mask in masks.items():
        if not name.startswith("#"):
            per_value.setdefault(name, {})[axis] = mask
    for name, axis_masks in per_value.items():
        value = dg.value(name)
        if value is None:  # pragma: no cover - slots only exist for known values
            continue
        if value.is_initializer() and value.const_value is not None:
            array = _slice(value.const_value.numpy(), axis_masks)
            value.const_value = ir.Tensor(array, name=name)
            value.shape = ir.Shape(array.shape)
        elif value.shape is not None:
            dims = list(value.shape)
            for axis, mask in axis_masks.items():
                dims[axis] = int(mask.sum())
            value.shape = ir.Shape(dims)
    dg.restore_sharing()
    return model
