"""Put tensors into a model in a sparse format, find them again, and turn them back into initializers.

A stored tensor is a few payload initializers + a decode subgraph whose last
node outputs a value with the tensor's original name, so every consumer is
untouched.  The model metadata entry ``onnxsparse.storage`` (JSON) records, per
tensor, the format, decode graph, shape, dtype, fill bits, payload initializer
names and codec parameters: the Python loader and ``densify`` decode with numpy
from it.  If a tool dropped the metadata, the node markers (see ``_graph``)
still identify the decode nodes and the subgraph is evaluated with onnxruntime.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from ..errors import Decline, ModelLoadError
from .base import SUPPORTED_DTYPES, Codec, CodecOptions, Encoded, TensorData, contiguous
from ._graph import CONST_PREFIX, NODE_PREFIX, DecodeBuilder, decode_group, decode_target, is_decode_node
from ._registry_instance import FORMATS

__all__ = [
    "META_KEY",
    "StoredTensor",
    "codec_refusal",
    "Candidate",
    "AUTO",
    "read_storage",
    "write_storage",
    "get_codec",
    "candidate",
    "choose",
    "store",
    "decode_arrays",
    "decode_stored",
    "expand_stored",
    "expand_all",
    "information_bound_bits",
]

logger = logging.getLogger(__name__)

META_KEY = "onnxsparse.storage"
STORAGE_VERSION = 1
AUTO = "auto"
#: auto keeps the cheaper-to-decode format when it is within this fraction of the smallest
AUTO_SLACK = 0.02
#: onnxruntime does not fold a node whose output exceeds this (its default
#: ``optimization.constant_folding_max_output_size_in_bytes``); such a decode would run at every inference
FOLD_LIMIT_BYTES = 1 << 30


# ------------------------------------------------------------------ metadata


@dataclass
class StoredTensor:
    """How one tensor is stored (serialised into the model metadata)."""

    name: str
    format: str
    decoder: str
    shape: list[int]
    dtype: str
    fill_bits: str
    inputs: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def numpy_dtype(self) -> np.dtype:
        return _np_dtype(self.dtype)

    def fill(self) -> np.ndarray:
        raw = bytes.fromhex(self.fill_bits)
        return np.frombuffer(raw, dtype=self.numpy_dtype).reshape(())

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> StoredTensor:
        return cls(
            name=name,
            format=str(data["format"]),
            decoder=str(data.get("decoder", "")),
            shape=[int(d) for d in data["shape"]],
            dtype=str(data["dtype"]),
            fill_bits=str(data.get("fill_bits", "")),
            inputs={str(k): str(v) for k, v in data["inputs"].items()},
            params=dict(data.get("params", {})),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("name")
        return data


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def read_storage(model: ir.Model) -> dict[str, StoredTensor]:
    """The tensors the metadata says are stored sparsely (empty if none)."""
    text = model.metadata_props.get(META_KEY)
    if not text:
        return {}
    try:
        data = json.loads(text)
        return {name: StoredTensor.from_json(name, spec) for name, spec in data.get("tensors", {}).items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"corrupt {META_KEY} metadata: {exc}") from exc


def write_storage(model: ir.Model, specs: Mapping[str, StoredTensor]) -> None:
    if not specs:
        model.metadata_props.pop(META_KEY, None)
        return
    payload = {"version": STORAGE_VERSION, "tensors": {name: spec.to_json() for name, spec in specs.items()}}
    model.metadata_props[META_KEY] = json.dumps(payload, separators=(",", ":"))


def get_codec(name: str) -> Codec:
    return FORMATS.get(name)()


# ------------------------------------------------------------------- choosing


@dataclass
class Candidate:
    """One way to store a tensor, with its exact cost."""

    format: str
    decoder: str | None
    encoded: Encoded | None
    stored_bytes: int
    opset: int = 0


def information_bound_bits(n: int, k: int, bits_per_value: int) -> float:
    """``k*b + log2(C(n, k))``: no lossless format does better on average (METHODS.md)."""
    if n <= 0:
        return 0.0
    log2_binomial = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
    return k * bits_per_value + max(log2_binomial, 0.0)


def dense_candidate(tensor: TensorData) -> Candidate:
    return Candidate("dense", None, None, tensor.n * tensor.dtype.itemsize, 0)


def codec_refusal(check: Callable[..., str | None], *args: Any) -> str | None:
    """Why a codec's ``check``/``check_decoder`` says no, or ``None``: the one place that reads both a raised
    :class:`~onnxsparse.errors.Decline` (built-in codecs) and a returned reason (codecs written before)."""
    try:
        return check(*args) or None
    except Decline as exc:
        return exc.reason


def candidate(tensor: TensorData, fmt: str, options: CodecOptions, max_opset: int,
              graph: ir.Graph | None = None, decoder: str | None = None) -> Candidate:
    """Encode ``tensor`` as ``fmt``; raises :class:`~onnxsparse.errors.Decline` with why it cannot be used.

    ``decoder`` forces a decode-graph variant; otherwise the first one the opset allows.
    """
    if fmt == "dense":
        return dense_candidate(tensor)
    if tensor.dtype.name not in SUPPORTED_DTYPES:
        raise Decline(f"dtype {tensor.dtype.name} is not supported by the sparse formats", subject=tensor.name)
    codec = get_codec(fmt)
    reason = codec_refusal(codec.check, tensor, options)
    if reason is not None:
        raise Decline(reason, subject=tensor.name)
    refusals = {d: codec_refusal(codec.check_decoder, d, tensor)
                for d in ([decoder] if decoder else codec.decoder_order(tensor))}
    variants = [d for d, refusal in refusals.items() if refusal is None]
    if not variants:
        raise Decline("; ".join(r for r in refusals.values() if r), subject=tensor.name)
    usable = [d for d in variants if codec.min_opset(d, tensor.dtype) <= max_opset]
    if not usable:
        need = min(codec.min_opset(d, tensor.dtype) for d in variants)
        raise Decline(f"{fmt} needs opset {need}, the model allows {max_opset}", subject=tensor.name)
    decoder = usable[0]
    encoded = codec.layout(codec.encode(tensor, options), decoder)
    largest = codec.largest_intermediate(encoded, decoder, tensor)
    if largest > FOLD_LIMIT_BYTES:
        raise Decline(f"{fmt} decode would compute a {largest / 2**30:.2f} GiB tensor; onnxruntime folds at most "
                      f"{FOLD_LIMIT_BYTES / 2**30:.0f} GiB, so it would decode at every inference", subject=tensor.name)
    builder = DecodeBuilder(graph if graph is not None else ir.Graph([], [], nodes=[]), tensor.name,
                            tensor.shape, tensor.fill)
    stored = {role: builder.stored(role, array) for role, array in encoded.arrays.items()}
    output = codec.build(builder, encoded, stored, decoder)
    builder.finish(output, tensor.shape)
    size = builder.payload_bytes() + builder.extra_bytes() + len(tensor.name) + 24  # + final-node metadata
    _detach(builder.nodes)
    return Candidate(fmt, decoder, encoded, size, codec.min_opset(decoder, tensor.dtype))


def _detach(nodes: Sequence[ir.Node]) -> None:
    """Drop the uses a trial decode graph put on the model's shared constants.

    Left in place, they kept every trial graph, with its payload, alive as long as the model
    (issue 16: several times a large tensor) and made unused constants look used.
    """
    for node in nodes:
        for index in range(len(node.inputs)):
            node.replace_input_with(index, None)


def choose(tensor: TensorData, fmt: str, options: CodecOptions, max_opset: int,
           graph: ir.Graph | None = None, slack: float = AUTO_SLACK,
           decoders: Mapping[str, str] | None = None) -> tuple[Candidate, str | None]:
    """The candidate to use and, if the tensor stays dense, why.

    ``auto`` takes the smallest; among those within ``slack`` of it, the one
    whose decode graph is cheapest to fold (``Codec.cost_rank``).
    """
    decoders = decoders or {}
    dense = dense_candidate(tensor)
    if fmt == "dense":
        return dense, "format dense requested"
    if fmt != AUTO:
        try:
            result = candidate(tensor, fmt, options, max_opset, graph, decoders.get(fmt))
        except Decline as exc:
            return dense, str(exc)
        if result.stored_bytes >= dense.stored_bytes:
            return dense, f"{fmt} would take {result.stored_bytes} bytes, dense {dense.stored_bytes}"
        return result, None
    # Only the provisional winner keeps its payload: every format's encoding of a large tensor alive at
    # once cost several times the tensor (issue 16). A winner whose payload was dropped is encoded again.
    options_tried: list[Candidate] = [dense]
    failures: list[str] = []
    best = dense
    for name, cls in FORMATS.items():
        if name == "dense" or not cls.in_auto:
            continue
        try:
            result = candidate(tensor, name, options, max_opset, graph, decoders.get(name))
        except Decline as exc:
            failures.append(f"{name}: {exc}")
            continue
        options_tried.append(result)
        best = _auto_pick(options_tried, slack)
        for other in options_tried:
            if other is not best:
                other.encoded = None
    if best.format == "dense":
        if len(options_tried) == 1 and failures:
            return best, "no format applies (" + "; ".join(failures) + ")"
        return best, "dense is smallest"
    if best.encoded is None:
        again = candidate(tensor, best.format, options, max_opset, graph, decoders.get(best.format))
        assert isinstance(again, Candidate) and again.stored_bytes == best.stored_bytes  # encoding is deterministic
        best = again
    return best, None


def _auto_pick(tried: Sequence[Candidate], slack: float) -> Candidate:
    """Among the candidates within ``slack`` of the smallest, the one cheapest to decode."""
    smallest = min(c.stored_bytes for c in tried)
    near = [c for c in tried if c.stored_bytes <= smallest * (1 + slack)]
    return min(near, key=lambda c: (FORMATS.get(c.format).cost_rank, c.stored_bytes))


# ------------------------------------------------------------------- storing


def store(model: ir.Model, name: str, tensor: TensorData, chosen: Candidate,
          specs: dict[str, StoredTensor] | None = None) -> StoredTensor:
    """Replace initializer ``name`` by ``chosen``'s payload + decode subgraph (in place).

    The metadata is updated at once, or in ``specs`` (then the caller calls
    :func:`write_storage`, which avoids re-serialising it per tensor).
    """
    assert chosen.encoded is not None and chosen.decoder is not None
    graph = model.graph
    old = graph.initializers[name]
    codec = get_codec(chosen.format)
    builder = DecodeBuilder(graph, name, tensor.shape, tensor.fill)
    stored = {role: builder.stored(role, array) for role, array in chosen.encoded.arrays.items()}
    output = codec.build(builder, chosen.encoded, stored, chosen.decoder)
    final = builder.commit(output, tensor.shape, like=old)
    old.replace_all_uses_with(final, replace_graph_outputs=True)
    graph.initializers.pop(name)
    old.name = None
    final.name = name
    spec = StoredTensor(
        name=name,
        format=chosen.format,
        decoder=chosen.decoder,
        shape=list(tensor.shape),
        dtype=tensor.dtype.name,
        fill_bits=tensor.fill.reshape(1).tobytes().hex(),
        inputs={role: value.name or "" for role, value in stored.items() if value.uses()},
        params=_jsonable(chosen.encoded.params),
    )
    if specs is None:
        specs = read_storage(model)
        specs[name] = spec
        write_storage(model, specs)
    else:
        specs[name] = spec  # the caller writes the metadata once
    return spec


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, (tuple, np.ndarray)):
            value = list(np.asarray(value).tolist())
        out[key] = value
    return out


# ------------------------------------------------------------------ decoding


def _initializer(graph: ir.Graph, name: str) -> np.ndarray:
    value = graph.initializers.get(name)
    if value is None or value.const_value is None:
        raise ModelLoadError(f"sparse storage refers to a missing initializer {name!r}")
    return value.const_value.numpy()


def decode_arrays(spec: StoredTensor, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The dense tensor ``spec`` describes, decoded with numpy from its payload ``arrays`` (by role)."""
    if int(spec.params.get("count", -1)) == 0:  # all fill: no payload is stored
        array = np.full(tuple(spec.shape), spec.fill(), dtype=spec.numpy_dtype)
    else:
        array = get_codec(spec.format).decode(arrays, spec.params, tuple(spec.shape), spec.fill())
    if array.dtype != spec.numpy_dtype:
        raise ModelLoadError(f"stored tensor {spec.name!r} decodes to {array.dtype}, metadata says {spec.dtype}")
    return array


def decode_stored(model: ir.Model, spec: StoredTensor) -> np.ndarray:
    """The dense tensor, decoded with numpy from the payload initializers."""
    return decode_arrays(spec, {role: _initializer(model.graph, name) for role, name in spec.inputs.items()})


def _decode_groups(graph: ir.Graph) -> dict[str, list[ir.Node]]:
    """``{tensor name: decode nodes}`` found by their markers."""
    by_id: dict[str, list[ir.Node]] = {}
    for node in graph:
        if is_decode_node(node):
            key = decode_group(node)
            if key:
                by_id.setdefault(key, []).append(node)
    groups: dict[str, list[ir.Node]] = {}
    for nodes in by_id.values():
        target = next((decode_target(n) for n in nodes if decode_target(n)), None)
        if target is None:  # metadata dropped: the output not named like a decode node is the tensor
            inner = {id(n) for n in nodes}
            finals = [
                v.name for n in nodes for v in n.outputs
                if v.name and not v.name.startswith(NODE_PREFIX)
                and not all(id(user) in inner for user, _ in v.uses())
            ]
            if len(finals) != 1:
                logger.warning("cannot tell which tensor decode nodes %s produce", nodes[0].name)
                continue
            target = finals[0]
        groups[target] = nodes
    return groups


def _evaluate(graph: ir.Graph, nodes: Sequence[ir.Node], target: str) -> np.ndarray:
    """Run a decode subgraph with onnxruntime (used when the metadata is missing)."""
    import onnx

    from .._ort import make_session, session_options
    from ..io import max_runtime_ir_version

    output = next((v for n in nodes for v in n.outputs if v.name == target), None)
    if output is None:
        raise ModelLoadError(f"decode nodes for {target!r} do not produce it")
    nodes = _ancestors(output)  # may include nodes an optimizer merged across subgraphs
    inputs = {v.name or "": v for n in nodes for v in n.inputs if v is not None and v.producer() is None}
    protos = []
    for name, value in inputs.items():
        if value.const_value is None:
            raise ModelLoadError(f"decode subgraph of {target!r} reads {name!r}, which is not an initializer")
        protos.append(ir.serde.serialize_tensor(ir.Tensor(value.const_value.numpy())))  # in memory, never external
        protos[-1].name = name
    node_protos = [ir.serde.serialize_node(n) for n in nodes]
    opset = graph.opset_imports.get("", 18) or 18
    dtype = int(output.dtype) if output.dtype is not None else _inferred_dtype(node_protos, protos, target, opset)
    if not dtype:
        raise ModelLoadError(f"decode output {target!r} has no type; cannot evaluate it without metadata")
    out_info = onnx.helper.make_tensor_value_info(target, dtype, None)
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(node_protos, "decode", [], [out_info], initializer=protos),
        opset_imports=[onnx.helper.make_opsetid("", max(opset, 16))],
    )
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    session = make_session(proto, session_options())
    return session.run(None, {})[0]


def _ancestors(output: ir.Value) -> list[ir.Node]:
    """The nodes ``output`` depends on, in topological order."""
    order: list[ir.Node] = []
    seen: set[int] = set()

    def visit(node: ir.Node) -> None:  # decode graphs are a few nodes deep: recursion is fine
        if id(node) in seen:
            return
        seen.add(id(node))
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None:
                visit(producer)
        order.append(node)

    producer = output.producer()
    if producer is not None:
        visit(producer)
    return order


def _inferred_dtype(nodes: list, initializers: list, target: str, opset: int) -> int:
    """The element type onnx shape inference gives ``target`` (a saved model need not carry ``value_info``)."""
    import onnx

    probe = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "decode", [], [onnx.helper.make_empty_tensor_value_info(target)],
                               initializer=initializers),
        opset_imports=[onnx.helper.make_opsetid("", max(opset, 16))],
    )
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception:  # noqa: BLE001 - no type is reported by the caller
        return 0
    for info in (*inferred.graph.output, *inferred.graph.value_info):
        if info.name == target:
            return int(info.type.tensor_type.elem_type)
    return 0


def expand_stored(model: ir.Model, name: str, nodes: Sequence[ir.Node], array: np.ndarray) -> None:
    """Replace the decode subgraph of ``name`` by a dense initializer holding ``array``."""
    graph = model.graph
    output = next((v for n in nodes for v in n.outputs if v.name == name), None)
    if output is None:
        raise ModelLoadError(f"decode nodes for {name!r} do not produce it")
    output.name = None
    value = ir.Value(name=name, const_value=ir.Tensor(contiguous(array), name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    output.replace_all_uses_with(value, replace_graph_outputs=True)
    feeds = {id(v): v for n in nodes for v in n.inputs if v is not None and v.producer() is None}
    _remove_dead(graph, nodes)
    for fed in feeds.values():
        if fed.name is not None and fed.name in graph.initializers and not fed.uses() \
                and not _is_graph_output(graph, fed):
            graph.initializers.pop(fed.name)


def _remove_dead(graph: ir.Graph, nodes: Sequence[ir.Node]) -> None:
    """Remove those of ``nodes`` whose outputs nobody reads (consumers first).

    A node another decode subgraph still reads stays: common-subexpression
    elimination (e.g. in ``onnxscript.optimizer.optimize``) merges identical
    guard nodes across tensors, so one node may feed several subgraphs.
    """
    pending = list(nodes)
    while True:
        dead = [n for n in pending if not any(v.uses() or _is_graph_output(graph, v) for v in n.outputs)]
        if not dead:
            return
        graph.remove(dead, safe=True)
        pending = [n for n in pending if n not in dead]


def _is_graph_output(graph: ir.Graph, value: ir.Value) -> bool:
    return any(v is value for v in graph.outputs)


def expand_all(model: ir.Model, names: Iterable[str] | None = None) -> dict[str, str]:
    """Densify stored tensors (all, or ``names``); returns ``{name: format}`` of those expanded."""
    graph = model.graph
    specs = read_storage(model)
    groups = _decode_groups(graph)
    wanted = set(groups) | set(specs) if names is None else set(names)
    done: dict[str, str] = {}
    # Expand in the order the tensors were stored (their payloads' order), not by name: the dense
    # initializers then come back in that order, so sparsifying the result again writes the same file.
    position = {name: i for i, name in enumerate(graph.initializers)}

    def stored_order(name: str) -> tuple[int, str]:
        spec = specs.get(name)
        payload = spec.inputs.values() if spec is not None else (
            v.name for n in groups.get(name, ()) for v in n.inputs if v is not None)  # may include shared constants
        return min((position[p] for p in payload if p in position), default=len(position)), name

    for name in sorted(wanted, key=stored_order):
        spec = specs.get(name)
        nodes = groups.get(name, [])
        if not nodes:
            if spec is not None:
                logger.warning("metadata lists %s but its decode nodes are gone; dropping the entry", name)
                specs.pop(name, None)
            continue
        missing = [] if spec is None else [p for p in spec.inputs.values() if p not in graph.initializers]
        if missing:
            logger.warning("metadata of %s refers to missing initializers %s (a tool rewrote its decode graph); "
                           "dropping the entry and evaluating the graph instead", name, ", ".join(missing))
            spec = None
        if spec is not None:
            array = decode_stored(model, spec)
        else:
            array = _evaluate(graph, nodes, name)
        expand_stored(model, name, nodes, array)
        specs.pop(name, None)
        done[name] = spec.format if spec else "unknown"
    write_storage(model, specs)
    _remove_dead(graph, [node for node in graph if is_decode_node(node)])
    _drop_orphan_consts(graph)
    return done


def _drop_orphan_consts(graph: ir.Graph) -> None:
    for name in [n for n in graph.initializers if n.startswith(CONST_PREFIX)]:
        value = graph.initializers[name]
        if not value.uses() and not _is_graph_output(graph, value):
            graph.initializers.pop(name)
