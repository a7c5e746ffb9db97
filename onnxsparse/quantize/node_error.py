"""Which quantized node costs what: output error per node on the check data.

Both models are run on the same inputs with the float tensors around every
quantized node exposed as extra outputs (quantizers keep the float names at
the boundaries of what they rewrite: the rescaled result of a
``MatMulInteger``, the float input of a ``DynamicQuantizeLinear``, the inputs
and outputs of a QDQ node).  A node's *added* error is the relative L2 error
of its output minus the largest error already on its inputs: what this node
contributed, so a user (or ``max_node_error``) can keep the costly ones float.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

__all__ = ["NodeError", "node_errors", "tensor_pairs"]

logger = logging.getLogger("onnxsparse.quantize")


@dataclass(frozen=True)
class NodeError:
    """Error measured around one quantized node."""

    node: str
    op_type: str
    input_error: float
    output_error: float

    @property
    def added_error(self) -> float:
        return max(0.0, self.output_error - self.input_error)

    def as_dict(self) -> dict:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "input_rel_error": self.input_error,
            "output_rel_error": self.output_error,
            "added_rel_error": self.added_error,
        }


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors the graph computes or takes (not initializers)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a model onnx cannot infer still has its declared types
        inferred = model
    graph = inferred.graph
    inits = {i.name for i in graph.initializer}
    infos = [*graph.input, *graph.value_info, *graph.output]
    return {v.name for v in infos if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and v.name not in inits}


#: Ops a quantizer puts where a float result used to be produced (dynamic rescale chains, QDQ boundaries).
_RESCALE = {"Mul", "Add", "Cast", "DequantizeLinear"}


def tensor_pairs(fp32: onnx.ModelProto, quantized: onnx.ModelProto) -> dict[str, str]:
    """fp32 tensor -> the quantized model's tensor holding the same value, by structure.

    A node both graphs keep (QDQ keeps nodes) pairs its inputs position by
    position; otherwise a tensor of the same name pairs when the quantized
    producer is the same op or a rescale (a QDQ rewrite can give a Conv's
    pre-activation output the name of the Relu it removed, so the name alone
    is not trusted).
    """
    floats = _float_tensors(fp32)
    q_nodes = {(n.name, n.op_type): n for n in quantized.graph.node if n.name}
    pairs: dict[str, str] = {}
    for node in fp32.graph.node:
        twin = q_nodes.get((node.name, node.op_type))
        if twin is None or len(twin.input) != len(node.input):
            continue
        for mine, theirs in zip(node.input, twin.input):
            if mine in floats and theirs:
                pairs.setdefault(mine, theirs)
    f_prod = {o: n.op_type for n in fp32.graph.node for o in n.output}
    q_prod = {o: n.op_type for n in quantized.graph.node for o in n.output}
    graph_inputs = {i.name for i in fp32.graph.input}
    for name in floats - pairs.keys():
        if name in graph_inputs and name in {i.name for i in quantized.graph.input}:
            pairs[name] = name
        elif name in f_prod and name in q_prod and (q_prod[name] == f_prod[name] or q_prod[name] in _RESCALE):
            pairs[name] = name
    return pairs


def _effective(fp32: onnx.ModelProto, quantized_names: set[str], tensor: str, pairs: dict[str, str]) -> str | None:
    """``tensor``, or the first paired tensor after the ops the quantizer folded away (Relu after Conv in QDQ)."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in fp32.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for _ in range(3):
        if tensor in pairs:
            return tensor
        after = users.get(tensor, [])
        if len(after) != 1 or after[0].name in quantized_names or len(after[0].output) != 1:
            return None
        tensor = after[0].output[0]
    return tensor if tensor in pairs else None


class Runner(Protocol):
    """The part of an onnxruntime ``InferenceSession`` the probe uses."""

    def run(self, output_names: list[str], input_feed: dict[str, np.ndarray], /) -> Sequence[np.ndarray]: ...


def _with_outputs(path: Path, tensors: set[str], target: Path) -> Path:
    """A copy of the model at ``path`` (beside it, so external data still resolves) that also outputs ``tensors``."""
    model = onnx.load(str(path), load_external_data=False)
    present = {o.name for o in model.graph.output}
    for name in sorted(tensors - present):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(target))
    return target


def node_errors(
    fp32_path: Path,
    quantized_path: Path,
    nodes: list[onnx.NodeProto],
    batches: Callable[[], Iterable[dict[str, np.ndarray]]],
    session: Callable[[Path], Runner],
    *,
    one_session_at_a_time: bool = False,
) -> list[NodeError]:
    """Per quantized node, the relative L2 error of its inputs and outputs (worst added error first).

    ``one_session_at_a_time``: run every batch through the fp32 model, free its session, then open the
    quantized one (half the sessions' memory, for models past the external-data threshold).
    """
    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    quantized = onnx.load(str(quantized_path), load_external_data=False)
    pairs = tensor_pairs(fp32, quantized)
    q_names = {n.name for n in quantized.graph.node}
    wanted: dict[str, tuple[list[str], list[str]]] = {}
    for node in nodes:
        ins = [t for t in node.input if t in pairs]
        outs = [e for t in node.output if (e := _effective(fp32, q_names, t, pairs)) is not None]
        if outs:
            wanted[node.name] = (ins, outs)
    tensors = {t for ins, outs in wanted.values() for t in (*ins, *outs)}
    if not tensors:
        return []
    mine = sorted(tensors)
    theirs = [pairs[t] for t in mine]
    fp32_probe = _with_outputs(fp32_path, set(mine), fp32_path.with_name("probe_fp32.onnx"))
    q_probe = _with_outputs(quantized_path, set(theirs), quantized_path.with_name("probe_quantized.onnx"))
    diff2 = dict.fromkeys(mine, 0.0)
    ref2 = dict.fromkeys(mine, 0.0)

    def add(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
        for name in mine:
            r, g = ref[name].astype(np.float64), got[name].astype(np.float64)
            if r.shape != g.shape:
                continue
            diff2[name] += float(np.sum((g - r) ** 2))
            ref2[name] += float(np.sum(r ** 2))

    if one_session_at_a_time:
        # Issue 16: two sessions of a model past the external-data threshold side by side are twice its
        # size; the fp32 outputs (a few samples of the probed tensors) are kept instead.
        ref_session = session(fp32_probe)
        refs = [dict(zip(mine, ref_session.run(mine, feeds))) for feeds in batches()]
        del ref_session
        gc.collect()
        got_session = session(q_probe)
        for ref, feeds in zip(refs, batches()):
            add(ref, dict(zip(mine, got_session.run(theirs, feeds))))
    else:
        ref_session, got_session = session(fp32_probe), session(q_probe)
        for feeds in batches():
            add(dict(zip(mine, ref_session.run(mine, feeds))), dict(zip(mine, got_session.run(theirs, feeds))))
    error = {n: (diff2[n] / ref2[n]) ** 0.5 if ref2[n] > 0 else diff2[n] ** 0.5 for n in mine}
    by_name = {n.name: n for n in nodes}
    rows = [
        NodeError(name, by_name[name].op_type, max((error[t] for t in ins), default=0.0), max(error[t] for t in outs))
        for name, (ins, outs) in wanted.items()
    ]
    return sorted(rows, key=lambda r: -r.added_error)
