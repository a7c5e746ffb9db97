"""Feed-forward blocks: ``Linear -> activation -> Linear`` and gated ``act(x Wg) * (x Wu) -> Linear``.

Anchored at each constant-weight MatMul/Gemm (the *down* projection): walking
back through element-wise ops only (bias Add, Gelu / Relu / SiLU = Sigmoid*x /
the ``Div -> Erf -> Add -> Mul -> Mul`` GELU decomposition / tanh-GELU, the
gating Mul, and the ``[B, S, E] <-> [B*S, E]`` Reshapes tf2onnx writes around a
Keras ``Dense``, whose targets may be ``Cast(Concat(int32 dims))``) must end at
constant-weight projections on every path.  Those are the seeds; their output
width is the intermediate dimension, one unit per neuron.  The propagation
engine then proves every consumer is element-wise (and every crossed Reshape
keeps the axis whole) and that the axis ends in the down projection(s).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._graph import Skip, is_const, onnx_domain
from ._track import BINARY, UNARY, Region, is_projection, projection_weight
from .blocks import Block, SkippedBlock, block_name
from .registry import register_matcher

__all__ = ["match_ffn"]

_ELEMENTWISE = set(UNARY) | set(BINARY) | {"Dropout"}
_MS_ELEMENTWISE = {"Gelu", "FastGelu", "QuickGelu", "BiasGelu"}
#: Element-wise ops that make a block an FFN (a bias Add alone does not).
_NONLINEAR = set(UNARY) - {"Identity", "Cast", "CastLike", "Neg"} | {"Mul", "Div", "Pow", "Where", "PRelu", "Clip"}


class _NotFFN(Exception):
    pass


def _elementwise(node: ir.Node) -> bool:
    if onnx_domain(node):
        return node.op_type in _ELEMENTWISE
    return node.domain == "com.microsoft" and node.op_type in _MS_ELEMENTWISE


def _reshape(node: ir.Node) -> bool:
    return node.op_type == "Reshape" and onnx_domain(node) and len(node.inputs) == 2


def _seeds(down: ir.Node) -> tuple[list[ir.Node], bool]:
    """Projections feeding ``down`` through element-wise ops only, and whether any is non-linear."""
    x = down.inputs[0]
    seeds: list[ir.Node] = []
    nonlinear = False
    stack = [(x, 0)]
    seen: set[ir.Value] = set()
    while stack:
        v, depth = stack.pop()
        if v is None or v in seen:
            continue
        seen.add(v)
        if depth > 16:
            raise _NotFFN()
        node = v.producer()
        if node is None:
            raise _NotFFN()
        if is_projection(node):
            if node not in seeds:
                seeds.append(node)
            continue
        if _reshape(node):
            # Keras Dense via tf2onnx: [B, S, E] -> [B*S, E] around each MatMul; the
            # propagation rule for Reshape proves the intermediate axis stays whole.
            stack.append((node.inputs[0], depth + 1))
            continue
        if not _elementwise(node):
            raise _NotFFN()
        if node.op_type in _NONLINEAR or node.domain == "com.microsoft":
            nonlinear = True
        for inp in node.inputs:
            if inp is not None and not is_const(inp):
                stack.append((inp, depth + 1))
    return seeds, nonlinear


def _match(graph: ir.Graph, down: ir.Node, claimed: set[ir.Node]) -> Block | None:
    seeds, nonlinear = _seeds(down)
    if not seeds or not nonlinear:
        raise _NotFFN()
    if any(s in claimed for s in seeds):
        return None  # the same FFN, reached from another of its down projections
    widths = set()
    for s in seeds:
        w, axis = projection_weight(s)
        widths.add(int(w.const_value.shape[axis]))  # type: ignore[union-attr]
    if len(widths) != 1:
        raise Skip(f"gate/up projections have different widths {sorted(widths)}")
    width = widths.pop()
    region = Region(graph)
    for s in seeds:
        region.seed_projection(s, "n", np.arange(width))
    region.propagate()
    claimed.update(seeds)
    name = block_name([*seeds, *region.sinks], down.name or "ffn", region)
    return Block(
        name=name, kind="ffn", form="ffn", region=region, anchor=down, n_units=width,
        details={"projections": [s.name for s in seeds], "output_projections": [s.name for s in region.sinks],
                 "gated": len(seeds) > 1},
    )


@register_matcher("ffn")
def match_ffn(graph: ir.Graph) -> list[Block | SkippedBlock]:
    from .packed_qkv import fold_own_dim_targets, unpack_packed_qkv

    unpack_packed_qkv(graph)  # packed gate/up (Phi-3 gate_up_proj) -> separate projections (exact)
    fold_own_dim_targets(graph)  # TorchScript x.view(-1, x.size(-1)) with a static last dim -> constant
    found: list[Block | SkippedBlock] = []
    claimed: set[ir.Node] = set()
    for node in list(graph):
        if not is_projection(node):
            continue
        try:
            block = _match(graph, node, claimed)
        except _NotFFN:
            continue
        except Skip as exc:
            found.append(SkippedBlock(node.name or node.op_type, "ffn", "ffn", str(exc)))
            continue
        if block is not None:
            found.append(block)
    return found
