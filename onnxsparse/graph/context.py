"""What a rule sees: :class:`CoupleContext` during analysis, :class:`RewriteContext` after pruning."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union, overload

import numpy as np
import onnx_ir as ir

from ..errors import Decline
from . import value_facts as _shapes
from .weights import is_weight
from .index_maps import Identity, IndexMap
from .slots import Contraction, Role, SlotKey

if TYPE_CHECKING:
    from .dependency import _Analysis
    from .rewrite import _RewriteState

__all__ = ["CoupleContext", "RewriteContext", "Virtual", "Endpoint"]

_IDENTITY = Identity()


@dataclass(frozen=True)
class Virtual:
    """A slot that belongs to no tensor (e.g. the group index of GroupNormalization)."""

    name: str
    size: int

    @property
    def key(self) -> SlotKey:
        return (self.name, 0)


Endpoint = Union[ir.Value, Virtual]


class _NodeView:
    """Read-only helpers shared by both contexts."""

    node: ir.Node
    version: int

    def input(self, index: int) -> ir.Value | None:
        inputs = self.node.inputs
        return inputs[index] if index < len(inputs) else None

    def output(self, index: int) -> ir.Value | None:
        outputs = self.node.outputs
        return outputs[index] if index < len(outputs) else None

    def required_output(self, index: int) -> ir.Value:
        """Output ``index`` of a node whose rule accepted it (``couple`` refuses a node without it)."""
        value = self.output(index)
        if value is None:
            raise AssertionError(f"{self.describe()}: no output {index} although its rule accepted it")
        return value

    @staticmethod
    def dims(value: ir.Value | None) -> tuple[int | None, ...] | None:
        return _shapes.dims(value)

    def required_dims(self, value: ir.Value | None) -> tuple[int | None, ...]:
        """Dims of ``value`` whose rank the rule already checked (in ``couple``, or ``couple`` before a rewrite)."""
        d = _shapes.dims(value)
        if d is None:
            raise AssertionError(f"{self.describe()}: rank no longer known although its rule accepted it")
        return d

    @staticmethod
    def rank(value: ir.Value | None) -> int | None:
        d = _shapes.dims(value)
        return None if d is None else len(d)

    @staticmethod
    def constant(value: ir.Value | None) -> np.ndarray | None:
        return _shapes.constant(value)

    @staticmethod
    def constant_ints(value: ir.Value | None) -> tuple[int, ...] | None:
        return _shapes.constant_ints(value)

    @overload
    def attr_int(self, name: str, default: int) -> int: ...
    @overload
    def attr_int(self, name: str, default: None = None) -> int | None: ...

    def attr_int(self, name: str, default: int | None = None) -> int | None:
        return self.node.attributes.get_int(name, default)

    @overload
    def attr_ints(self, name: str, default: Sequence[int]) -> tuple[int, ...]: ...
    @overload
    def attr_ints(self, name: str, default: None = None) -> tuple[int, ...] | None: ...

    def attr_ints(self, name: str, default: Sequence[int] | None = None) -> tuple[int, ...] | None:
        value = self.node.attributes.get_ints(name, None)
        if value is None:
            return None if default is None else tuple(default)
        return tuple(int(v) for v in value)

    @overload
    def attr_float(self, name: str, default: float) -> float: ...
    @overload
    def attr_float(self, name: str, default: None = None) -> float | None: ...

    def attr_float(self, name: str, default: float | None = None) -> float | None:
        return self.node.attributes.get_float(name, default)

    def attr_floats(self, name: str) -> tuple[float, ...] | None:
        value = self.node.attributes.get_floats(name, None)
        return None if value is None else tuple(float(v) for v in value)

    @overload
    def attr_string(self, name: str, default: str) -> str: ...
    @overload
    def attr_string(self, name: str, default: None = None) -> str | None: ...

    def attr_string(self, name: str, default: str | None = None) -> str | None:
        return self.node.attributes.get_string(name, default)

    @property
    def name(self) -> str:
        return self.node.name or ""

    def describe(self) -> str:
        return f"{self.node.op_type} '{self.name}'"


class CoupleContext(_NodeView):
    """Collects one node's couplings; committed only if the rule accepts the node."""

    def __init__(self, analysis: _Analysis, node: ir.Node, version: int) -> None:
        self._analysis = analysis
        self.node = node
        self.version = version
        self.couplings: list[tuple[SlotKey, SlotKey, IndexMap]] = []
        self.sizes: dict[SlotKey, int] = {}
        self.handled_axes: set[SlotKey] = set()
        self.blocks: list[tuple[SlotKey, str]] = []
        self.roles: list[tuple[SlotKey, Role]] = []
        self.contractions: list[Contraction] = []
        self.unknown: list[tuple[SlotKey, str]] = []
        self.heads: list[tuple[SlotKey, int]] = []

    # -- slots -------------------------------------------------------------
    def same_shape(self, src: ir.Value | None, dst: ir.Value | None) -> None:
        """``dst`` has ``src``'s shape and type by the op's definition: fill them in if inference left them out
        (onnx does not infer ``com.microsoft`` ops; per-node inference downstream needs both)."""
        if src is None or dst is None:
            return
        if dst.dtype is None and src.dtype is not None:
            dst.dtype = src.dtype
        if dst.shape is None and src.shape is not None:
            dst.shape = ir.Shape(list(src.shape))

    def virtual(self, name: str, size: int) -> Virtual:
        """A node-local virtual slot of ``size`` positions."""
        return Virtual(f"#{self.name}#{name}", int(size))

    def _end(self, end: Endpoint, axis: int) -> tuple[SlotKey, int | None]:
        if isinstance(end, Virtual):
            return end.key, end.size
        d = _shapes.dims(end)
        if d is None:
            return (end.name or "", axis), None
        axis = _shapes.norm_axis(axis, len(d))
        if not 0 <= axis < len(d):
            raise IndexError(f"{self.describe()}: axis {axis} out of range for {end.name} (rank {len(d)})")
        return (end.name or "", axis), d[axis]

    def couple(self, a: Endpoint, a_axis: int, b: Endpoint, b_axis: int, index_map: IndexMap = _IDENTITY) -> None:
        """Positions of slot ``a`` couple to positions of slot ``b`` through ``index_map``.

        Both axes count as handled.  If either size is unknown, or the map does
        not fit the sizes, the known slots are blocked instead.
        """
        key_a, size_a = self._end(a, a_axis)
        key_b, size_b = self._end(b, b_axis)
        self.handled_axes.add(key_a)
        self.handled_axes.add(key_b)
        if size_a is None or size_b is None:
            if size_a is not None or size_b is not None:
                unknown = key_a if size_a is None else key_b
                reason = f"{self.describe()}: size of axis {unknown[1]} of '{unknown[0]}' is unknown"
                for key, size in ((key_a, size_a), (key_b, size_b)):
                    if size is not None:
                        self.sizes[key] = size
                        self.blocks.append((key, reason))
            return
        if size_a == 0 or size_b == 0:
            return
        try:
            fits = index_map.target_size(size_a) <= size_b
            if isinstance(index_map, Identity):
                fits = size_a == size_b
        except ValueError:
            fits = False
        self.sizes[key_a] = size_a
        self.sizes[key_b] = size_b
        if not fits:
            reason = (
                f"{self.describe()}: {index_map.describe()} does not fit sizes "
                f"{size_a} ('{key_a[0]}' axis {key_a[1]}) and {size_b} ('{key_b[0]}' axis {key_b[1]})"
            )
            self.blocks.append((key_a, reason))
            self.blocks.append((key_b, reason))
            return
        self.couplings.append((key_a, key_b, index_map))

    def identity(self, a: ir.Value, b: ir.Value, axes: Iterable[int] | None = None) -> None:
        """Couple axis ``k`` of ``a`` with axis ``k`` of ``b`` (all axes by default)."""
        ra, rb = self.rank(a), self.rank(b)
        if ra is None or rb is None:
            return
        for k in range(min(ra, rb)) if axes is None else axes:
            self.couple(a, k, b, k)

    def broadcast(self, inputs: Sequence[ir.Value | None], output: ir.Value) -> None:
        """Couple inputs with ``output`` under numpy broadcasting (size-1 axes stay free); declines on unknown ranks."""
        out = self.dims(output)
        if out is None:
            raise Decline(f"{self.describe()}: output rank unknown")
        r = len(out)
        for x in inputs:
            if x is None:
                continue
            xd = self.dims(x)
            if xd is None:
                raise Decline(f"{self.describe()}: rank of input '{x.name}' unknown")
            if len(xd) > r:
                raise Decline(f"{self.describe()}: input '{x.name}' has higher rank than the output")
            for k, dx in enumerate(xd):
                ko = r - len(xd) + k
                do = out[ko]
                if dx == 1 and do != 1:
                    self.handled(x, k)  # broadcast: the one position serves every channel
                else:
                    self.couple(x, k, output, ko)

    def head_axis(self, end: Endpoint, axis: int, queries: int = 1) -> None:
        """``axis`` of ``end`` indexes attention heads (or KV groups): a group through it is a head group.

        Rules say this where the op treats the axis as independent attention
        heads (a batch axis of ``Q @ K^T``, the heads of a fused attention op);
        ``queries`` > 1 says each position is a KV head read by that many query
        heads (grouped-query attention).  :func:`onnxsparse.graph.kinds.classify`
        reads it.
        """
        key, size = self._end(end, axis)
        if size is not None and size > 1:
            self.heads.append((key, int(queries)))

    def handled(self, value: ir.Value, axis: int) -> None:
        """Mark an axis as safe to leave unmapped (removing its positions changes nothing here)."""
        d = self.dims(value)
        if d is None:
            return
        self.handled_axes.add((value.name or "", _shapes.norm_axis(axis, len(d))))

    def handled_all(self, value: ir.Value | None) -> None:
        if value is None:
            return
        for k in range(self.rank(value) or 0):
            self.handled(value, k)

    def block(self, value: ir.Value, axis: int, reason: str) -> None:
        """This node cannot follow removal along ``axis`` of ``value``."""
        key, size = self._end(value, axis)
        self.handled_axes.add(key)
        if size:
            self.sizes[key] = size
            self.blocks.append((key, f"{self.describe()}: {reason}"))

    def block_all(self, value: ir.Value | None, reason: str) -> None:
        if value is None:
            return
        for k in range(self.rank(value) or 0):
            self.block(value, k, reason)

    def role(self, value: ir.Value | None, axis: int, role: Role) -> None:
        """Record the role a weight slot plays (initializers and values dequantized from constants)."""
        if not is_weight(value):
            return
        key, size = self._end(value, axis)
        if size:
            self.roles.append((key, role))

    def contract(self, input_index: int, axis: int, weight: tuple[int, int] | None = None) -> None:
        """The node sums over ``axis`` of input ``input_index`` (see :class:`Contraction`)."""
        value = self.input(input_index)
        if value is None:
            return
        rank = self.rank(value)
        if rank is not None:
            axis = _shapes.norm_axis(axis, rank)
        if weight is not None:
            w = self.input(weight[0])
            wr = self.rank(w)
            if w is None or not is_weight(w) or wr is None:
                weight = None
            else:
                weight = (weight[0], _shapes.norm_axis(weight[1], wr))
        self.contractions.append(Contraction(self.name, input_index, axis, weight))


class RewriteContext(_NodeView):
    """Lets a rule fix a node after positions were removed from its slots."""

    def __init__(self, state: _RewriteState, node: ir.Node, version: int) -> None:
        self._state = state
        self.node = node
        self.version = version

    def keep(self, value: ir.Value | None, axis: int) -> np.ndarray | None:
        """Boolean mask of kept positions along ``axis`` of ``value``; ``None`` if unchanged."""
        if value is None:
            return None
        rank = self.rank(value)
        if rank is not None:
            axis = _shapes.norm_axis(axis, rank)
        return self._state.masks.get((value.name or "", axis))

    def keep_virtual(self, name: str) -> np.ndarray | None:
        return self._state.masks.get((f"#{self.name}#{name}", 0))

    def kept_size(self, value: ir.Value | None, axis: int) -> int | None:
        """How many positions of ``axis`` are kept; ``None`` if the axis is unchanged."""
        mask = self.keep(value, axis)
        return None if mask is None else int(mask.sum())

    def new_dim(self, value: ir.Value, axis: int) -> int | None:
        """Size of ``axis`` after pruning (the old size if unchanged)."""
        kept = self.kept_size(value, axis)
        if kept is not None:
            return kept
        d = self.dims(value)
        return None if d is None else d[_shapes.norm_axis(axis, len(d))]

    def set_input_constant(self, index: int, array: np.ndarray) -> None:
        """Replace constant input ``index`` (a shape-like tensor) with ``array``.

        A fresh initializer is created when the old one is shared with other nodes.
        """
        self._state.set_input_constant(self.node, index, array)

    def set_node_input_constant(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        """Like :meth:`set_input_constant` for another node (e.g. the Concat building a Reshape target)."""
        self._state.set_input_constant(node, index, array)

    @property
    def dry_run(self) -> bool:
        """True while the plan is checked (:func:`~onnxsparse.graph.rewrite.check_rewrites`): change nothing."""
        return self._state.dry_run

    def set_attr_int(self, name: str, value: int) -> None:
        self._state.set_attr(self.node, ir.AttrInt64(name, int(value)))

    def set_attr_ints(self, name: str, values: Sequence[int]) -> None:
        self._state.set_attr(self.node, ir.AttrInt64s(name, [int(v) for v in values]))

    def remove_attr(self, name: str) -> None:
        self._state.remove_attr(self.node, name)
