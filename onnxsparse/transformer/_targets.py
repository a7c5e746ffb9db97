"""Read and rewrite the shape input of Reshape/Expand nodes entry by entry.

Exporters write head counts into shape targets in two ways: a constant
initializer (dynamo: ``[-1, 8, 4, 16]``, often shared by several Reshapes), or a
``Concat`` built at run time from ``Shape -> Gather -> Unsqueeze`` pieces and
constant pieces (TorchScript: ``Concat(B, S, [4], [16])``).  Only the constant
entries change; the run-time entries (batch, sequence) are left alone so dynamic
shapes survive.  Edits never touch a value another node still needs: a shared
constant or Concat is copied for the nodes being rewritten.  tf2onnx builds the
Concat in int32 and casts it to int64 (``Cast(Concat(int32 dims))``); the Cast
is seen through and rewritten constants keep the Concat's integer type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ._graph import Skip, const_ints, is_const, new_initializer, replace_const, static_shape, users

__all__ = ["Entry", "ShapeTarget", "apply_target_edits"]

_INT_TYPES = (int(ir.DataType.INT64), int(ir.DataType.INT32), ir.DataType.INT64, ir.DataType.INT32)


@dataclass(frozen=True)
class Entry:
    """One entry of a shape target: its constant value if known, and where it lives."""

    const: int | None
    part: int  # Concat input index, or -1 when the whole target is one constant
    offset: int  # position inside that part
    part_len: int


class ShapeTarget:
    """The shape input ``node.inputs[index]`` seen as a list of entries."""

    def __init__(self, node: ir.Node, index: int) -> None:
        self.node = node
        self.index = index
        value = node.inputs[index]
        if value is None:
            raise Skip(f"{node.op_type} node {node.name!r} has no shape input")
        self.value = value
        self.entries: list[Entry] = []
        ints = const_ints(value)
        if ints is not None:
            self.concat: ir.Node | None = None
            self.entries = [Entry(v, -1, i, len(ints)) for i, v in enumerate(ints)]
            return
        producer = value.producer()
        #: an integer ``Cast`` between the Concat and the node (tf2onnx: int32 Concat -> int64)
        self.cast: ir.Node | None = None
        if producer is not None and producer.op_type == "Cast" and producer.domain in ("", "ai.onnx"):
            to = producer.attributes.get_int("to", 0)
            inner = producer.inputs[0] if producer.inputs else None
            if to not in _INT_TYPES or inner is None or inner.dtype not in _INT_TYPES:
                raise Skip(f"shape of {node.op_type} node {node.name!r} is a Cast that is not between integer types")
            self.cast = producer
            producer = inner.producer()
        if producer is None or producer.op_type != "Concat" or producer.domain not in ("", "ai.onnx"):
            raise Skip(f"shape of {node.op_type} node {node.name!r} is computed by something other than Concat")
        axis_attr = producer.attributes.get("axis")
        if axis_attr is None or axis_attr.as_int() not in (0, -1):
            raise Skip(f"shape Concat {producer.name!r} is not along axis 0")
        self.concat = producer
        for part, inp in enumerate(producer.inputs):
            if inp is None:
                raise Skip(f"shape Concat {producer.name!r} has an empty input")
            ints = const_ints(inp)
            if ints is not None:
                self.entries.extend(Entry(v, part, i, len(ints)) for i, v in enumerate(ints))
                continue
            shape = static_shape(inp)
            if shape is None or len(shape) != 1 or shape[0] is None:
                raise Skip(f"shape Concat {producer.name!r}: cannot tell how many entries {inp.name!r} holds")
            n = int(shape[0])
            self.entries.extend(Entry(None, part, i, n) for i in range(n))

    def __len__(self) -> int:
        return len(self.entries)

    def const(self, pos: int) -> int | None:
        return self.entries[pos].const

    def editable(self, pos: int) -> bool:
        """A constant entry, or a run-time piece holding exactly this one entry."""
        entry = self.entries[pos]
        return entry.const is not None or entry.part_len == 1

    def describe(self) -> str:
        return "[" + ", ".join("?" if e.const is None else str(e.const) for e in self.entries) + "]"


def apply_target_edits(graph: ir.Graph, edits: list[tuple[ShapeTarget, dict[int, int]]]) -> None:
    """Apply entry changes; nodes sharing a target and asking for the same change share one copy."""
    groups: dict[tuple[int, tuple[tuple[int, int], ...]], list[ShapeTarget]] = {}
    for target, changes in edits:
        key = (id(target.value), tuple(sorted(changes.items())))
        groups.setdefault(key, []).append(target)
    for (_, changes_t), targets in groups.items():
        changes = dict(changes_t)
        first = targets[0]
        uses = sorted({(t.node, t.index) for t in targets}, key=lambda u: (id(u[0]), u[1]))
        # Skip no-op edits.
        if all(first.entries[p].const == v for p, v in changes.items()):
            continue
        if first.concat is None:
            arr = np.array([e.const for e in first.entries], dtype=np.int64)
            for pos, val in changes.items():
                arr[pos] = val
            replace_const(graph, first.value, arr, uses, suffix="heads")
            continue
        concat = first.concat
        cast = first.cast
        concat_out = concat.outputs[0]
        private = set(users(first.value)) <= set(uses) and not first.value.is_graph_output()
        if cast is not None:
            private = private and set(users(concat_out)) == {(cast, 0)} and not concat_out.is_graph_output()
        if private:
            target_node = concat
        else:
            clone = ir.Node(
                concat.domain,
                "Concat",
                list(concat.inputs),
                attributes=[ir.AttrInt64("axis", 0)],
                name=f"{concat.name or 'Concat'}_heads",
                num_outputs=1,
            )
            clone.outputs[0].name = f"{concat_out.name or 'shape'}_heads"
            clone.outputs[0].shape = concat_out.shape
            clone.outputs[0].type = concat_out.type
            graph.insert_after(concat, clone)
            final = clone.outputs[0]
            if cast is not None:
                cast_clone = ir.Node(
                    cast.domain, "Cast", [final], attributes=list(cast.attributes.values()),
                    name=f"{cast.name or 'Cast'}_heads", num_outputs=1,
                )
                cast_clone.outputs[0].name = f"{first.value.name or 'shape'}_heads"
                cast_clone.outputs[0].shape = first.value.shape
                cast_clone.outputs[0].type = first.value.type
                graph.insert_after(clone, cast_clone)
                final = cast_clone.outputs[0]
            for node, idx in uses:
                node.replace_input_with(idx, final)
            target_node = clone
        by_part: dict[int, dict[int, int]] = {}
        for pos, val in changes.items():
            entry = first.entries[pos]
            by_part.setdefault(entry.part, {})[entry.offset] = val
        for part, offsets in by_part.items():
            inp = target_node.inputs[part]
            assert inp is not None
            ints = const_ints(inp)
            if ints is None:
                if len(offsets) != 1 or first.entries[_pos_of(first, part, 0)].part_len != 1:
                    raise Skip(f"cannot rewrite run-time entry of {concat.name!r}")  # pragma: no cover
                arr = np.array([offsets[0]], dtype=_np_dtype(inp))
                new = new_initializer(graph, f"{first.value.name or 'shape'}.heads_entry", arr)
                target_node.replace_input_with(part, new)
                continue
            arr = np.array(ints, dtype=_np_dtype(inp)).reshape(const_shape(inp))
            flat = arr.reshape(-1)
            for off, val in offsets.items():
                flat[off] = val
            replace_const(graph, inp, flat.reshape(arr.shape), [(target_node, part)], suffix="heads")


def _np_dtype(value: ir.Value) -> np.dtype:
    """The integer numpy type of a shape piece (tf2onnx builds int32 Concats)."""
    if value.const_value is not None:
        return value.const_value.numpy().dtype
    return np.dtype(np.int32) if value.dtype == ir.DataType.INT32 else np.dtype(np.int64)


def _pos_of(target: ShapeTarget, part: int, offset: int) -> int:
    for i, e in enumerate(target.entries):
        if e.part == part and e.offset == offset:
            return i
    raise KeyError(part)  # pragma: no cover


def const_shape(value: ir.Value) -> tuple[int, ...]:
    assert is_const(value)
    return tuple(int(d) for d in value.const_value.shape)  # type: ignore[union-attr]
