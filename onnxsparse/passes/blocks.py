"""Whole residual blocks: find ``y = x + f(x)`` by graph structure and remove ``f`` exactly.

A residual block is an ``Add`` one of whose inputs ``x`` is an ancestor of the other input
``f(x)``.  The **branch** ``f`` is every node ``f(x)`` depends on (not looking past ``x``) that
only this branch uses: all consumers of all its outputs are branch nodes (or the ``Add``), and
none is a graph output.  Nodes the branch shares with the rest of the model (an attention mask,
rotary tables computed once for every layer) stay; they are *side inputs* of the branch.  So
removing the branch is exact: ``y`` becomes ``x``, the same as replacing ``f(x)`` by zeros.

Only branches with a weighted MAC op (Conv, Gemm, MatMul with a weight, ...) are blocks: ``x +
0.044715 x^3`` inside a GELU is not one.  Found by structure only, never by names: pre-norm
transformer sub-blocks (``x + Attn(LN(x))``, ``x + MLP(LN(x))``), post-norm ones (``LN(x +
Attn(x))``), ResNet BasicBlock/Bottleneck without downsample.  Declined, with the reason:

* a computed shortcut (``Add(f(s), g(s))`` with weights on both sides: a projection/downsample);
* ``f(x)`` of another shape than ``x`` (broadcast), or shapes unknown;
* ``f(x)`` also used outside the block (or a graph output).

Shapes are compared with every symbolic input dim bound to a distinct value, so a branch that
only matches ``x`` for one batch/sequence size is declined.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from ..errors import Decline, UsageError

__all__ = ["Block", "RemoveBlocksPass", "find_blocks", "quiet_folding", "remove_blocks", "remove_found", "remove_by_values",
           "node_label"]

logger = logging.getLogger(__name__)

#: distinct values for symbolic input dims while comparing shapes (a broadcast cannot hide); primes no
#: real layer is likely to have, so messages can show them by their symbol names again
_PROBE_DIMS = (97, 89, 83, 79, 73, 71, 67, 61)


@dataclass(frozen=True)
class Block:
    """One residual ``Add``: removable (``reason is None``) or declined with the reason."""

    id: int
    add: str  #: the Add node's name
    x: str  #: the shortcut value (the block's input)
    branch_output: str  #: f(x), the Add input that is dropped
    nodes: tuple[str, ...] = ()  #: the branch's nodes, graph order
    side_inputs: tuple[str, ...] = ()  #: non-constant values the branch reads besides x
    macs: int | None = None  #: per sample (symbolic input dims = 1), None if unknown
    params: int = 0  #: weight elements only the branch uses
    reason: str | None = None
    x_index: int = 0  #: which Add input is x

    @property
    def removable(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "add": self.add, "x": self.x, "branch_output": self.branch_output,
                "nodes": len(self.nodes), "first_node": self.nodes[0] if self.nodes else None,
                "side_inputs": list(self.side_inputs), "macs": self.macs, "params": self.params,
                "removable": self.removable, **({"reason": self.reason} if self.reason else {})}


def _constants(graph: ir.Graph) -> set[int]:
    """ids of values known before run time: initializers and outputs of nodes reading only those."""
    const = {id(v) for v in graph.initializers.values() if not v.is_graph_input()}
    for node in graph:
        if node.op_type.startswith("Random") or node.attributes.get("seed") is not None or any(
                a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            continue  # random, or a body that may read outer values
        if all(v is None or id(v) in const for v in node.inputs):
            const.update(id(v) for v in node.outputs)
    return const


#: ops whose output depends on the shape of their input, never on its values
_SHAPE_OPS = frozenset({"Shape", "Size"})


def _ancestors(value: ir.Value, stop: ir.Value | None, *, data_only: bool = False) -> tuple[set[int], list[ir.Node]]:
    """(ids of the values ``value`` depends on, their producer nodes), not looking past ``stop``
    (nor past ``Shape``/``Size`` when ``data_only``)."""
    seen: set[int] = {id(value)}
    nodes: dict[int, ir.Node] = {}
    todo = [value]
    while todo:
        v = todo.pop()
        if v is stop:
            continue
        node = v.producer()
        if node is None or id(node) in nodes:
            continue
        nodes[id(node)] = node
        if data_only and node.op_type in _SHAPE_OPS and node.domain in ("", "ai.onnx"):
            continue
        for inp in node.inputs:
            if inp is not None and id(inp) not in seen:
                seen.add(id(inp))
                todo.append(inp)
    return seen, list(nodes.values())


def _owned(fx: ir.Value, add: ir.Node, candidates: list[ir.Node], order: Mapping[int, int], *,
           any_fx_uses: bool = False) -> list[ir.Node]:
    """The candidates only the branch ending in ``fx`` uses (reverse graph order: consumers first).

    ``fx`` itself must feed only ``add`` (unless ``any_fx_uses``: what the branch would be if so)."""
    owned: set[int] = {id(add)}
    for node in sorted(candidates, key=lambda n: order[id(n)], reverse=True):
        if all(not out.is_graph_output() and all(id(u.node) in owned for u in out.uses())
               or (out is fx and any_fx_uses) for out in node.outputs):
            owned.add(id(node))
    owned.discard(id(add))
    return [n for n in candidates if id(n) in owned]


def _weighted_mac(nodes: Iterable[ir.Node], const: set[int]) -> bool:
    from ..analysis.macs import mac_counters

    counters = mac_counters()
    for node in nodes:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if (domain, node.op_type) in counters and any(v is not None and id(v) in const for v in node.inputs):
            return True
    return False


def _probe_dims(model: ir.Model) -> dict[str, int]:
    symbols: list[str] = []
    for v in model.graph.inputs:
        for d in v.shape or ():
            name = getattr(d, "value", None)
            if not isinstance(d, int) and name and name not in symbols:
                symbols.append(name)
    return {s: _PROBE_DIMS[i % len(_PROBE_DIMS)] + 2 * (i // len(_PROBE_DIMS)) for i, s in enumerate(symbols)}


def _fmt(dims, names: Mapping[int, str]) -> str:
    """``dims`` as ``batchx4x8x8``: probe values shown by their symbol names."""
    return "?" if dims is None else "x".join("?" if d is None else names.get(d, str(d)) for d in dims)


def _check_shape(x: ir.Value, fx: ir.Value, out: ir.Value, shapes: Mapping[str, Any],
                 names: Mapping[int, str]) -> None:
    """Declines when dropping ``f`` would change the output's shape or type (or they are unknown)."""
    sx, sf, so = (shapes.get(v.name or "") for v in (x, fx, out))
    if sx is None or sf is None or None in sx or None in sf:
        raise Decline(f"shapes unknown (x {_fmt(sx, names)}, f(x) {_fmt(sf, names)}): "
                      "cannot check that dropping f keeps the output shape")
    if tuple(sx) != tuple(sf) or (so is not None and tuple(so) != tuple(sx)):
        raise Decline(f"f(x) has shape {_fmt(sf, names)}, x {_fmt(sx, names)}: the Add broadcasts, "
                      "dropping f would change the output shape")
    if x.dtype is not None and fx.dtype is not None and x.dtype != fx.dtype:
        raise Decline(f"x is {x.dtype}, f(x) {fx.dtype}")


def _branch_params(nodes: Sequence[ir.Node], const: set[int]) -> int:
    inside = {id(n) for n in nodes}
    seen: set[int] = set()
    total = 0
    for node in nodes:
        for v in node.inputs:
            if v is None or id(v) in seen or v.const_value is None or not v.is_initializer():
                continue
            seen.add(id(v))
            if all(id(u.node) in inside for u in v.uses()):
                total += int(np.prod(v.const_value.shape.numpy())) if v.const_value.shape is not None else 0
    return total


@contextlib.contextmanager
def quiet_folding():
    """Silence onnxscript's constant folder while inferring shapes: its failed folds only mean "not a constant"."""
    folding = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = folding.level
    folding.setLevel(logging.ERROR)
    try:
        yield
    finally:
        folding.setLevel(level)


def _node_macs(model: ir.Model, shapes: Mapping[str, tuple[int, ...]] | None) -> dict[int, int]:
    """MACs per main-graph node (keyed by ``id(node)``: exporters leave some nodes unnamed)."""
    from ..analysis import infer_shapes
    from ..analysis.macs import macs_table
    from .prune import _mac_dims

    try:
        with quiet_folding():
            rows, _ = macs_table(model, infer_shapes(model, shapes, dims=_mac_dims(model, shapes)))
    except Exception:  # noqa: BLE001 - MACs are informative, never fail the search on them
        logger.debug("MAC count failed", exc_info=True)
        return {}
    main = [r for r in rows if r.graph == "main"]  # one row per main-graph node, graph order
    return {id(n): int(r.macs) for n, r in zip(model.graph, main) if r.macs is not None}


def node_label(node: ir.Node, order: Mapping[int, int]) -> str:
    """How :class:`Block` names a node: its name, or ``#position op`` (``order``: id(node) -> position)."""
    return node.name or f"#{order[id(node)]} {node.op_type}"


_label = node_label


def find_blocks(model: ir.Model, shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[Block]:
    """Every residual ``Add`` of the main graph whose branch holds a weighted MAC op, in graph order.

    ``shapes`` fixes input shapes for the MAC count (symbolic dims are 1 otherwise).  Removable
    blocks have ``reason is None``; the others say why not.  Ids are the positions in this list,
    stable for one model.
    """
    from ..analysis import infer_shapes

    graph = model.graph
    order = {id(n): i for i, n in enumerate(graph)}
    const = _constants(graph)
    probe_dims = _probe_dims(model)
    names = {v: k for k, v in probe_dims.items()}
    with quiet_folding():
        probe = infer_shapes(model, dims=probe_dims)
    per_node: dict[int, int] | None = None
    blocks: list[Block] = []
    for add in graph:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
            continue
        a, b = add.inputs
        if a is None or b is None or a is b or id(a) in const or id(b) in const:
            continue
        found = None
        for x, fx in ((a, b), (b, a)):
            seen, candidates = _ancestors(fx, stop=x)
            if id(x) in seen:
                found = (x, fx, candidates)
                break
        if found is None:
            try:
                _computed_shortcut(add, const, order, probe, names)
            except Decline as exc:
                blocks.append(Block(len(blocks), _label(add, order), "", "", reason=exc.reason))
            continue
        x, fx, candidates = found
        nodes = _owned(fx, add, candidates, order)
        producer = fx.producer()
        if producer is None or all(n is not producer for n in nodes):
            # f(x) has other consumers: what would the branch be if it had not?
            pretend = _owned(fx, add, candidates, order, any_fx_uses=True)
            if not _weighted_mac(pretend, const):
                continue
            users = len([u for u in fx.uses() if u.node is not add])
            where = "is a graph output" if fx.is_graph_output() else f"feeds {users} node(s) outside the block"
            blocks.append(Block(len(blocks), _label(add, order), x.name or "", fx.name or "",
                                reason=f"f(x) {where}", x_index=add.inputs.index(x)))
            continue
        if not _weighted_mac(nodes, const):
            continue
        nodes.sort(key=lambda n: order[id(n)])
        side = tuple(v.name or "" for v in _side_values(nodes, x, const))
        if not any(x is v for n in nodes for v in n.inputs) or any(
                id(x) in _ancestors(v, None, data_only=True)[0] for v in _side_values(nodes, x, const)):
            continue  # f(x) reads x's values through what the rest of the model shares too: x is not the block input
        if per_node is None:
            per_node = _node_macs(model, shapes)
        macs = sum(per_node.get(id(n), 0) for n in nodes) if per_node else None
        try:
            _check_shape(x, fx, add.outputs[0], probe, names)
            reason = None
        except Decline as exc:
            reason = exc.reason
        blocks.append(Block(len(blocks), _label(add, order), x.name or "", fx.name or "",
                            tuple(_label(n, order) for n in nodes), side, macs, _branch_params(nodes, const),
                            reason, x_index=add.inputs.index(x)))
    return blocks


def _side_values(nodes: Sequence[ir.Node], x: ir.Value, const: set[int]) -> list[ir.Value]:
    """Non-constant values the branch ``nodes`` reads besides ``x`` and its own outputs."""
    inside = {id(n) for n in nodes}
    out: dict[int, ir.Value] = {}
    for n in nodes:
        for v in n.inputs:
            if v is None or v is x or id(v) in const or (v.producer() is not None and id(v.producer()) in inside):
                continue
            out.setdefault(id(v), v)
    return list(out.values())


def _computed_shortcut(add: ir.Node, const: set[int], order: Mapping[int, int], shapes: Mapping[str, Any],
                       names: Mapping[int, str]) -> None:
    """Declines with why ``add`` is no block when it joins two weighted branches of one source ``s`` (a
    projection or downsample shortcut; attention and MLP in parallel); returns when it is no residual join."""
    a, b = add.inputs
    if a is None or b is None:
        return
    common = (_ancestors(a, None)[0] & _ancestors(b, None)[0]) - const
    if not common:
        return
    position = {id(v): order[id(v.producer())] if v.producer() is not None else -1 for v in _values(a, b)}
    source = max((v for v in _values(a, b) if id(v) in common), key=lambda v: position[id(v)], default=None)
    if source is None:
        return
    sides = [_owned(v, add, _ancestors(v, source)[1], order, any_fx_uses=True) for v in (a, b)]
    if not all(_weighted_mac(side, const) for side in sides):
        return
    so, sx = shapes.get(add.outputs[0].name or ""), shapes.get(source.name or "")
    if sx is not None and so is not None and tuple(sx) != tuple(so):
        raise Decline(f"projection/downsample shortcut ({_fmt(sx, names)} -> {_fmt(so, names)}), not the identity: "
                      f"both inputs are computed from {source.name!r}; dropping the branch would change the shape")
    raise Decline(f"no identity shortcut: both inputs are weighted branches of {source.name!r} (a projection "
                  "shortcut, or parallel branches such as attention and MLP side by side)")


def _values(*roots: ir.Value) -> list[ir.Value]:
    out: dict[int, ir.Value] = {}
    todo = list(roots)
    while todo:
        v = todo.pop()
        if id(v) in out:
            continue
        out[id(v)] = v
        node = v.producer()
        if node is not None:
            todo.extend(i for i in node.inputs if i is not None)
    return list(out.values())


class RemoveBlocksPass(ir.passes.InPlacePass):
    """Remove the branches of the residual blocks ``ids`` (ids of :func:`find_blocks` on this model)."""

    def __init__(self, ids: Iterable[int], shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        super().__init__()
        self.ids = tuple(sorted({int(i) for i in ids}))
        self.shapes = shapes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not self.ids:
            return ir.passes.PassResult(model, modified=False)
        blocks = {b.id: b for b in find_blocks(model, self.shapes)}
        for i in self.ids:
            block = blocks.get(i)
            if block is None:
                raise UsageError(f"no residual block {i} (the model has {len(blocks)}: ids 0..{len(blocks) - 1})")
            if not block.removable:
                raise UsageError(f"residual block {i} ({block.add}) cannot be removed: {block.reason}")
        remove_found(model, [blocks[i] for i in self.ids])
        return ir.passes.PassResult(model, modified=True)


def remove_blocks(model: ir.Model, ids: Iterable[int], shapes: Mapping[str, tuple[int, ...]] | None = None) -> ir.Model:
    """Remove the residual blocks ``ids`` of :func:`find_blocks` from ``model`` (in place); returns it."""
    return RemoveBlocksPass(ids, shapes)(model).model


def remove_found(model: ir.Model, chosen: Sequence[Block]) -> None:
    """Remove the branches of ``chosen`` (removable blocks :func:`find_blocks` returned for this model or an
    identical copy: nodes are matched by name, or position for unnamed ones), in place, without a new search."""
    graph = model.graph
    order = {id(n): i for i, n in enumerate(graph)}
    by_name = {_label(n, order): n for n in graph}
    doomed = {id(by_name[name]) for b in chosen for name in b.nodes}
    weights = {id(v): v for b in chosen for name in b.nodes for v in by_name[name].inputs
               if v is not None and v.is_initializer()}
    for block in sorted(chosen, key=lambda b: b.id):  # graph order: an earlier block's rewiring is seen by a later one's Add
        add = by_name[block.add]
        if id(add) in doomed:
            continue  # inside a branch removed anyway
        x, out = add.inputs[block.x_index], add.outputs[0]
        assert x is not None
        if out.is_graph_output():
            identity = ir.node("Identity", [x])
            graph.insert_before(add, identity)
            name = out.name
            ir.convenience.replace_all_uses_with(out, identity.outputs[0], replace_graph_outputs=True)
            graph.remove(add, safe=True)
            identity.outputs[0].name = name
        else:
            ir.convenience.replace_all_uses_with(out, x)
            graph.remove(add, safe=True)
    graph.remove([n for n in graph if id(n) in doomed], safe=True)
    for v in weights.values():
        if not v.uses() and not v.is_graph_output() and v.name is not None and v.name in graph.initializers:
            del graph.initializers[v.name]
    logger.info("removed %d residual block(s): %s", len(chosen), ", ".join(b.add for b in chosen))


def remove_by_values(model: ir.Model, blocks: Iterable[tuple[str, str]],
                     shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[Block]:
    """Remove the blocks named by ``(x, branch_output)`` value names, found again on ``model`` (in place).

    For a model rewritten since the blocks were found (widths pruned: node positions may move, value
    names and the residual structure do not); :class:`UsageError` if one is no longer a removable block."""
    wanted = list(dict.fromkeys(blocks))
    if not wanted:
        return []
    found = {(b.x, b.branch_output): b for b in find_blocks(model, shapes) if b.removable}
    missing = [w for w in wanted if w not in found]
    if missing:
        raise UsageError(f"residual block(s) with branch output {', '.join(repr(m[1]) for m in missing)} "
                         "are no longer removable in the rewritten model")
    chosen = [found[w] for w in wanted]
    remove_found(model, chosen)
    return chosen
