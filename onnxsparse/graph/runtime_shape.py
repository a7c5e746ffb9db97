"""Shape vectors computed at run time: ``Shape -> Gather/Slice -> Unsqueeze -> Concat (-> Cast)``.

Exporters build Reshape/Expand targets from the input's own dims
(TorchScript ``x.view(x.size(0), -1)``, ``x.flatten(2)``, ``view(b, t, h, d)``;
tf2onnx's ``Flatten``; paddle2onnx's ``flatten``).  :func:`trace` reads such a
vector as a list of :class:`Entry`: a constant (with the place it is stored,
so a rule can rewrite it) or "dim ``axis`` of value ``v``" (read by a
``Shape``).  :func:`resolve_reshape` / :func:`resolve_expand` turn a node's
target into output dims; the rules couple what they can prove, and
:func:`shape_reads` tells the ``Shape`` rule which dims such a target reads
safely (the target's rule couples them) and which it reads as data.
:func:`rewrite_entries` changes constant entries of a target during pruning,
:func:`set_entries` does the same on the graph itself (the exact rewrites of
:mod:`onnxsparse.transformer`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from ..errors import Decline
from . import value_facts as _shapes

if TYPE_CHECKING:  # typing_extensions ships with every type checker; TypeIs is in typing only from 3.13
    from typing_extensions import TypeIs

__all__ = ["Entry", "trace", "Resolved", "resolve", "resolve_reshape", "resolve_expand", "shape_reads",
           "rewrite_entries", "set_entries", "set_shape"]

_MAX_DEPTH = 12
_INT_CAST = {ir.DataType.INT64, ir.DataType.INT32}


@dataclass(frozen=True)
class Entry:
    """One element of a shape vector."""

    const: int | None = None  #: the value, for a constant entry
    #: where a constant is stored: (node reading the constant, input index, element index)
    source: tuple[ir.Node, int, int] | None = None
    dim_of: ir.Value | None = None  #: for a dim entry: the value whose dim is read
    axis: int | None = None
    #: nodes from the one reading the constant to the one producing the vector (for cloning)
    path: tuple[ir.Node, ...] = ()
    #: a dim entry is ``scale`` times the dim read (TorchScript repeat_kv: ``Shape(k)[1] * n_rep``)
    scale: int = 1

    @property
    def is_dim(self) -> bool:
        return self.dim_of is not None

    @property
    def read(self) -> tuple[ir.Value, int] | None:
        """``(value, axis)`` whose dim a dim entry reads; ``None`` for a constant entry."""
        return None if self.dim_of is None or self.axis is None else (self.dim_of, self.axis)


def _opset(node: ir.Node) -> int:
    graph = node.graph
    model_opsets = graph.opset_imports if graph is not None else {}
    return node.version or model_opsets.get("", model_opsets.get("ai.onnx", 1))


def _std(node: ir.Node | None) -> TypeIs[ir.Node]:
    return node is not None and node.domain in ("", "ai.onnx")


def trace(vec: ir.Value | None, depth: int = 0) -> list[Entry] | None:
    """Entries of a 1-D int vector (or a scalar, as one entry), or ``None`` if not traceable."""
    if vec is None or depth > _MAX_DEPTH:
        return None
    const = _shapes.constant(vec)
    if const is not None:
        if const.dtype.kind not in "iu" or const.ndim > 1:
            return None
        return [Entry(const=int(c)) for c in const.reshape(-1)]
    node = vec.producer()
    if not _std(node):
        return None
    op = node.op_type
    ins = node.inputs

    def sub(index: int) -> list[Entry] | None:
        value = ins[index] if index < len(ins) else None
        entries = trace(value, depth + 1)
        if entries is None:
            return None
        if _shapes.constant(value) is not None:  # remember where this constant sits
            entries = [Entry(const=e.const, source=(node, index, k), path=(node,)) for k, e in enumerate(entries)]
        else:
            entries = [Entry(e.const, e.source, e.dim_of, e.axis, (*e.path, node) if e.source else (), e.scale)
                       for e in entries]
        return entries

    if op == "Shape":
        x = ins[0]
        d = _shapes.dims(x)
        if d is None:
            return None
        r = len(d)
        start = node.attributes.get_int("start", 0) or 0
        end = node.attributes.get_int("end", r)
        start = min(max(_shapes.norm_axis(start, r), 0), r)
        end = min(max(_shapes.norm_axis(end if end is not None else r, r), 0), r)
        return [Entry(dim_of=x, axis=k) for k in range(start, end)]
    if op in ("Identity",):
        return sub(0)
    if op == "Cast":
        to = node.attributes.get_int("to", 0)
        if to not in (int(t) for t in _INT_CAST):
            return None
        return sub(0)
    if op in ("Unsqueeze", "Squeeze"):
        entries = sub(0)
        return entries if entries is not None and len(entries) == 1 else None
    if op == "Concat":
        if (node.attributes.get_int("axis", 0) or 0) not in (0, -1):
            return None
        out: list[Entry] = []
        for i in range(len(ins)):
            entries = sub(i)
            if entries is None:
                return None
            out.extend(entries)
        return out
    if op == "Gather":
        if (node.attributes.get_int("axis", 0) or 0) != 0:
            return None
        idx = _shapes.constant(ins[1]) if len(ins) > 1 else None
        entries = sub(0)
        if idx is None or entries is None or idx.ndim > 1:
            return None
        n = len(entries)
        try:
            return [entries[int(i) + n if i < 0 else int(i)] for i in idx.reshape(-1)]
        except IndexError:
            return None
    if op == "Slice":
        entries = sub(0)
        if entries is None:
            return None
        bounds = _slice_bounds(node, len(entries))
        return None if bounds is None else entries[bounds[0] : bounds[1]]
    if op == "Reshape":  # a vector reshaped to a vector (TorchScript's ``Reshape(v, [-1])``)
        if _shapes.constant_ints(ins[1]) not in ((-1,),) and len(_shapes.dims(node.outputs[0]) or ()) != 1:
            return None
        entries = sub(0)
        return entries if entries is not None and len(_shapes.dims(ins[0]) or ()) <= 1 else None
    if op == "Mul":  # a dim times a constant
        factor = _scalar_factor(node)
        if factor is None:
            return None
        index, c = factor
        entries = sub(index)
        if entries is None or (c <= 0 and any(e.is_dim for e in entries)):
            return None
        return [Entry(dim_of=e.dim_of, axis=e.axis, scale=e.scale * c) if e.is_dim
                else Entry(const=None if e.const is None else e.const * c) for e in entries]
    if op == "ConstantOfShape":
        length = sub(0)
        tensor = node.attributes.get_tensor("value", None)
        fill = np.zeros((), np.int64) if tensor is None else tensor.numpy().reshape(-1)  # default: int 0
        count = _entry_dim(length[0]) if length is not None and len(length) == 1 else None
        if not isinstance(count, int) or count < 0 or np.size(fill) != 1 or np.asarray(fill).dtype.kind not in "iu":
            return None
        return [Entry(const=int(np.asarray(fill).reshape(-1)[0]))] * count
    if op == "Where":  # torch's expand: ``Where(Equal(v, -1), ones, v)`` keeps every dim of ``v``
        return _trace_where(node, sub)
    return None


def _scalar_factor(node: ir.Node) -> tuple[int, int] | None:
    """For ``Mul(a, c)`` with ``c`` a constant int scalar: (index of ``a``, ``c``)."""
    for index in (0, 1):
        c = _shapes.constant(node.inputs[1 - index])
        if c is not None and c.dtype.kind in "iu" and c.size == 1:
            return index, int(c.reshape(-1)[0])
    return None


def _scales_dim(node: ir.Node, index: int) -> bool:
    """``node`` is ``Mul(dim, c)`` with the dim at input ``index`` and ``c`` a positive constant."""
    factor = _scalar_factor(node)
    return factor is not None and factor[0] == index and factor[1] > 0


def _trace_where(node: ir.Node, sub: Callable[[int], list[Entry] | None]) -> list[Entry] | None:
    cond = node.inputs[0]
    eq = cond.producer() if cond is not None else None
    if not _std(eq) or eq.op_type != "Equal":
        return None
    lhs, rhs = trace(eq.inputs[0], 1), trace(eq.inputs[1], 1)
    a, b = sub(1), sub(2)
    if lhs is None or rhs is None or a is None or b is None:
        return None
    n = max(len(lhs), len(rhs), len(a), len(b))
    if any(len(v) not in (1, n) for v in (lhs, rhs, a, b)):
        return None
    out: list[Entry] = []
    for i in range(n):
        p, q = lhs[i if len(lhs) > 1 else 0], rhs[i if len(rhs) > 1 else 0]
        if p.is_dim and q.is_dim:
            return None
        if p.is_dim or q.is_dim:  # a dim (>= 0) never equals a negative constant
            const = q.const if p.is_dim else p.const
            if const is None or const >= 0:
                return None
            equal = False
        else:
            equal = p.const == q.const
        pick = a if equal else b
        out.append(pick[i if len(pick) > 1 else 0])
    return out


#: identifies a dim that is not a static number: ("sym", name), ("anon", value name, axis), or
#: ("prod", tokens, int) for the product of other dims (a ``-1`` absorbing symbolic dims)
Token = tuple


def _tokens(value: ir.Value) -> list[int | Token] | None:
    """Dims of ``value``: ints, or tokens for symbolic/unknown dims."""
    if value.shape is None:
        d = _shapes.dims(value)
        return None if d is None else [x if x is not None else ("anon", value.name, k) for k, x in enumerate(d)]
    out: list[int | Token] = []
    for k, dim in enumerate(value.shape):
        if isinstance(dim, int) and dim >= 0:
            out.append(dim)
        else:
            name = getattr(dim, "value", None)
            out.append(("sym", name) if name else ("anon", value.name, k))
    return out


def _entry_dim(entry: Entry) -> int | Token | None:
    read = entry.read
    if read is None:
        return entry.const
    toks = _tokens(read[0])
    if toks is None or read[1] >= len(toks):
        return None
    tok = toks[read[1]]
    if entry.scale == 1:
        return tok
    return tok * entry.scale if isinstance(tok, int) else None


@dataclass(frozen=True)
class Resolved:
    """A runtime target read as entries, with the output dims it produces."""

    entries: tuple[Entry, ...]
    out: tuple[int | Token, ...]  #: output dims (ints or tokens)


def resolve_reshape(node: ir.Node) -> Resolved | None:
    """Output dims of a Reshape whose target is a traceable run-time vector."""
    if not _std(node) or node.op_type != "Reshape" or len(node.inputs) < 2:
        return None
    x, target = node.inputs[0], node.inputs[1]
    if x is None or target is None or _shapes.constant(target) is not None:
        return None
    allowzero = bool(node.attributes.get_int("allowzero", 0))
    entries = trace(target)
    xt = _tokens(x) if x is not None else None
    if entries is None or xt is None:
        return None
    out: list[int | Token | None] = []
    for j, e in enumerate(entries):
        if not e.is_dim and e.const == 0:
            if allowzero or j >= len(xt):  # a literal 0-sized axis: not a pruning target
                return None
            out.append(xt[j])
        else:
            out.append(_entry_dim(e))
    if any(d is None for d in out if d != -1) or sum(1 for d in out if d == -1) > 1:
        return None
    if -1 in out:
        # the unknown factor: x's product over the other entries'; the other entries' symbolic
        # tokens must be x's, x's tokens left over make the factor symbolic (``x.view(-1, x.size(-1))``)
        x_ints = [d for d in xt if isinstance(d, int)]
        left = [d for d in xt if not isinstance(d, int)]
        o_ints = [d for d in out if isinstance(d, int) and d != -1]
        for tok in (d for d in out if not isinstance(d, int)):
            if tok not in left:
                return None
            left.remove(tok)
        num, den = int(np.prod(x_ints, dtype=np.int64)), int(np.prod(o_ints, dtype=np.int64))
        if den <= 0 or num % den:
            return None
        if not left:
            factor: int | Token = num // den
        elif len(left) == 1 and num == den:
            factor = left[0]
        else:
            factor = ("prod", tuple(sorted(left, key=repr)), num // den)
        out[out.index(-1)] = factor
    return Resolved(tuple(entries), tuple(out))  # type: ignore[arg-type]


def resolve_expand(node: ir.Node) -> Resolved | None:
    """Output dims of an Expand whose shape is a traceable run-time vector."""
    if not _std(node) or node.op_type != "Expand" or len(node.inputs) < 2:
        return None
    x, shape = node.inputs[0], node.inputs[1]
    if x is None or shape is None or _shapes.constant(shape) is not None:
        return None
    entries = trace(shape)
    xt = _tokens(x)
    if entries is None or xt is None:
        return None
    r = max(len(entries), len(xt))
    xs = [1] * (r - len(xt)) + list(xt)
    es: list[Entry | None] = [None] * (r - len(entries)) + list(entries)
    out: list[int | Token] = []
    for a, e in zip(xs, es):
        b = 1 if e is None else _entry_dim(e)
        if b is None:
            return None
        if b == 1 or b == a:
            out.append(a)
        elif a == 1:
            out.append(b)
        else:
            return None
    return Resolved(tuple(entries), tuple(out))


def resolve(node: ir.Node) -> Resolved | None:
    if node.op_type == "Reshape":
        return resolve_reshape(node)
    if node.op_type == "Expand":
        return resolve_expand(node)
    return None


def shape_reads(shape_out: ir.Value, length: int) -> set[int] | None:
    """Positions of a ``Shape`` output that are read as data (``None``: unknown, i.e. all).

    A position that only reaches the target of a Reshape/Expand that
    :func:`resolve` understands is *not* read: that node's rule couples the dim
    with the output axis it sizes, so both shrink together.
    """
    read: set[int] = set()

    def walk(value: ir.Value, mapping: Sequence[int | None], depth: int) -> bool:
        if depth > _MAX_DEPTH:
            return False
        for use in value.uses():
            node, index = use.node, use.idx
            mapped = [m for m in mapping if m is not None]
            if not mapped:
                continue
            if not _std(node):
                return False
            op = node.op_type
            if op in ("Reshape", "Expand") and index == 1:
                if not _accepted(node):
                    read.update(mapped)
                continue
            if op == "Shape":
                continue  # the length of the vector, not its values
            if op == "Equal" and _negative_constant(node.inputs[1 - index]):
                continue  # a dim (>= 0) compared with a negative constant: the result never depends on it
            passes = (op == "Concat" or index == 0 or (op == "Mul" and _scales_dim(node, index))
                      or (op == "Where" and index in (1, 2)))
            if not passes:
                read.update(mapped)
                continue
            out = node.outputs[0] if node.outputs else None
            if out is None:
                continue
            if op in ("Cast", "Identity", "Unsqueeze", "Squeeze"):
                new: Sequence[int | None] | None = mapping
            elif op == "Mul":
                new = mapping if _scales_dim(node, index) and len(mapping) == 1 else None
            elif op == "Reshape":
                new = mapping if len(_shapes.dims(out) or ()) == 1 else None
            elif op == "Where":
                new = mapping if len(_shapes.dims(out) or ()) == 1 and trace(out) is not None else None
            elif op == "Gather" and (node.attributes.get_int("axis", 0) or 0) == 0:
                idx = _shapes.constant(node.inputs[1]) if len(node.inputs) > 1 else None
                new = None if idx is None else [mapping[int(i)] if -len(mapping) <= i < len(mapping) else None
                                                for i in idx.reshape(-1)]
            elif op == "Slice":
                kept = trace_positions(node, len(mapping))
                new = None if kept is None else [mapping[i] for i in kept]
            elif op == "Concat" and (node.attributes.get_int("axis", 0) or 0) in (0, -1):
                lengths = _vector_lengths(node.inputs)
                if lengths is None:
                    new = None
                else:
                    offset = sum(lengths[:index])
                    new = [None] * offset + list(mapping) + [None] * (sum(lengths) - offset - len(mapping))
            else:
                new = None
            if new is None:
                read.update(mapped)
                continue
            if not walk(out, new, depth + 1):
                read.update(mapped)
        return True

    if not walk(shape_out, list(range(length)), 0):
        return None
    return read


def _vector_lengths(values: Sequence[ir.Value | None]) -> list[int] | None:
    """Lengths of vectors (a scalar counts 1), or ``None`` when one is unknown or not a vector."""
    lengths: list[int] = []
    for value in values:
        d = _shapes.dims(value)
        if d is None or len(d) > 1:
            return None
        length = d[0] if d else 1
        if length is None:
            return None
        lengths.append(length)
    return lengths


def _accepted(node: ir.Node) -> bool:
    """The rule of this Reshape/Expand accepts its run-time target (so it couples the dims it reads)."""
    if node.op_type == "Expand":
        return resolve_expand(node) is not None
    from .rules.shape import runtime_runs

    try:
        runtime_runs(node)
    except Decline:
        return False
    return True


def _negative_constant(value: ir.Value | None) -> bool:
    """``value`` is a constant int vector (possibly computed: ``ConstantOfShape(..) * -1``), all negative."""
    entries = trace(value)
    return entries is not None and len(entries) > 0 and all(not e.is_dim and e.const is not None and e.const < 0 for e in entries)


def trace_positions(node: ir.Node, n: int) -> list[int] | None:
    """Positions of a length-``n`` vector a constant ``Slice`` keeps (step 1, axis 0)."""
    bounds = _slice_bounds(node, n)
    return None if bounds is None else list(range(*bounds))


def _slice_bounds(node: ir.Node, n: int) -> tuple[int, int] | None:
    """``[start, stop)`` a constant 1-D ``Slice`` (step 1, axis 0) keeps of a length-``n`` vector, clamped."""
    ins = node.inputs
    if _opset(node) < 10:
        starts, ends = node.attributes.get_ints("starts", None), node.attributes.get_ints("ends", None)
    else:
        starts = _shapes.constant_ints(ins[1]) if len(ins) > 1 else None
        ends = _shapes.constant_ints(ins[2]) if len(ins) > 2 else None
        axes = _shapes.constant_ints(ins[3]) if len(ins) > 3 and ins[3] is not None else (0,)
        steps = _shapes.constant_ints(ins[4]) if len(ins) > 4 and ins[4] is not None else (1,)
        if axes not in ((0,), (-1,)) or steps != (1,):
            return None
    if starts is None or ends is None or len(starts) != 1 or len(ends) != 1:
        return None

    def clamp(i: int) -> int:
        return min(max(i + n if i < 0 else i, 0), n)

    return clamp(int(starts[0])), clamp(int(ends[0]))


def set_shape(value: ir.Value, dims: Sequence[int | Token]) -> None:
    """Record dims a rule proved on ``value`` when shape inference left them out."""
    new: list[int | ir.SymbolicDim] = []
    for d in dims:
        if isinstance(d, int):
            new.append(d)
        elif d[0] == "sym":
            new.append(ir.SymbolicDim(d[1]))
        else:
            new.append(ir.SymbolicDim(None))
    old = value.shape
    if old is None or len(old) != len(new):
        value.shape = ir.Shape(new)
        return
    if any(not isinstance(a, int) and isinstance(b, int) for a, b in zip(old, new)):
        value.shape = ir.Shape([b if isinstance(b, int) else a for a, b in zip(old, new)])


def rewrite_entries(ctx, node: ir.Node, target_index: int, entries: Sequence[Entry],
                    edits: dict[int, int]) -> None:
    """Set constant entries ``{entry index: new value}`` of ``node``'s run-time target.

    The constants live in nodes feeding the target (e.g. a ``Concat``).  When
    any value on the way is used elsewhere (dynamo shares one target between
    layers) or is a graph output, those nodes are cloned for ``node`` first, so
    nothing else changes.
    """
    _set_entries(ctx.set_node_input_constant, getattr(ctx, "dry_run", False), node, target_index, entries, edits,
                 f"__pruned_{node.name}")


def set_entries(node: ir.Node, target_index: int, entries: Sequence[Entry], edits: dict[int, int],
                *, suffix: str) -> bool:
    """:func:`rewrite_entries` on the graph itself, outside a pruning ``RewriteContext``.

    ``node`` (already in its graph) gets a target whose entries ``edits`` are set; the nodes on
    the way that another reader shares are cloned for it first (named ``<name><suffix>``), and
    each constant changed becomes a new initializer (``<name><suffix>``) unless ``node``'s
    path is its only reader, when it is edited in place.  Returns ``False``, changing nothing,
    when an entry to change is not a constant stored on the target's path (a run-time dim,
    or a constant computed by ``Mul`` / ``ConstantOfShape``).
    """
    if any(entries[i].source is None for i, v in edits.items() if entries[i].const != v):
        return False
    graph = node.graph
    if graph is None:
        raise ValueError(f"{node.op_type} node {node.name!r} is not in a graph")

    def set_constant(src_node: ir.Node, index: int, array: np.ndarray) -> None:
        array = np.asarray(array).copy(order="C")
        old = src_node.inputs[index]
        if old is not None and old.is_initializer() and len(old.uses()) == 1 and not old.is_graph_output() \
                and not old.is_graph_input():
            old.const_value = ir.Tensor(array, name=old.name)
            old.shape = ir.Shape(array.shape)
            return
        base = f"{old.name if old is not None and old.name else src_node.name}{suffix}"
        name, k = base, 0
        while name in graph.initializers:
            k += 1
            name = f"{base}.{k}"
        value = ir.Value(name=name, shape=ir.Shape(array.shape), const_value=ir.Tensor(array, name=name),
                         type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
        graph.register_initializer(value)
        src_node.replace_input_with(index, value)
        if old is not None and old.name is not None and old.is_initializer() and not old.uses() \
                and not old.is_graph_output() and graph.initializers.get(old.name) is old:
            graph.initializers.pop(old.name)

    _set_entries(set_constant, False, node, target_index, entries, edits, suffix)
    return True


def _set_entries(set_constant, dry_run: bool, node: ir.Node, target_index: int, entries: Sequence[Entry],
                 edits: dict[int, int], suffix: str) -> None:
    """The work of :func:`rewrite_entries` / :func:`set_entries`; ``set_constant(node, index, array)``
    gives a node's input a new constant."""
    sources = {i: source for i, v in edits.items() if (source := entries[i].source) is not None
               and entries[i].const != v}
    if not sources:
        return
    path_nodes: list[ir.Node] = []
    for i in sources:
        for n in entries[i].path:
            if n not in path_nodes:
                path_nodes.append(n)
    target = node.inputs[target_index]
    shared = any(len(n.outputs[0].uses()) != 1 or n.outputs[0].is_graph_output() for n in path_nodes)
    if dry_run:  # a check: compute the new constants on the originals, change nothing
        shared = False
    clones: dict[ir.Node, ir.Node] = {}
    if shared:
        graph = node.graph
        if graph is None:
            raise ValueError(f"{node.op_type} node {node.name!r} is not in a graph")
        order = {n: k for k, n in enumerate(graph)}
        for n in sorted(path_nodes, key=lambda n: order.get(n, 0)):
            inputs = [clones[src].outputs[0] if v is not None and (src := v.producer()) is not None and src in clones
                      else v for v in n.inputs]
            clone = ir.Node(n.domain, n.op_type, inputs, attributes=list(n.attributes.values()),
                            name=f"{n.name}{suffix}", version=n.version)
            out, old = clone.outputs[0], n.outputs[0]
            out.name = f"{old.name}{suffix}"
            out.shape, out.type = old.shape, old.type
            graph.insert_before(node, clone)
            clones[n] = clone
        producer = None if target is None else target.producer()
        if producer is None or producer not in clones:  # pragma: no cover - the target's producer is on every path
            raise AssertionError("run-time target producer not on the constant's path")
        node.replace_input_with(target_index, clones[producer].outputs[0])
    by_source: dict[tuple[ir.Node, int], dict[int, int]] = {}
    for i, (src_node, index, element) in sources.items():
        by_source.setdefault((clones.get(src_node, src_node), index), {})[element] = edits[i]
    for (src_node, index), elements in by_source.items():
        array = np.array(_shapes.constant(src_node.inputs[index]), copy=True)
        flat = array.reshape(-1)
        for element, v in elements.items():
            flat[element] = v
        set_constant(src_node, index, flat.reshape(array.shape))
