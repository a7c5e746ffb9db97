"""Apply a :class:`~onnxsparse.graph.plan.PrunePlan`: slice weights, fix nodes, update shapes.

Order matters: node rules rewrite first (they read the old shapes and the
keep-masks), then every initializer with a changed slot is sliced once along
all its changed axes (a weight shared by several nodes is coupled, so it is
sliced consistently for all of them), then the shapes of changed activations
are updated in place.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from .context import RewriteContext
from .dependency import internal_error
from .slots import SlotKey

if TYPE_CHECKING:
    from .dependency import DependencyGraph
    from .plan import PrunePlan

__all__ = ["apply_plan", "check_rewrites"]

logger = logging.getLogger(__name__)


class _RewriteState:
    def __init__(self, model: ir.Model, masks: dict[SlotKey, np.ndarray], *, dry_run: bool = False) -> None:
        self.model = model
        self.masks = masks
        self.dry_run = dry_run
        self._counter = itertools.count()

    def set_attr(self, node: ir.Node, attr: ir.Attr) -> None:
        if not self.dry_run:
            node.attributes[attr.name] = attr

    def remove_attr(self, node: ir.Node, name: str) -> None:
        if not self.dry_run:
            node.attributes.pop(name, None)

    def set_input_constant(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        array = np.asarray(array).copy(order="C")  # contiguous, and a 0-d scalar stays 0-d
        if self.dry_run:
            return
        graph = self.model.graph
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        old = node.inputs[index]
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
        if old is not None and old.name is not None and old.is_initializer() and not old.uses() \
                and not old.is_graph_output():
            graph.initializers.pop(old.name, None)


def _slice(array: np.ndarray, masks: dict[int, np.ndarray]) -> np.ndarray:
    for axis, mask in sorted(masks.items()):
        array = np.compress(mask, array, axis=axis)
    return np.ascontiguousarray(array)


def _touched_nodes(dg, masks: dict[SlotKey, np.ndarray]) -> list[ir.Node]:
    changed_values = {key[0] for key in masks}
    virtual_nodes = {key[0].split("#")[1] for key in masks if key[0].startswith("#")}
    return [
        node for node in dg.model.graph
        if node.name in virtual_nodes
        or any(v is not None and v.name in changed_values for v in (*node.inputs, *node.outputs))
    ]


def check_rewrites(dg: DependencyGraph, removed: Mapping[int, tuple[int, ...]]) -> dict[int, str]:
    """Groups of ``removed`` whose node rewrites raise, with the reason; nothing is changed.

    Every rule that :func:`apply_plan` would call runs once against a state that
    records nothing.  A rule that raises for a node takes the groups that change
    that node's slots out (and the check runs again without them), so
    ``apply_plan`` never stops half-way through a model.
    """
    failed: dict[int, str] = {}
    remaining = {g: idx for g, idx in removed.items() if idx}
    while remaining:
        masks = dg.keep_masks(remaining)
        state = _RewriteState(dg.model, masks, dry_run=True)
        culprit: tuple[ir.Node, str] | None = None
        for node in _touched_nodes(dg, masks):
            rule = dg.rule_for(node.name or "")
            try:
                if rule is None:
                    raise AssertionError(f"node {node.name} has no rule but its slots changed")
                rule.rewrite(node, RewriteContext(state, node, dg.version_for(node.name or "")))
            except Exception as exc:  # noqa: BLE001 - the groups behind this node are skipped, the run goes on
                logger.debug("rewrite of %s '%s' failed", node.op_type, node.name, exc_info=True)
                name = type(rule).__name__ if rule is not None else "(none)"
                culprit = (node, f"{node.op_type} '{node.name}': {internal_error('rule', name, exc)}")
                break
        if culprit is None:
            break
        node, reason = culprit
        names = {v.name for v in (*node.inputs, *node.outputs) if v is not None}
        bad = [g for g in remaining
               if any(k[0] in names or k[0].startswith(f"#{node.name}#") for k in dg.keep_masks({g: remaining[g]}))]
        if not bad:  # pragma: no cover - a touched node is touched by some group
            bad = list(remaining)
        for g in bad:
            failed[g] = reason
            del remaining[g]
    return failed


def apply_plan(plan: PrunePlan) -> ir.Model:
    """Prune ``plan.graph.model`` in place and return it."""
    dg = plan.graph
    model = dg.model
    masks = plan.masks()
    if not masks:
        dg.restore_sharing()
        return model
    state = _RewriteState(model, masks)

    # 1. node rules (old shapes still in place; PrunePlan.create checked they run)
    for node in _touched_nodes(dg, masks):
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
