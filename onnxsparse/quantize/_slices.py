"""onnxruntime's weight quantizer run over slices of a large model (issue 16: peak memory).

``quantize_dynamic`` and ``MatMulNBitsQuantizer`` load the whole model with its weights and hold the
float and the quantized copies until they save: about 3x the model.  Their work on a MatMul, Gemm
or Conv depends only on that node, its weight and (dynamic mode) the activation it reads, which
several nodes may share (one ``DynamicQuantizeLinear`` per activation).  So the nodes with a
constant weight are grouped by the tensors they share, the groups packed into slices of at most
:data:`SLICE_BYTES` of weights, and each slice -- a small model of those nodes, their weights kept
in the input's external-data file, every other input a graph input -- is quantized by onnxruntime
on its own.  The results are stitched back into the untouched rest of the graph: the same nodes and
the same tensors as one whole-model call (``tests/test_quantize_slices.py``), with every slice's
weights left in its own external-data file next to the stitched model.

Graphs where onnxruntime's choice for a node depends on more than that node (a quantized
``Gather`` feeding pass-through ops, ``Attention``, ``LSTM``) are not sliced: :func:`plan_slices`
declines and the caller quantizes the whole model.
"""

from __future__ import annotations

import gc
import heapq
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import onnx

from ..errors import Decline
from ..limits import nbytes
from .config import QuantizeSettings
from .modes import QuantMode, RunContext

__all__ = ["SLICE_BYTES", "SLICED_OPS", "plan_slices", "quantize_in_slices", "quantize_external", "slicing_step"]

logger = logging.getLogger(__name__)

#: float weight bytes per slice: onnxruntime holds about three times this while it quantizes one
SLICE_BYTES = 256 * 2**20

#: per mode, the op types whose quantization depends only on the node, its weight and its activation
SLICED_OPS: dict[str, frozenset[str]] = {
    "dynamic": frozenset({"MatMul", "Gemm", "Conv"}),
    "int4": frozenset({"MatMul"}),
}

#: op types onnxruntime's dynamic quantizer treats in ways that reach beyond one node (a ``Gather``
#: of a weight is sliced alone when no reader of its output takes quantized input)
_NOT_SLICEABLE = frozenset({"Gather", "Attention", "LSTM", "EmbedLayerNormalization"})

#: op types of onnxruntime's dynamic (integer-ops) registry: the readers a quantized tensor may flow into
_INTEGER_OPS = frozenset({"Conv", "MatMul", "Attention", "LSTM", "Gather", "Transpose", "EmbedLayerNormalization"})

_FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE})

def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    return nbytes(tensor.dims, onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))


def _float_weight(node: onnx.NodeProto, index: int, inits: dict[str, onnx.TensorProto]) -> bool:
    weight = inits.get(node.input[index]) if len(node.input) > index else None
    return weight is not None and weight.data_type in _FLOATS


def _weight_bytes(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> int:
    return _tensor_bytes(inits[node.input[0 if node.op_type == "Gather" else 1]])


def plan_slices(model: onnx.ModelProto, mode: str, exclude: Iterable[str] = (),
                budget: int | None = None) -> list[list[int]]:
    """Indices of ``model.graph.node`` per slice, in graph order; :class:`Decline` when slicing is unsafe.

    ``budget``: weight bytes per slice (default :data:`SLICE_BYTES`); a group larger than it is one slice.
    """
    budget = SLICE_BYTES if budget is None else budget
    ops = SLICED_OPS.get(mode)
    if ops is None:
        raise Decline(f"{mode} mode quantizes the whole model at once")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    excluded = set(exclude)
    members: list[int] = []
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for i, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx", "com.microsoft") or node.name in excluded:
            continue
        if mode == "dynamic" and node.op_type in _NOT_SLICEABLE:
            if node.op_type != "Gather" or not _float_weight(node, 0, inits):
                if node.op_type != "Gather":
                    raise Decline(f"{node.op_type} node {node.name!r}: onnxruntime quantizes it with what surrounds it")
                continue
            # onnxruntime keeps a quantized table's output quantized for readers that take int8 inputs
            onward = sorted({r.op_type for r in readers.get(node.output[0], []) if r.op_type in _INTEGER_OPS})
            if onward:
                raise Decline(f"Gather node {node.name!r} feeds {', '.join(onward)}: its quantized output may flow on")
            members.append(i)
        elif node.op_type in ops and node.domain in ("", "ai.onnx") and _float_weight(node, 1, inits):
            members.append(i)
    if len(members) < 2:
        raise Decline("fewer than two weighted nodes: nothing to split")

    # Union-find: nodes reading a common tensor (an activation or a weight) quantize together.
    parent = {i: i for i in members}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_reader: dict[str, int] = {}
    for i in members:
        for name in graph.node[i].input:
            if not name:
                continue
            if name in first_reader:
                parent[root(i)] = root(first_reader[name])
            else:
                first_reader[name] = i
    groups: dict[int, list[int]] = {}
    for i in members:
        groups.setdefault(root(i), []).append(i)

    slices: list[list[int]] = []
    size = 0
    for group in sorted(groups.values(), key=lambda g: g[0]):
        weight = sum(_weight_bytes(graph.node[i], inits) for i in group)
        if slices and size + weight <= budget:
            slices[-1].extend(group)
            size += weight
        else:
            slices.append(list(group))
            size = weight
    if len(slices) < 2:
        raise Decline(f"the weights fit one slice of {budget} bytes")
    return [sorted(s) for s in slices]


def _known_types(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    return {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}


def _value_info(name: str, known: dict[str, onnx.ValueInfoProto], elem_type: int) -> onnx.ValueInfoProto:
    if name in known and known[name].type.tensor_type.elem_type:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(known[name])
        return vi
    return onnx.helper.make_tensor_value_info(name, elem_type, None)


def slice_model(model: onnx.ModelProto, indices: Sequence[int]) -> onnx.ModelProto:
    """The nodes at ``indices`` as a model of their own; weights stay references to the same files."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    known = _known_types(graph)
    nodes = [graph.node[i] for i in indices]
    produced = {o for n in nodes for o in n.output}
    inputs: list[onnx.ValueInfoProto] = []
    weights: list[onnx.TensorProto] = []
    seen: set[str] = set()
    for node in nodes:
        for name in node.input:
            if not name or name in seen or name in produced:
                continue
            seen.add(name)
            if name in inits:
                weights.append(inits[name])
            elif name in known and known[name].type.tensor_type.elem_type:
                inputs.append(_value_info(name, known, 0))
            else:
                raise Decline(f"the type of {name!r}, read by {node.name!r}, is unknown")
    outputs: list[onnx.ValueInfoProto] = []
    for node in nodes:
        elem = known[node.input[0]].type.tensor_type.elem_type if node.input[0] in known else 0
        outputs.extend(_value_info(o, known, elem) for o in node.output if o)
    sub = onnx.helper.make_graph(nodes, f"{graph.name}_slice", inputs, outputs, weights)
    out = onnx.helper.make_model(sub, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs) if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) else ():
                used |= _used_names(sub)
    return used


def _topological(nodes: list[tuple[float, onnx.NodeProto]], available: set[str]) -> list[onnx.NodeProto]:
    """Kahn's order, ties broken by the given rank (graph order of what each node came from)."""
    producer: dict[str, int] = {o: k for k, (_, n) in enumerate(nodes) for o in n.output if o}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for k, (_, node) in enumerate(nodes):
        deps = {producer[i] for i in node.input if i in producer and i not in available and producer[i] != k}
        waiting[k] = len(deps)
        for d in deps:
            readers.setdefault(d, []).append(k)
    ready = [(rank, k) for k, (rank, _) in enumerate(nodes) if waiting[k] == 0]
    heapq.heapify(ready)
    order: list[onnx.NodeProto] = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(nodes[k][1])
        for r in readers.get(k, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, (nodes[r][0], r))
    if len(order) != len(nodes):
        raise Decline("the stitched graph has a cycle")
    return order


def stitch(model: onnx.ModelProto, slices: Sequence[Sequence[int]], results: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    """``model`` with each slice's nodes replaced by onnxruntime's result for it."""
    graph = model.graph
    in_slice = {i: s for s, indices in enumerate(slices) for i in indices}
    ranked: list[tuple[float, onnx.NodeProto]] = []
    for i, node in enumerate(graph.node):
        if i not in in_slice:
            ranked.append((float(i), node))
    for indices, result in zip(slices, results):
        base, count = float(indices[0]), len(result.graph.node)
        ranked.extend((base + k / (count + 1), node) for k, node in enumerate(result.graph.node))

    initializers: dict[str, onnx.TensorProto] = {}
    for result in results:
        for tensor in result.graph.initializer:
            initializers.setdefault(tensor.name, tensor)
    for tensor in graph.initializer:
        initializers.setdefault(tensor.name, tensor)
    available = {i.name for i in graph.input} | set(initializers)
    nodes = _topological(ranked, available)

    out = onnx.ModelProto()
    out.CopyFrom(results[0])
    del out.graph.node[:], out.graph.initializer[:], out.graph.input[:], out.graph.output[:], out.graph.value_info[:]
    out.graph.name = graph.name
    out.graph.node.extend(nodes)
    used = _used_names(out.graph) | {o.name for o in graph.output}
    out.graph.initializer.extend(t for name, t in initializers.items() if name in used)
    out.graph.input.extend(graph.input)
    out.graph.output.extend(graph.output)
    produced = {o for n in nodes for o in n.output}
    infos = {vi.name: vi for vi in graph.value_info if vi.name in produced}
    for result in results:
        for vi in result.graph.value_info:
            infos.setdefault(vi.name, vi)
    out.graph.value_info.extend(infos.values())
    out.graph.sparse_initializer.extend(graph.sparse_initializer)
    opsets: dict[str, int] = {}
    for m in (model, *results):
        for op in m.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    del out.opset_import[:]
    out.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    out.ir_version = max(model.ir_version, *(r.ir_version for r in results))
    del out.functions[:]
    out.functions.extend(model.functions)
    return out


def quantize_in_slices(run_slice: Callable[[Path, Path], None], source: Path, output: Path, mode: str, exclude: Sequence[str],
                       budget: int | None = None) -> int:
    """Quantize ``source`` slice by slice into ``output`` (same folder); the number of slices.

    ``run_slice(src, dst)`` quantizes one slice file to another with onnxruntime, its weights kept in
    external data.  Raises :class:`Decline` (before writing anything) when the graph cannot be sliced.
    """
    model = onnx.load(str(source), load_external_data=False)
    slices = plan_slices(model, mode, exclude, budget)
    folder = source.parent
    results: list[onnx.ModelProto] = []
    for k, indices in enumerate(slices):
        src, dst = folder / f"slice{k}.onnx", folder / f"slice{k}.quantized.onnx"
        onnx.save_model(slice_model(model, indices), str(src))
        run_slice(src, dst)
        results.append(onnx.load(str(dst), load_external_data=False))
        src.unlink()
        dst.unlink()  # its weights stay in dst's data file, which the stitched model refers to
        gc.collect()  # the quantizer's copies of this slice's weights
        logger.debug("quantized slice %d of %d (%d nodes)", k + 1, len(slices), len(indices))
    onnx.save_model(stitch(model, slices, results), str(output))
    return len(slices)


#: the file (next to the quantizer's output) where :func:`quantize_external` says how it quantized
SLICING_NOTE = "slicing.json"


def quantize_external(quant_mode: QuantMode, settings: QuantizeSettings, ctx: RunContext) -> None:
    """``quant_mode.run`` for a model with external data: in slices when :func:`plan_slices` allows.

    How it went (``{"slices": N}`` or ``{"declined": reason}``) is written to :data:`SLICING_NOTE`
    beside the output, for the report (this runs in a child process).
    """

    def run_slice(src: Path, dst: Path) -> None:
        quant_mode.run(settings, RunContext(src, dst, list(ctx.exclude), None, True))

    note: dict[str, object]
    try:
        note = {"slices": quantize_in_slices(run_slice, ctx.source, ctx.output, settings.mode, ctx.exclude)}
    except Decline as exc:
        logger.debug("quantizing the whole model at once: %s", exc.reason)
        quant_mode.run(settings, ctx)
        note = {"declined": exc.reason}
    (ctx.output.parent / SLICING_NOTE).write_text(json.dumps(note))


def slicing_step(folder: Path) -> tuple[str | None, dict[str, str] | None]:
    """(step done, step skipped with its reason) for the report, from :data:`SLICING_NOTE` in ``folder``."""
    path = folder / SLICING_NOTE
    if not path.is_file():
        return None, None
    note = json.loads(path.read_text())
    if "slices" in note:
        return f"onnxruntime's quantizer over {note['slices']} weight slices (external-data model; same tensors as one call)", None
    return None, {"step": "quantizer in weight slices", "reason": f"{note['declined']}; quantized in one call"}
